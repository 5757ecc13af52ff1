"""Image collections: in-memory arrays (packaged sets) and files on disk, behind one small interface."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})


class SkipImage(Exception):
    """An image that cannot be decoded; it is skipped, counted and listed, never fatal."""


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
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Identity of the rows (not of the spec string): part of the embedding store key."""
        raise NotImplementedError  # pragma: no cover

    def subset(self, n: int) -> "ImageDataset":
        """The first `n` rows (the whole set when n >= len)."""
        raise NotImplementedError  # pragma: no cover

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
        from PIL import Image

        return Image.fromarray(self.images[i]).convert("RGB")

    def fingerprint(self) -> str:
        h = hashlib.sha256(np.ascontiguousarray(self.images).tobytes())
        if self.labels is not None:
            h.update(np.ascontiguousarray(self.labels).tobytes())
        return h.hexdigest()[:16]

    def subset(self, n: int) -> "ArrayDataset":
        return ArrayDataset(
            spec=self.spec,
            images=self.images[:n],
            labels=None if self.labels is None else self.labels[:n],
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

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for p in self.paths or []:
            try:
                st = Path(p).stat()
                h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{p}\0missing\n".encode())
        if self.labels is not None:
            h.update(np.ascontiguousarray(self.labels).tobytes())
        return h.hexdigest()[:16]

    def subset(self, n: int) -> "FileDataset":
        return FileDataset(
            spec=self.spec,
            paths=(self.paths or [])[:n],
            labels=None if self.labels is None else self.labels[:n],
            classes=self.classes,
            description=self.description,
            root=self.root,
            bad={i: r for i, r in self.bad.items() if i < n},
        )


def list_images(folder: Path) -> list[Path]:
    """Image files under `folder`, recursively, sorted; symlink loops are not followed twice."""
    out = []
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
            out.append(p)
    return out


def encode_labels(names: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    classes = sorted(set(names))
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[n] for n in names], dtype=np.int64), classes
