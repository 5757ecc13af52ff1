"""Images -> embeddings on the backend's device, shard by shard through the embedding store."""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

import numpy as np

from ..backend import Backend
from ..data import ImageDataset, SkipImage
from ..store import EmbeddingStore, Shard
from .encoder import Encoder
from .transforms import split_transform

try:  # (PIL comes with torchvision, which every encoder needs)
    from PIL.Image import Image as PILImage
except ImportError:  # pragma: no cover
    PILImage = ()

log = logging.getLogger(__name__)


@dataclass
class Embeddings:
    """A dataset's embeddings: the matrix `X` of the rows that decoded and their dataset `rows`, the skipped rows
    with reasons, and how many rows this run encoded and how many it took from stores."""

    X: object  # xp array (n_kept, dim), float32, on the backend's device; or RowChunks read from disk (streamed)
    rows: np.ndarray  # dataset row of each embedding
    skipped: list[tuple[int, str]] = field(default_factory=list)
    rows_computed: int = 0
    rows_reused: int = 0
    num_workers: int = 0  # the DataLoader workers that encoded them (--num-workers auto resolved)


class _Rows:
    """A torch-style dataset over some rows; a row that fails to decode comes back as (row, None, reason).

    With a transform that ends in ToTensor and Normalize (`split_transform`), an RGB image comes back as the head's
    uint8 (H, W, 3) array and `_Collate` finishes the batch at once (the same tensors to the bit)."""

    def __init__(self, dataset: ImageDataset, rows: range, transform):
        self.dataset, self.rows, self.transform = dataset, rows, transform
        self.split = split_transform(transform)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, j: int):
        row = int(self.rows[j])
        try:
            img = self.dataset.load(row)
        except SkipImage as exc:
            return row, None, str(exc)
        if self.split is None or not (isinstance(img, PILImage) and img.mode == "RGB"):
            return row, self.transform(img), ""
        out = self.split[0](img)
        if isinstance(out, PILImage) and out.mode == "RGB":
            return row, np.asarray(out, dtype=np.uint8), ""
        return row, self.transform(img), ""  # (a head that left PIL's RGB: the whole transform, as before)


class _Collate:
    """(kept rows, batch tensor or None, [(row, reason)]) from `_Rows` items; their uint8 arrays go through `tail` (a
    `BatchTail`) together."""

    def __init__(self, tail=None):
        self.tail = tail

    def __call__(self, items):
        import torch

        good = [(r, t) for r, t, _ in items if t is not None]
        bad = [(r, reason) for r, t, reason in items if t is None]
        rows = torch.tensor([r for r, _ in good], dtype=torch.int64)
        return rows, (self._stack([t for _, t in good]) if good else None), bad

    def _stack(self, items: list):
        import torch

        arrays = [t for t in items if isinstance(t, np.ndarray)]
        if len(arrays) == len(items) and len({a.shape for a in arrays}) == 1:
            return self.tail(arrays)
        # A mixed batch (another mode, another size): each array finished alone, the same numbers.
        return torch.stack([self.tail([t])[0] if isinstance(t, np.ndarray) else t for t in items])


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


PRECISIONS = ("fp32", "bf16", "fp16")


