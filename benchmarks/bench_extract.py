"""Encoder throughput (images/s) per encoder x precision x batch size, with the study's plain loop beside it.

Three sources of images:
  tensors      decoded, preprocessed tensors already in memory (on the GPU when there is one): the model alone.
               Each row is set against "plain": the study's loop (fp32, batch 128, no channels_last) on the same inputs.
  files        JPEG files through gpuclust's own extraction (DataLoader workers decode with PIL), store included.
  device-jpeg  the same files through the pipeline's --decode device: workers read bytes, JPEGs are decoded and
               preprocessed on the encoder's device (nvJPEG on a GPU, torchvision's decoder on a CPU).

The JPEGs are crops of scikit-learn's two sample photographs (no download). Weights do not change speed, so
architectures the machine has no weights for (resnet50, vitb16) run randomly initialised.

    python benchmarks/bench_extract.py                                           # CPU defaults, a few minutes
    python benchmarks/bench_extract.py --encoders resnet50 vitb16 --precisions fp32 bf16 fp16 \
        --batch-sizes 128 256 512 --n 20000 --sources tensors files device-jpeg --workers 16       # on a GPU
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpuclust.backend import gpu_available, resolve_backend  # noqa: E402
from gpuclust.encode.models import ENCODERS, Encoder, build_encoder, torchvision_transform  # noqa: E402
from gpuclust.report import versions  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# The project's throughput goals on an H100 (images/s), set against each matching row: the study's two
# architectures from decoded tensors in bf16 (ViT-B/16 costs 17.6 GFLOP an image, so ~790 TFLOP/s of bf16 bounds it
# near 45,000), and from JPEG files decoded on the device. (encoder, source, precision) -> images/s; "*" any.
H100_TARGETS = {("resnet50", "tensors", "bf16"): 20_000, ("vitb16", "tensors", "bf16"): 15_000,
                ("resnet50", "device-jpeg", "*"): 5_000, ("vitb16", "device-jpeg", "*"): 5_000}


def target(row: dict) -> float | None:
    """The goal a row is measured against: on an H100 only (elsewhere the table's `vs plain` is the yardstick)."""
    if "H100" not in str(row.get("device", "")):
        return None
    for (enc, source, precision), goal in H100_TARGETS.items():
        if enc == row["encoder"] and source == row["source"] and precision in ("*", row["precision"]):
            return goal
    return None


def architecture(name: str) -> Encoder:
    """A packaged encoder by name, or a randomly initialised torchvision architecture (same cost as trained)."""
    if name in ENCODERS and name not in ("resnet50", "vitb16"):  # (the zoo's resnet50 and vitb16 download weights)
        return build_encoder(name)
    import torch
    import torchvision.models as tvm

    if name == "resnet50":
        model, w = tvm.resnet50(weights=None), tvm.ResNet50_Weights.IMAGENET1K_V2
        model.fc = torch.nn.Identity()
        dim = 2048
    elif name == "vitb16":
        model, w = tvm.vit_b_16(weights=None), tvm.ViT_B_16_Weights.IMAGENET1K_V1
        model.heads = torch.nn.Identity()
        dim = 768
    else:
        raise SystemExit(f"unknown encoder {name}")
    t, cfg = torchvision_transform(w)
    return Encoder(name, model.eval().requires_grad_(False), t, dim, {"encoder": name, "preprocess": cfg})


def make_jpegs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """n JPEG files (quality 90), random crops of 320-640 px from sklearn's sample photographs."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        img = photos[i % len(photos)]
        h, w = rng.integers(240, img.shape[0] + 1), rng.integers(320, img.shape[1] + 1)
        y, x = rng.integers(0, img.shape[0] - h + 1), rng.integers(0, img.shape[1] - w + 1)
        p = folder / f"{i:06d}.jpg"
        Image.fromarray(img[y:y + h, x:x + w]).save(p, quality=90)
        paths.append(p)
    return paths


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ort_step(enc: Encoder, example, threads: int | None, opt: str, parallel: str = "rows"):
    """The encoder exported to ONNX (export not timed) and run by ONNX Runtime with these settings (encode.runtime's
    Runner: the batch split among threads, "rows", as the pipeline runs it, or one run with intra-op threads)."""
    import torch

    from gpuclust.encode import runtime as rt

    folder = Path(tempfile.mkdtemp())
    rt.export(enc.model.eval(), example[:1], folder / "model.onnx")
    runner = rt.Runner(folder / "model.onnx", threads, opt, parallel)

    def step(x):
        return torch.from_numpy(runner(x.numpy()))
    return step


def time_tensors(enc: Encoder, device, precision: str, batch: int, n: int, plain: bool,
                 compile_mode: str | None = None, ort: tuple | None = None) -> float:
    """Images/s of the forward pass alone over n images held in memory (rotating among 4 random input buffers);
    with `compile_mode`, the model goes through torch.compile in that mode first (compile time not counted: the
    warm-up steps trigger it); with `ort` (threads, optimisation level, parallel), ONNX Runtime runs the exported
    model."""
    import torch

    from gpuclust.encode.extract import _Forward

    size = enc.key.get("preprocess", {}).get("input_size", [3, 224, 224])
    gen = torch.Generator(device="cpu").manual_seed(0)
    inputs = [torch.randn(batch, *size, generator=gen).to(device) for _ in range(4)]
    model = enc.model.to(device)
    if ort:
        step = ort_step(enc, inputs[0], *ort)
    elif plain:  # the study's loop: fp32, no_grad, default memory format
        model = model.to(memory_format=torch.contiguous_format)

        def step(x):
            with torch.no_grad():
                return model(x).float()
    else:
        if any(p.ndim == 4 for p in model.parameters()):
            model = model.to(memory_format=torch.channels_last)
            inputs = [x.contiguous(memory_format=torch.channels_last) for x in inputs]
        if compile_mode:
            model = torch.compile(model, mode=None if compile_mode == "default" else compile_mode, dynamic=False)
        fwd = _Forward(model, batch, precision, device.type)

        def step(x):
            with torch.inference_mode():
                return fwd(x)
    t_warm = time.perf_counter()
    for i in range(3):
        step(inputs[i % 4])
    sync(device)
    if compile_mode:
        print(f"  torch.compile({compile_mode}) and warm-up: {time.perf_counter() - t_warm:.1f}s", flush=True)
    steps = max(1, n // batch)
    t = time.perf_counter()
    for i in range(steps):
        out = step(inputs[i % 4])
    sync(device)
    dt = time.perf_counter() - t
    assert torch.isfinite(out).all(), "non-finite embeddings"
    return steps * batch / dt


def time_files(enc: Encoder, folder: Path, device_name: str, precision: str, batch: int, workers: int,
               decode: str = "cpu", runtime: str = "torch") -> float:
    """Images/s of gpuclust's extraction (decode, transform, forward, store write) over the JPEG folder, the
    DataLoader workers' start included; with decode="device" the pipeline's own --decode device path (nvJPEG on a
    GPU)."""
    from gpuclust.data import load_dataset
    from gpuclust.encode.extract import extract
    from gpuclust.store import EmbeddingStore

    be = resolve_backend(device_name)
    ds = load_dataset(f"folder:{folder}")
    # Untimed warm-up on the first batches: the model's move to the device, cuDNN's algorithm search and the first
    # kernels' compilation are paid once per run, not per image.
    warm = load_dataset(f"folder:{folder}", limit=min(len(ds), 2 * batch))
    # (with ONNX Runtime the warm-up also exports the model and checks it against torch, once, as a first run does)
    ort_cache = tempfile.TemporaryDirectory()
    with tempfile.TemporaryDirectory() as cache:
        extract(warm, enc, be, EmbeddingStore(cache, {"bench": "warm-up"}, len(warm), 4096), batch, 0,
                progress=False, precision=precision, decode=decode, runtime=runtime, cache_dir=ort_cache.name)
    with tempfile.TemporaryDirectory() as cache:
        store = EmbeddingStore(cache, {"bench": enc.name, "precision": precision}, len(ds), 4096)
        be.synchronize()
        t = time.perf_counter()
        emb = extract(ds, enc, be, store, batch, workers, progress=False, precision=precision, decode=decode,
                      runtime=runtime, cache_dir=ort_cache.name)
        be.synchronize()
        dt = time.perf_counter() - t
    ort_cache.cleanup()
    assert emb.X.shape[0] == len(ds) and not emb.skipped
    return len(ds) / dt


def save(out: Path, rows: list[dict]) -> None:
    plain = {r["encoder"]: r["img_per_s"] for r in rows if r["path"] == "plain"}
    for r in rows:
        if r["source"] == "tensors" and r["encoder"] in plain:
            r["vs_plain"] = r["img_per_s"] / plain[r["encoder"]]
        goal = target(r) if r["path"] != "plain" else None
        if goal:
            r["target"], r["vs_target"] = goal, r["img_per_s"] / goal
    tmp = out.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["encoder", "source", "path", "precision", "batch", "workers", "img_per_s",
                                          "vs_plain", "target", "vs_target", "device"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    tmp.replace(out)


def _ort_path(ort: tuple, source: str) -> str:
    """`onnx` for the pipeline's own settings (a thread per core, every optimisation, rows split among threads),
    else what differs."""
    threads, opt, parallel = ort
    if source != "tensors" or (threads == 0 and opt == "all" and parallel == "rows"):
        return "onnx"
    return ("onnx" + (f"-t{threads}" if threads else "") + ("" if opt == "all" else f"-{opt}")
            + ("" if parallel == "rows" else f"-{parallel}"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--encoders", nargs="+", default=["efficientnet_lite0", "mobilenetv2"])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[128])
    p.add_argument("--file-precisions", nargs="+", default=None, choices=["fp32", "bf16", "fp16"],
                   help="precisions for the file sources (default: --precisions)")
    p.add_argument("--file-batch-sizes", type=int, nargs="+", default=None,
                   help="batch sizes for the file sources (default: --batch-sizes)")
    p.add_argument("--n", type=int, default=512, help="images per measurement (tensors source)")
    p.add_argument("--files", type=int, default=512, help="JPEG files for the files/device-jpeg sources")
    p.add_argument("--sources", nargs="+", default=["tensors", "files"],
                   choices=["tensors", "files", "device-jpeg"])
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers for the file sources")
    p.add_argument("--compile-modes", nargs="+", default=[],
                   choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
                   help="tensors source: also time the model after torch.compile in these modes (rows with path "
                        "compile-MODE; reduce-overhead and max-autotune add CUDA graphs)")
    p.add_argument("--runtimes", nargs="+", default=["torch", "onnx"], choices=["torch", "onnx"],
                   help="CPU only: also time ONNX Runtime (rows with path onnx) beside torch")
    p.add_argument("--ort-threads", type=int, nargs="+", default=[0],
                   help="ONNX Runtime intra-op threads to time (tensors source; 0: one per core, the pipeline's)")
    p.add_argument("--ort-opt", nargs="+", default=["all"], choices=["disable", "basic", "extended", "all"],
                   help="ONNX Runtime graph optimisation levels to time (tensors source; the pipeline uses all)")
    p.add_argument("--ort-parallel", nargs="+", default=["rows"], choices=["rows", "intra"],
                   help="how ONNX Runtime spreads a batch over its threads (tensors source): rows, the pipeline's "
                        "(the batch split among threads, each running a one-thread session), or intra (one run "
                        "with intra-op threads)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    p.add_argument("--out", default=None, help="CSV path (default: results/extract-<device>-<versions>.csv)")
    args = p.parse_args(argv)

    import torch

    on_gpu = args.device == "gpu" or (args.device == "auto" and gpu_available()[0])
    device = torch.device("cuda" if on_gpu else "cpu")
    if on_gpu:
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(0).replace(" ", "-")
    else:
        name = f"cpu{os.cpu_count()}-{platform.machine()}"
        torch.set_num_threads(os.cpu_count() or 1)
    v = versions()
    tag = f"{name}-torch{torch.__version__.split('+')[0]}-timm{v.get('timm', 'na')}"
    out = Path(args.out) if args.out else RESULTS / f"extract-{tag}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    from gpuclust.encode.runtime import has_onnxruntime

    use_ort = not on_gpu and "onnx" in args.runtimes and has_onnxruntime()
    tmp = tempfile.TemporaryDirectory()
    if set(args.sources) & {"files", "device-jpeg"}:
        make_jpegs(Path(tmp.name), args.files)
    for enc_name in args.encoders:
        for source in args.sources:
            combos = [("fp32", 128, True, None)] if source == "tensors" else []
            precisions = args.precisions if source == "tensors" else (args.file_precisions or args.precisions)
            batches = args.batch_sizes if source == "tensors" else (args.file_batch_sizes or args.batch_sizes)
            modes = [None] + (args.compile_modes if source == "tensors" else [])
            combos += [(pr, b, False, m) for m in modes for pr in precisions for b in batches]
            if use_ort and source in ("tensors", "files"):
                orts = ([(t, o, par) for t in args.ort_threads for o in args.ort_opt for par in args.ort_parallel]
                        if source == "tensors" else [(0, "all", "rows")])
                combos += [("fp32", b, False, ("onnx", *o)) for b in batches for o in orts]
            for precision, batch, plain, mode in combos:
                enc = architecture(enc_name)  # fresh module each time: no state carried between settings
                ort = mode[1:] if isinstance(mode, tuple) else None
                if source == "tensors":
                    ips = time_tensors(enc, device, precision, batch, args.n, plain, None if ort else mode,
                                       (ort[0] or None, *ort[1:]) if ort else None)
                elif source == "files":
                    ips = time_files(enc, Path(tmp.name), "gpu" if on_gpu else "cpu", precision, batch, args.workers,
                                     runtime="onnx" if ort else "torch")
                else:
                    ips = time_files(enc, Path(tmp.name), "gpu" if on_gpu else "cpu", precision, batch, args.workers,
                                     decode="device")
                path = ("plain" if plain else _ort_path(ort, source) if ort else
                        f"compile-{mode}" if mode else "gpuclust")
                row = {"encoder": enc_name, "source": source, "path": path,
                       "precision": precision, "batch": batch, "img_per_s": ips, "device": name,
                       "workers": args.workers if source != "tensors" else 0}
                rows.append(row)
                save(out, rows)  # after every row: a run stopped at its time limit keeps what it measured
                print(f"{enc_name:>18} {source:>11} {row['path']:>14} {precision:>5} b{batch:<4} {ips:10.1f} img/s",
                      flush=True)
                del enc
                if on_gpu:
                    torch.cuda.empty_cache()
    tmp.cleanup()
    save(out, rows)
    print(f"\n{'encoder':>18} {'source':>11} {'path':>14} {'prec':>5} {'batch':>5} {'img/s':>10} {'vs plain':>8} "
          f"{'H100 goal':>15}")
    for r in rows:
        vs = f"{r['vs_plain']:.2f}x" if "vs_plain" in r else ""
        goal = f"{r['target']:,} ({r['vs_target']:.2f}x)" if "target" in r else ""
        print(f"{r['encoder']:>18} {r['source']:>11} {r['path']:>14} {r['precision']:>5} {r['batch']:>5} "
              f"{r['img_per_s']:>10.1f} {vs:>8} {goal:>15}")
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
