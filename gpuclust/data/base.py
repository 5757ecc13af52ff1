"""Image collections: in-memory arrays (packaged sets) and files on disk, behind one small interface."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})


class SkipImage(Exception):
    """An image that cannot be decoded; it is skipped, counted and listed, never fatal."""


def hash_ids(texts) -> np.ndarray:
    """64-bit identities (blake2b) of the given strings or bytes, as uint64; 0 is kept for "no identity"."""
    out = np.empty(len(texts), dtype=np.uint64)
    for i, t in enumerate(texts):
        data = t.encode("utf-8", "surrogatepass") if isinstance(t, str) else bytes(t)
        out[i] = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") or 1
    return out


@dataclass
class ImageDataset:
    """`len(ds)` images, `ds.load(i)` -> RGB PIL image; labels/classes/paths when the source has them."""

    spec: str
    labels: np.ndarray | None = None
    classes: list[str] | None = None
    paths: list[str] | None = None
    description: str = ""

    def __len__(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def load(self, i: int):  # pragma: no cover - overridden
        """Row i as an RGB PIL image; raises SkipImage when it cannot be used."""
        raise NotImplementedError

    def read_bytes(self, i: int) -> bytes:
        """The encoded file of row i, for decoding on the GPU; only sources made of image files have it."""
        raise NotImplementedError(f"{self.spec} holds decoded images, not files")

    def decodes_files(self) -> bool:
        """Whether loading a row decodes an image file (worth DataLoader workers: --num-workers auto) rather than
        converting pixels held in memory; the sources with files to read (`read_bytes`) do."""
        return type(self).read_bytes is not ImageDataset.read_bytes

    def fingerprint(self) -> str:
        """Identity of the rows (not of the spec string): part of the embedding store key."""
        raise NotImplementedError  # pragma: no cover

    def row_ids(self) -> np.ndarray | None:
        """A uint64 identity per row's image (its file's path, size and modification time, or its pixels), so that
        another dataset holding the same image can reuse its stored embedding; 0 for a row that must not take
        one (a row its source marks bad). None: the source has no such identities."""
        return None

    def native_size(self) -> int | None:
        """The shorter side of the source's images, from the first one that loads (None when none of the first few
        does): the study's raw-pixel baseline keeps images smaller than 32 px at their own size."""
        for i in range(min(len(self), 16)):
            try:
                return min(self.load(i).size)
            except SkipImage:
                continue
        return None

    def take(self, rows) -> "ImageDataset":
        """The dataset of `rows` (indices, in that order)."""
        raise NotImplementedError  # pragma: no cover

    def subset(self, n: int) -> "ImageDataset":
        """The first `n` rows (the whole set when n >= len)."""
        return self.take(np.arange(min(n, len(self))))

    @property
    def n_classes(self) -> int | None:
        return None if self.labels is None else int(len(np.unique(self.labels)))


@dataclass
class ArrayDataset(ImageDataset):
    """uint8 images (N, H, W) grayscale or (N, H, W, 3) RGB held in memory."""

    images: np.ndarray = field(default_factory=lambda: np.zeros((0, 1, 1), np.uint8))

    def __len__(self) -> int:
        return len(self.images)

    def load(self, i: int):
        """Row i as an RGB PIL image (grayscale rows are converted)."""
        from PIL import Image

        return Image.fromarray(self.images[i]).convert("RGB")

    def native_size(self) -> int | None:
        """The shorter side (px) of the array's images, or None for an empty array."""
        return int(min(self.images.shape[1:3])) if len(self.images) else None

    def fingerprint(self) -> str:
        """16 hex digits of SHA-256 over the pixels (and the labels, when there are any)."""
        h = hashlib.sha256(np.ascontiguousarray(self.images).tobytes())
        if self.labels is not None:
            h.update(np.ascontiguousarray(self.labels).tobytes())
        return h.hexdigest()[:16]

    def row_ids(self) -> np.ndarray:
        """A uint64 identity per row, hashed from its pixels and the image shape."""
        images = np.ascontiguousarray(self.images)
        return hash_ids([b"array\0" + bytes(str(images.shape[1:]), "ascii") + images[i].tobytes()
                         for i in range(len(images))])

    def take(self, rows) -> "ArrayDataset":
        """A new ArrayDataset of `rows` (indices, in that order) with their labels; classes are kept whole."""
        rows = np.asarray(rows, dtype=np.int64)
        return ArrayDataset(
            spec=self.spec,
            images=self.images[rows],
            labels=None if self.labels is None else self.labels[rows],
            classes=self.classes,
            description=self.description,
        )