def autocast(device_type: str, precision: str):
    """torch.autocast for bf16/fp16 (matmuls and convolutions in half precision, reductions in fp32); fp32: none."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[precision])


class _Forward:
    """The encoder's forward pass (under autocast) in micro-batches that halve on out-of-memory, for the rest of
    the run."""

    def __init__(self, model, batch_size: int, precision: str = "fp32", device_type: str = "cpu",
                 channels_last: bool = True):
        self.model, self.limit = model, batch_size
        self.precision, self.device_type = precision, device_type
        # Whether batches go in as channels_last: torch's convolutions want it; ONNX Runtime takes NCHW, and a
        # channels_last batch would be copied there and back (two copies of 77 MB per 128 images at 224 px).
        self.channels_last = channels_last

    def __call__(self, x):
        import torch

        outs, i = [], 0
        while i < x.shape[0]:
            try:
                with autocast(self.device_type, self.precision):
                    out = self.model(x[i:i + self.limit])
                outs.append(out.float())
                i += self.limit
            except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
                if not _is_oom(exc) or self.limit == 1:
                    raise
                self.limit //= 2
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                log.warning("encode: out of memory; batch size halved to %d", self.limit)
        return outs[0] if len(outs) == 1 else torch.cat(outs)


class _RowBytes:
    """Rows as encoded bytes for decoding on the device: (row, bytes or None, reason, needs CPU decode).

    JPEGs whose EXIF orientation is not upright go to the CPU path (nvJPEG does not rotate them), as does anything
    that is not a JPEG; PIL only reads the header here, so the check costs no decoding."""

    def __init__(self, dataset: ImageDataset, rows: range):
        self.dataset, self.rows = dataset, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, j: int):
        import io

        from PIL import Image

        row = int(self.rows[j])
        try:
            data = self.dataset.read_bytes(row)
        except SkipImage as exc:
            return row, None, str(exc), False
        cpu = not data.startswith(b"\xff\xd8")
        if not cpu:
            try:
                with Image.open(io.BytesIO(data)) as im:
                    cpu = im.getexif().get(0x0112, 1) != 1 or im.mode == "CMYK"
            except Exception:  # PIL raises many types on broken headers: let the decoders decide
                cpu = True
        return row, data, "", cpu


def _device_batches(loader, dataset, encoder, device):
    """(rows, batch on device, skipped) per loader batch: nvJPEG (or torchvision's CPU decoder) for JPEGs, PIL and
    the encoder's own transform for the rest and for files the device decoder refuses."""
    import torch

    from .device_decode import DevicePreprocess, decode_batch

    prep = DevicePreprocess.from_config(encoder.key.get("preprocess", {}))
    for items in loader:
        bad = [(r, reason) for r, data, reason, _ in items if data is None]
        dev = [(r, data) for r, data, _, cpu in items if data is not None and not cpu]
        fallback = [r for r, data, _, cpu in items if data is not None and cpu]
        rows, xs = [], []
        if dev:
            encoded = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for _, d in dev]
            x, failed = decode_batch(encoded, prep, device)
            failed_set = set(failed)
            rows += [r for i, (r, _) in enumerate(dev) if i not in failed_set]
            xs.append(x)
            fallback += [dev[i][0] for i in failed]
        for r in fallback:
            try:
                xs.append(encoder.transform(dataset.load(r)).unsqueeze(0).to(device))
                rows.append(r)
            except SkipImage as exc:
                bad.append((r, str(exc)))
        if not rows:
            yield torch.zeros(0, dtype=torch.int64), None, bad, len(items)
            continue
        order = np.argsort(np.asarray(rows), kind="stable")
        x = torch.cat(xs)[torch.as_tensor(order, device=device)]
        yield torch.as_tensor(np.asarray(rows)[order]), x, bad, len(items)


def _batches(dataset, encoder, backend, rows, batch_size: int, num_workers: int, decode: str):
    """(kept rows as an int64 tensor, ascending; batch on its way to the device or None; skipped; items) per loader
    batch over `rows`, in order."""
    import torch

    if decode == "device":
        loader = torch.utils.data.DataLoader(_RowBytes(dataset, rows), batch_size=batch_size,
                                             num_workers=num_workers, collate_fn=list)
        yield from _device_batches(loader, dataset, encoder, torch.device(backend.torch_device))
        return
    items = _Rows(dataset, rows, encoder.transform)
    loader = torch.utils.data.DataLoader(items, batch_size=batch_size, num_workers=num_workers,
                                         collate_fn=_Collate(items.split[1] if items.split else None),
                                         pin_memory=backend.is_gpu)
    for r, b, bad in loader:
        yield r, b, bad, len(r) + len(bad)


class _Pending:
    """A shard's embeddings as its rows come in."""

    def __init__(self):
        self.parts, self.kept, self.bad, self.seen = [], [], [], 0


