"""The encode stage's own settings (`encode:` in YAML, --encoder, --weights, --arch, --batch-size, ...), checked
before any work. `names=False` checks the values alone (no registry lookups)."""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError


def check_settings(encode, names: bool = True) -> None:
    """Sizes and counts; with names, the encoder spec and what goes with it (a checkpoint's file and --arch)."""
    if encode.batch_size < 1:
        raise UserError(f"--batch-size {encode.batch_size}: must be at least 1")
    workers = encode.num_workers
    if workers != "auto" and (isinstance(workers, bool) or not isinstance(workers, int)):
        raise UserError(f"--num-workers {workers!r}: a whole number of workers (0: in the main process) or auto")
    if workers != "auto" and workers < 0:
        raise UserError(f"--num-workers {workers}: must be 0 or more")
    if encode.shard_size < 1:
        raise UserError(f"shard_size {encode.shard_size}: must be at least 1")
    if not names:
        return
    from .registry import check_encoder_spec

    check_encoder_spec(encode.spec)
    if encode.spec.startswith("checkpoint:"):
        if not encode.arch:
            raise UserError("checkpoint:PATH needs --arch, e.g. --arch torchvision:resnet50 (or timm:NAME)")
        if not Path(encode.spec.partition(":")[2]).expanduser().is_file():
            raise UserError(f"{encode.spec}: no such file")
    elif encode.arch is not None:
        raise UserError("--arch applies to --encoder checkpoint:PATH only")
    if encode.decode == "device" and encode.spec == "pixels":
        raise UserError("--decode device does not apply to the pixels encoder (32x32 resize); drop it")


def check_against_data(encode, ds, spec: str) -> None:
    """--decode device needs a source of image files (it decodes their bytes on the device)."""
    from ..data import ImageDataset

    if encode.decode != "device":
        return
    if not isinstance(ds, ImageDataset):
        raise UserError("--decode device: embeddings:PATH has no images to decode; drop it")
    if type(ds).read_bytes is ImageDataset.read_bytes:
        raise UserError(f"--decode device needs image files (imagefolder:, folder:, csv:, parquet:, webdataset:); "
                        f"{spec} holds decoded images")
