"""torchvision's datasets by name: `torchvision:NAME:ROOT[:SPLIT]`, read from ROOT, downloaded only with --download."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError, require
from .base import ImageDataset, SkipImage

# How each dataset names its splits: a `train` flag, or a `split` string (and the names it accepts).
_TRAIN_FLAG = {"CIFAR10", "CIFAR100", "MNIST", "FashionMNIST", "KMNIST", "QMNIST", "USPS"}
_SPLITS = {"SVHN": ("train", "test", "extra"), "STL10": ("train", "test", "unlabeled"),
           "Flowers102": ("train", "val", "test"), "FGVCAircraft": ("train", "val", "trainval", "test"),
           "DTD": ("train", "val", "test"), "Food101": ("train", "test"), "OxfordIIITPet": ("trainval", "test"),
           "StanfordCars": ("train", "test"), "Country211": ("train", "valid", "test"), "GTSRB": ("train", "test"),
           "Imagenette": ("train", "val")}
_NO_SPLIT = {"EuroSAT", "Caltech101", "Caltech256"}
KNOWN = sorted(_TRAIN_FLAG | set(_SPLITS) | _NO_SPLIT)


@dataclass
class TorchvisionDataset(ImageDataset):
    """A torchvision dataset object; `rows` maps our rows to its indices (for --limit subsets)."""

    source: object = None
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    ident: str = ""

    def __len__(self) -> int:
        return len(self.rows)

    def load(self, i: int):
        """Row i's image as RGB PIL (numpy images converted); SkipImage when the source raises OSError/ValueError."""
        try:
            img = self.source[int(self.rows[i])][0]
        except (OSError, ValueError) as exc:
            raise SkipImage(f"{type(exc).__name__}: {exc}") from None
        if isinstance(img, np.ndarray):
            from PIL import Image

            img = Image.fromarray(img)
        return img.convert("RGB")

    def decodes_files(self) -> bool:
        """CIFAR, MNIST, SVHN, STL10 and USPS hold their pixels in a `data` array; the others read image files."""
        return not hasattr(getattr(self.source, "data", None), "shape")

    def fingerprint(self) -> str:
        """16 hex digits of SHA-256 over the dataset's identity (name, root, split, size), the rows and labels."""
        h = hashlib.sha256(self.ident.encode())
        h.update(np.ascontiguousarray(self.rows).tobytes())
        if self.labels is not None:
            h.update(np.ascontiguousarray(self.labels).tobytes())
        return h.hexdigest()[:16]

    def row_ids(self) -> np.ndarray:
        """A uint64 identity per row from the dataset's identity and the row's index in it (not its pixels)."""
        from .base import hash_ids

        return hash_ids([f"torchvision\0{self.ident}\0{r}" for r in self.rows.tolist()])

    def take(self, rows) -> "TorchvisionDataset":
        """A new TorchvisionDataset of `rows` (indices, in that order) over the same source object."""
        rows = np.asarray(rows, dtype=np.int64)
        return TorchvisionDataset(spec=self.spec, labels=None if self.labels is None else self.labels[rows],
                                  classes=self.classes, description=self.description, source=self.source,
                                  rows=self.rows[rows], ident=self.ident)


def _labels(ds) -> np.ndarray | None:
    """All labels without decoding images, from whichever attribute the dataset keeps them in."""
    for attr in ("targets", "labels", "_labels", "y"):
        v = getattr(ds, attr, None)
        if v is not None and len(v) == len(ds):
            return np.asarray(v, dtype=np.int64)
    samples = getattr(ds, "_samples", None) or getattr(ds, "samples", None)
    if samples is not None and len(samples) == len(ds):
        return np.asarray([s[1] for s in samples], dtype=np.int64)
    return None


def torchvision_dataset(arg: str, download: bool = False) -> TorchvisionDataset:
    """The dataset for `NAME:ROOT[:SPLIT]` (SPLIT defaults to test), downloaded only when `download` is true.

    Raises MissingDependency without torchvision, UserError for an unknown name or split or data not under ROOT."""
    tvd = require("torchvision.datasets", "torchvision datasets", "pip install torchvision")
    name, _, rest = arg.partition(":")
    root, _, split = rest.partition(":")
    if not name or not root:
        raise UserError("torchvision:NAME:ROOT[:SPLIT], e.g. torchvision:CIFAR10:~/data (test split by default)")
    cls = getattr(tvd, name, None)
    if cls is None or not isinstance(cls, type):
        raise UserError(f"torchvision has no dataset {name!r}; e.g. {', '.join(KNOWN[:8])}, ...")
    root_path = Path(root).expanduser()
    split = split or "test"
    kwargs: dict = {"root": str(root_path), "download": download}
    if name in _TRAIN_FLAG:
        if split not in ("train", "test"):
            raise UserError(f"torchvision:{name}: split {split!r}: train or test")
        kwargs["train"] = split == "train"
    elif name in _SPLITS:
        if split not in _SPLITS[name]:
            raise UserError(f"torchvision:{name}: split {split!r}: one of {', '.join(_SPLITS[name])}")
        kwargs["split"] = split
    elif name in _NO_SPLIT:
        split = "all"
    try:
        ds = cls(**kwargs)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted. You can use download=True ..."
        hint = "" if download else "; add --download to fetch it (needs internet)"
        raise UserError(f"torchvision:{name}: not found under {root_path} ({str(exc).split('.')[0]}){hint}") from None
    except TypeError as exc:
        raise UserError(f"torchvision:{name}: unsupported here ({exc}); use imagefolder: on its files") from None
    labels = _labels(ds)
    classes = list(getattr(ds, "classes", []) or []) or None
    ident = f"torchvision:{name}:{root_path.resolve()}:{split}:{len(ds)}"
    return TorchvisionDataset(spec=f"torchvision:{name}:{split}", labels=labels, classes=classes,
                              description=f"torchvision {name} ({split}, {len(ds)} images)", source=ds,
                              rows=np.arange(len(ds), dtype=np.int64), ident=ident)