def encode_shards(dataset, encoder, forward, backend, shards: list[range], batch_size: int, num_workers: int, bar,
                  decode: str = "cpu", exclude: np.ndarray | None = None):
    """Encode the rows of `shards` (ascending, disjoint ranges) through one DataLoader and yield
    (position in `shards`, xp embeddings, kept rows, skipped) as each shard completes, in order. Rows in `exclude`
    (ascending; rows stored elsewhere) are neither encoded nor waited for.

    One loader for every shard keeps its workers and their prefetched batches alive from one shard to the next
    (a loader per 2,048-row shard started and drained its workers every ~0.2 s of GPU work); a batch may hold the
    end of one shard and the start of the next."""
    import torch

    device = torch.device(backend.torch_device)
    xp = backend.xp
    rows = np.concatenate([np.arange(r.start, r.stop, dtype=np.int64) for r in shards]) if shards else []
    starts = np.array([r.start for r in shards], dtype=np.int64)
    expected = [len(r) for r in shards]
    if exclude is not None and len(exclude) and len(rows):
        rows = rows[~np.isin(rows, exclude)]
        expected = [len(r) - int(np.diff(np.searchsorted(exclude, [r.start, r.stop]))[0]) for r in shards]
    pending: dict[int, _Pending] = {}
    done = 0

    def finished():
        """The shards from `done` on whose every row has come in (an empty shard at once), in order."""
        nonlocal done
        while done < len(shards) and pending.get(done, _Pending()).seen == expected[done]:
            p = pending.pop(done, None) or _Pending()
            X = xp.concatenate(p.parts) if p.parts else xp.zeros((0, encoder.dim), dtype=xp.float32)
            yield done, X, (np.concatenate(p.kept) if p.kept else np.zeros(0, np.int64)), sorted(p.bad)
            done += 1

    yield from finished()
    for batch_rows, batch, bad, n_items in _batches(dataset, encoder, backend, rows, batch_size, num_workers, decode):
        kept = batch_rows.numpy()
        if batch is not None:
            x = batch.to(device, non_blocking=True)
            if x.ndim == 4 and forward.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():  # (not across the yields: the consumer runs in between)
                feats = backend.from_torch(forward(x).contiguous())
            where = np.searchsorted(starts, kept, side="right") - 1  # ascending: one slice per shard
            for s in np.unique(where):
                lo, hi = np.searchsorted(where, s), np.searchsorted(where, s, side="right")
                p = pending.setdefault(int(s), _Pending())
                p.parts.append(feats[lo:hi])
                p.kept.append(kept[lo:hi])
                p.seen += int(hi - lo)
        for r, reason in bad:
            p = pending.setdefault(int(np.searchsorted(starts, r, side="right") - 1), _Pending())
            p.bad.append((int(r), reason))
            p.seen += 1
        bar.update(n_items)
        yield from finished()


def _encode_shard(dataset, encoder, forward, backend, rows: range, batch_size: int, num_workers: int, bar,
                  decode: str = "cpu", exclude: np.ndarray | None = None):
    """One shard (but the rows in `exclude`): returns (xp array of embeddings, kept rows, skipped list)."""
    for _, X, kept, bad in encode_shards(dataset, encoder, forward, backend, [rows], batch_size, num_workers, bar,
                                         decode, exclude):
        return X, kept, bad


def prepare_forward(encoder: Encoder, backend: Backend, batch_size: int, precision: str = "fp32",
                    compile: bool = False, runtime: str = "torch", cache_dir=None) -> _Forward:
    """Move the encoder to the backend's device (channels_last for convolutions) and wrap its forward pass; with
    `runtime` auto/onnx on the CPU twin, ONNX Runtime runs it (encode.runtime; its model cached under `cache_dir`)."""
    import torch

    from .runtime import OrtEncoder, resolve_runtime

    device_type = torch.device(backend.torch_device).type
    model = encoder.model.to(backend.torch_device)
    if any(p.ndim == 4 for p in model.parameters()):
        model = model.to(memory_format=torch.channels_last)
    encoder.model = model
    if compile:
        model = torch.compile(model, dynamic=False)
    has_weights = any(True for _ in model.parameters())  # (raw pixels are a reshape: nothing to speed up)
    if cache_dir is not None and has_weights and resolve_runtime(runtime, device_type, precision, compile) == "onnx":
        model = OrtEncoder(model, encoder.key, cache_dir)
    return _Forward(model, batch_size, precision, device_type, channels_last=not isinstance(model, OrtEncoder))


def store_shard(backend, store: EmbeddingStore, i: int, X, kept, bad, store_dtype: str = "float32"):
    """Write shard `i` to the store atomically; returns X as stored (rounded to `store_dtype`)."""
    if store_dtype != "float32":
        X = X.astype(store_dtype).astype(backend.xp.float32)
    store.write(i, Shard(backend.to_host(X).astype(store_dtype), kept,
                         np.array([r for r, _ in bad], np.int64), np.array([m for _, m in bad], dtype=str)))
    return X


def encode_and_store(dataset, encoder, forward, backend, store: EmbeddingStore, i: int, batch_size: int,
                     num_workers: int, bar, decode: str = "cpu", store_dtype: str = "float32", given=None):
    """Encode shard `i` and write it to the store atomically; returns what was written (X as stored, rounded).
    `given`: (embeddings, rows) of the shard's rows that other stores hold (`Donors.fetch`), copied, not encoded."""
    exclude = None if given is None else given[1]
    X, kept, bad = _encode_shard(dataset, encoder, forward, backend, store.shard_range(i), batch_size, num_workers,
                                 bar, decode, exclude)
    if given is not None:
        X, kept, _ = _with_donated(backend, given, X, kept)
    return store_shard(backend, store, i, X, kept, bad, store_dtype), kept, bad