@dataclass
class FileDataset(ImageDataset):
    """Image files on disk; decoding failures (and rows a file list marked bad) raise SkipImage."""

    root: str = ""
    bad: dict = field(default_factory=dict)  # row -> reason, for list rows that cannot be used

    def __len__(self) -> int:
        return len(self.paths or [])

    def load(self, i: int):
        """Row i's file as an RGB PIL image, turned upright by its EXIF orientation.

        Raises SkipImage for a row marked bad or a file that cannot be opened or decoded."""
        from PIL import Image, ImageOps

        if i in self.bad:
            raise SkipImage(self.bad[i])
        path = self.paths[i]
        try:
            with Image.open(path) as im:
                im = ImageOps.exif_transpose(im)
                return im.convert("RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise SkipImage(f"{type(exc).__name__}: {exc}") from None

    def read_bytes(self, i: int) -> bytes:
        """The raw bytes of row i's file; raises SkipImage for a row marked bad or a file that cannot be read."""
        if i in self.bad:
            raise SkipImage(self.bad[i])
        try:
            with open(self.paths[i], "rb") as f:
                return f.read()
        except OSError as exc:
            raise SkipImage(f"{type(exc).__name__}: {exc}") from None

    def fingerprint(self) -> str:
        """16 hex digits of SHA-256 over each path with its size and modification time (or "missing"), and the
        labels when there are any."""
        h = hashlib.sha256()
        for p in self.paths or []:
            try:
                st = Path(p).stat()
                h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogatepass"))
            except OSError:
                h.update(f"{p}\0missing\n".encode("utf-8", "surrogatepass"))  # (a name that is not UTF-8)
        if self.labels is not None:
            h.update(np.ascontiguousarray(self.labels).tobytes())
        return h.hexdigest()[:16]

    def row_ids(self) -> np.ndarray:
        """A uint64 identity per row from its file's real path, size and modification time; 0 for rows marked bad."""
        texts = []
        for p in self.paths or []:
            try:
                st = Path(p).stat()
                # realpath: one file reached through a symlinked folder and by its own path is one image
                texts.append(f"file\0{os.path.realpath(p)}\0{st.st_size}\0{st.st_mtime_ns}")
            except OSError:
                texts.append(f"missing\0{p}")  # never stored: the row is skipped
        ids = hash_ids(texts)
        ids[list(self.bad)] = 0
        return ids

    def take(self, rows) -> "FileDataset":
        """A new FileDataset of `rows` (indices, in that order), keeping their labels and bad-row reasons."""
        rows = np.asarray(rows, dtype=np.int64)
        paths = self.paths or []
        return FileDataset(
            spec=self.spec,
            paths=[paths[i] for i in rows],
            labels=None if self.labels is None else self.labels[rows],
            classes=self.classes,
            description=self.description,
            root=self.root,
            bad={j: self.bad[i] for j, i in enumerate(rows.tolist()) if i in self.bad},
        )


def stratified_rows(labels: np.ndarray | None, n_total: int, n: int, seed: int) -> np.ndarray:
    """`n` row indices drawn without replacement with a seed, keeping each class's share (largest remainders);
    uniform when there are no labels. Returned sorted, so the subset keeps the dataset's order."""
    rng = np.random.default_rng(seed)
    if n >= n_total:
        return np.arange(n_total)
    if labels is None:
        return np.sort(rng.choice(n_total, size=n, replace=False))
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n / n_total
    take = np.floor(quota).astype(np.int64)
    short = n - int(take.sum())
    take[np.argsort(-(quota - take), kind="stable")[:short]] += 1
    rows = [rng.choice(np.flatnonzero(labels == c), size=int(t), replace=False) for c, t in zip(classes, take)]
    return np.sort(np.concatenate(rows))


def list_images(folder: Path) -> list[Path]:
    """Image files under `folder`, recursively, sorted; symlink loops are not followed twice."""
    out = []
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
            out.append(p)
    return out


def encode_labels(names: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """(int64 class id per name, the sorted distinct names): ids index into the sorted names."""
    classes = sorted(set(names))
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[n] for n in names], dtype=np.int64), classes
