"""Thumbnails for the explorer: one small WebP file per image, written once and reused by every run of the same images.

Files live under `<cache>/thumbs/<size>/<2 hex>/<16 hex>.webp`, named by the image's identity (`ImageDataset.row_ids`:
its file's path, size and modification time, or its pixels), so a run on a subset, a sweep, or a second job over the
same folder finds the thumbnails an earlier run wrote. A source with no identities (`row_ids()` is None), and a row
whose identity is 0, are named by SHA-256 of the dataset's fingerprint and the row number instead: reused by the same
dataset only.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..store import default_cache_dir

log = logging.getLogger(__name__)

THUMB_SIZE = 96
# WebP at quality 80: a 96 px photo thumbnail is about 0.6 KB, a 28 x 28 Fashion-MNIST image about 0.3 KB. Method 2
# (of 0-6) encodes at about 1.7x the speed of Pillow's default 4 for files ~5 % larger (measured on Fashion-MNIST
# enlarged to 96 px: 1,880 vs 1,113 images/s, 1,140 vs 1,091 bytes).
WEBP_QUALITY = 80
WEBP_METHOD = 2
# Threads that load, encode and write. Fashion-MNIST, 10,000 rows, on a busy shared 2-core VM, two repeats:
# 1,170-1,350 / 1,370-1,760 / 1,450-2,740 rows/s with 1 / 2 / 4 threads (creating and renaming files waits about as
# long as encoding works; encoding alone runs at ~5,000 images/s on one thread).
DEFAULT_WORKERS = 4
_PROGRESS_MIN = 2000  # a progress bar only for work that takes more than a moment
_BATCH = 1024


def thumbnail_bytes(img, size: int = THUMB_SIZE) -> bytes:
    """WebP bytes of `img` (a PIL image) fitted inside size x size, keeping its aspect ratio.

    Images already smaller than that keep their own size: enlarging a 28 x 28 image to 96 px makes its file about four
    times larger (~1.1 KB vs ~0.3 KB at 10,000 rows) and adds no detail; the page scales it up with CSS
    (`image-rendering: pixelated`)."""
    from PIL import Image

    img = img.convert("RGB")
    if max(img.size) > size:
        img = img.copy()
        img.thumbnail((size, size), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="WEBP", quality=WEBP_QUALITY, method=WEBP_METHOD)
    return buf.getvalue()


def sample_rows(n_rows: int, cap: int | None, seed: int = 0, must: np.ndarray | None = None) -> np.ndarray:
    """Sorted positions (int64) of the rows that get a thumbnail: all `n_rows` when `cap` is None or not below it,
    else `cap` of them: the `must` positions first (outliers, duplicates; in their order, up to `cap`), then a
    seeded uniform draw from the rest."""
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, np.integer)) or cap < 0):
        raise UserError(f"--thumbnails {cap!r}: a whole number of images, 0 or more")
    if cap is None or n_rows <= cap:
        return np.arange(n_rows, dtype=np.int64)
    first = np.zeros(0, np.int64) if must is None else np.asarray(must, dtype=np.int64).ravel()
    first = first[(first >= 0) & (first < n_rows)]
    _, keep = np.unique(first, return_index=True)
    first = first[np.sort(keep)][:cap]  # distinct, in the order given
    rest = np.setdiff1d(np.arange(n_rows, dtype=np.int64), first, assume_unique=True)
    drawn = np.random.default_rng(seed).choice(rest, size=int(cap) - len(first), replace=False)
    return np.sort(np.concatenate([first, drawn]))


class ThumbnailCache:
    """Thumbnails of `size` px under `root` (default `<cache>/thumbs/<size>`), one file per image identity.

    `workers`: threads that decode and encode (Pillow releases the GIL in both)."""

    def __init__(self, root: Path | None = None, size: int = THUMB_SIZE, workers: int = DEFAULT_WORKERS):
        self.size = int(size)
        self.root = Path(root).expanduser() if root is not None else default_cache_dir() / "thumbs" / str(self.size)
        self.workers = max(1, int(workers))

    def names(self, ds, rows: np.ndarray) -> list[str]:
        """The file stem (16 hex digits) of each of `rows` of `ds`: its image identity, or SHA-256 of the dataset's
        fingerprint and the row number where the source gives none."""
        ids = ds.row_ids()
        fp = None
        out = []
        for r in rows.tolist():
            rid = 0 if ids is None else int(ids[r])
            if rid == 0:
                fp = ds.fingerprint() if fp is None else fp
                out.append(hashlib.sha256(f"{fp}\0{r}".encode()).hexdigest()[:16])
            else:
                out.append(f"{rid:016x}")
        return out

    def path(self, name: str) -> Path:
        """The file of a thumbnail named `name` (16 hex digits)."""
        return self.root / name[:2] / f"{name}.webp"

    def ensure(self, ds, rows, progress: bool = False) -> dict[int, Path]:
        """Dataset row -> thumbnail file for each of `rows` of `ds` that loads, writing only the missing files.

        Rows that raise SkipImage are left out (counted in a log line; they are tried again next time). Each file is
        written atomically, so a run killed part way resumes where it stopped."""
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        files = {r: self.path(n) for r, n in zip(rows.tolist(), self.names(ds, rows))}
        todo: dict[Path, int] = {}
        for r, p in files.items():
            if not _present(p):
                todo.setdefault(p, r)  # one image held by two rows is written once
        failed = self._write(ds, todo, progress) if todo else set()
        if failed:
            log.warning("thumbnails: %d of %d images could not be loaded and have none", len(failed), len(rows))
        log.info("thumbnails: %d written, %d reused (%s)", len(todo) - len(failed), len(files) - len(todo), self.root)
        return {r: p for r, p in files.items() if p not in failed}

    def _write(self, ds, todo: dict[Path, int], progress: bool) -> set[Path]:
        """Write the thumbnails of `todo` (file -> row) with the thread pool; returns the files whose rows failed."""
        for d in {p.parent for p in todo}:
            d.mkdir(parents=True, exist_ok=True)
        items = list(todo.items())
        bar = None
        if progress and len(items) > _PROGRESS_MIN:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(items), desc="thumbnails", unit="img")
        failed = set()
        with ThreadPoolExecutor(self.workers) as pool:
            for start in range(0, len(items), _BATCH):  # in batches: a million pending futures would hold memory
                batch = items[start:start + _BATCH]
                failed.update(p for (p, _), ok in zip(batch, pool.map(lambda it: self._one(ds, it[1], it[0]), batch))
                              if not ok)
                if bar is not None:
                    bar.update(len(batch))
        if bar is not None:
            bar.close()
        return failed

    def _one(self, ds, row: int, path: Path) -> bool:
        from ..data.base import SkipImage

        try:
            img = _load(ds, row, self.size)
        except SkipImage:
            return False
        _write_file(path, thumbnail_bytes(img, self.size))
        return True


def _load(ds, row: int, size: int):
    """Row `row` of `ds` as an RGB PIL image. A JPEG file is decoded at a reduced scale (Pillow's draft: 1/2 to 1/8
    of each side, never below `size`), 2.5x faster for a 1280 x 960 photo; anything else goes through `ds.load`."""
    from PIL import Image, ImageOps

    from ..data.base import FileDataset

    if isinstance(ds, FileDataset) and row not in ds.bad:
        try:
            with Image.open(ds.paths[row]) as im:
                if im.format == "JPEG":
                    im.draft("RGB", (size, size))
                    return ImageOps.exif_transpose(im).convert("RGB")
        except Exception:  # noqa: BLE001 - ds.load below decides, and says why
            pass
    return ds.load(row)


def _present(path: Path) -> bool:
    try:
        return path.stat().st_size > 0  # an empty file: a write cut short by a crash before the disk had it
    except OSError:
        return False


def _write_file(path: Path, data: bytes) -> None:
    """Write through a temporary file and a rename: a killed run leaves the whole file or none. No fsync per file
    (store.atomic_write_bytes has one): it made thumbnail writing up to 2x slower here, and a file a power cut leaves
    empty is written again (`_present`)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