def _with_donated(backend, donated: tuple[np.ndarray, np.ndarray], X, kept: np.ndarray):
    """A shard's fresh rows merged with the donated (embeddings, rows) in its range, in row order; and how many
    were donated."""
    xp = backend.xp
    emb, given = donated
    if not len(given):
        return X, kept, 0
    rows = np.concatenate([kept, given])
    order = np.argsort(rows, kind="stable")
    X = xp.concatenate([X, xp.asarray(emb, dtype=xp.float32)])[xp.asarray(order)]
    return X, rows[order], len(given)


def extract(dataset: ImageDataset, encoder: Encoder, backend: Backend, store: EmbeddingStore,
            batch_size: int = 128, num_workers: int | str = 0, progress: bool = True,
            store_dtype: str = "float32", precision: str = "fp32", compile: bool = False,
            decode: str = "cpu", in_memory: bool = True, donors=None, runtime: str = "torch",
            cache_dir=None) -> Embeddings:
    """Embeddings for every decodable row, reusing complete shards from `store` and writing the missing ones.

    With `store_dtype="float16"` shards take half the disk, and fresh rows are rounded the same way, so a run that
    reuses shards computes exactly what a run that encoded them did. `precision` bf16/fp16 runs the model under
    autocast (part of the store key: the numbers differ); `compile` wraps it in torch.compile (same numbers).
    `decode="device"` reads files as bytes and decodes JPEGs on the encoder's device (nvJPEG on a GPU).
    `in_memory=False` fills the store without keeping what it encodes and returns the store's rows as chunks read
    from disk on demand (`StoreRows`), for datasets whose embeddings do not fit in memory. `donors` (store.Donors):
    rows that earlier stores of the same encoder settings hold; they are copied into the new shards, not encoded.
    `num_workers`: DataLoader workers, or "auto" (encode/workers.py), resolved for the rows left to encode."""
    from tqdm.auto import tqdm

    # One per run: a halved batch size carries over to later shards.
    forward = prepare_forward(encoder, backend, batch_size, precision, compile, runtime, cache_dir)
    xp = backend.xp
    parts, rows, skipped = [], [], []
    computed = reused = 0
    todo = store.missing()
    given = donors.rows if donors is not None else np.zeros(0, np.int64)
    if donors is not None:
        donors.gather(store.dir)
    total = sum(len(store.shard_range(i)) for i in todo) - len(given)
    num_workers = _workers(num_workers, dataset, total, decode, backend)
    to_encode = set(todo)
    with tqdm(total=total, unit="img", desc=f"encode {encoder.name}", disable=not progress or total == 0,
              dynamic_ncols=True) as bar, contextlib.closing(
            encode_shards(dataset, encoder, forward, backend, [store.shard_range(i) for i in todo], batch_size,
                          num_workers, bar, decode, exclude=given)) as fresh:
        for i in range(store.n_shards):
            rng = store.shard_range(i)
            if i in to_encode:  # the shards to encode come out of `fresh` in order, each written as soon as it is whole
                _, X, kept, bad = next(fresh)
                n_given = 0
                if donors is not None:
                    X, kept, n_given = _with_donated(backend, donors.fetch(rng), X, kept)
                X = store_shard(backend, store, i, X, kept, bad, store_dtype)
                computed += len(rng) - n_given
                reused += n_given
            elif not in_memory:
                reused += len(rng)
                continue
            else:
                shard = store.read(i)
                X, kept = xp.asarray(shard.emb, dtype=xp.float32), shard.rows
                bad = list(zip(shard.skipped_rows.tolist(), shard.skipped_reasons.tolist()))
                reused += len(rng)
            if not in_memory:
                continue
            parts.append(X)
            rows.append(kept)
            skipped.extend(bad)
    if donors is not None:
        donors.release()
    store.mark_complete(encoder.dim)
    if not in_memory:
        from ..stream import StoreRows

        matrix = StoreRows(store)
        return Embeddings(matrix, matrix.rows, matrix.skipped, computed, reused, num_workers)
    X = xp.concatenate(parts) if len(parts) > 1 else parts[0]
    return Embeddings(X, np.concatenate(rows), skipped, computed, reused, num_workers)


def _workers(num_workers: int | str, dataset, n_rows: int, decode: str, backend) -> int:
    """The DataLoader workers for `n_rows` images to encode; auto's choice is logged with its reason."""
    from .workers import resolve_workers

    n, why = resolve_workers(num_workers, dataset, n_rows, decode, backend.is_gpu)
    if num_workers == "auto" and n_rows:
        log.info("encode: %d DataLoader worker(s) (--num-workers auto: %s)", n, why)
    return n
