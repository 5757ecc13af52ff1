"""The map stage (gpuclust/explore/layout.py) on real images: scikit-learn's digits (1,797 8x8 images) as pixels.

A map is only worth drawing if images that look alike land together: a 5-nearest-neighbour vote in the 2-D map
must name the digit of most rows (a broken map, or rows placed at random, scores near 0.1)."""
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from gpuclust.backend import resolve_backend
from gpuclust.explore import layout
from gpuclust.store import ReductionCache
from helpers import run_cli


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return d.data.astype(np.float32), d.target


def knn_accuracy(xy, y) -> float:
    return float(cross_val_score(KNeighborsClassifier(5), xy, y, cv=3).mean())


def test_map_keeps_digits_apart_and_is_cached(digits, tmp_path):
    X, y = digits
    cpu = resolve_backend("cpu")
    params = layout.map_params({"method": "umap", "params": {"n_neighbors": 15}})
    assert params == {"n_neighbors": 15, **layout.MAP_PARAMS}
    xy, twin = layout.map_2d(X, params, cpu, seed=0, store_dir=str(tmp_path))
    assert xy.shape == (len(X), 2) and xy.dtype == np.float32 and np.isfinite(xy).all() and twin == "cpu"
    assert knn_accuracy(xy, y) > 0.9
    # A second call reads the reduction cache beside the embeddings instead of fitting again.
    assert len(list(ReductionCache(tmp_path).dir.glob("*.npy"))) == 1
    again, _ = layout.map_2d(X + 1e3, params, cpu, seed=0, store_dir=str(tmp_path))  # other rows, same key: cached
    np.testing.assert_array_equal(again, xy)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])  # the encoder's space; a streamed run's reduced space
def test_large_runs_fit_a_sample_and_place_the_rest(digits, monkeypatch, metric):
    X, y = digits
    cpu = resolve_backend("cpu")
    monkeypatch.setitem(layout.FIT_ROWS, "cpu", 600)
    monkeypatch.setattr(layout, "PLACE_ROWS", 500)  # several placing blocks
    xy, _ = layout.map_2d(X, layout.map_params({"method": "pca", "params": {}}), cpu, seed=0, metric=metric)
    fitted = np.zeros(len(X), bool)
    fitted[np.random.default_rng(0).choice(len(X), 600, replace=False)] = True
    # Placed rows are named by their fitted neighbours on the map nearly as well as fitted rows are.
    clf = KNeighborsClassifier(5).fit(xy[fitted], y[fitted])
    assert clf.score(xy[~fitted], y[~fitted]) > 0.85
    assert np.isfinite(xy).all() and len(np.unique(xy, axis=0)) > 0.95 * len(X)


def test_weighted_mean_ignores_missing_neighbours():
    xy = np.array([[0, 0], [10, 0], [0, 10]], np.float32)
    idx = np.array([[0, 1, -1], [2, -1, -1]])
    sim = np.array([[0.5, 0.5, -np.inf], [-0.2, -np.inf, -np.inf]], np.float32)
    np.testing.assert_allclose(layout.weighted_mean(idx, sim, xy), [[5, 0], [0, 10]], atol=1e-5)


def test_run_writes_map_parquet_and_map_none_leaves_it_out(tmp_path):
    args = ["--dataset", "digits", "--encoder", "pixels", "--reduce", "pca", "--dims", "20", "--k", "10",
            "--device", "cpu", "--no-silhouette-umap", "--gallery", "0", "-q"]
    r = run_cli(*args, "--output", str(tmp_path / "with"))
    assert r.returncode == 0, r.stderr
    m = pd.read_parquet(tmp_path / "with" / "map.parquet")
    labels = pd.read_parquet(tmp_path / "with" / "labels.parquet")
    assert list(m.columns) == ["row", "x", "y"] and (m["row"].to_numpy() == labels["row"].to_numpy()).all()
    assert knn_accuracy(m[["x", "y"]].to_numpy(), labels["label_true"].to_numpy()) > 0.9
    r = run_cli(*args, "--map", "none", "--output", str(tmp_path / "without"))
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "without" / "map.parquet").exists() and (tmp_path / "without" / "map.png").is_file()
