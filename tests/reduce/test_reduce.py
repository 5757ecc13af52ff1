import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.metrics import adjusted_mutual_info_score

from gpuclust.errors import UserError
from gpuclust.reduce import reduce


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return d.data.astype(np.float32), d.target


def test_none_and_pca(backend, digits):
    X, _ = digits
    Xd = backend.asarray(X)
    Z, twin = reduce(Xd, "none", 50, {}, backend)
    assert Z is Xd and twin == "none"
    Z, twin = reduce(Xd, "pca", 10, {}, backend)
    assert Z.shape == (len(X), 10) and twin == backend.name
    assert isinstance(Z, type(Xd))  # stays on the backend's device


def test_umap_keeps_class_structure(backend, digits):
    from sklearn.cluster import KMeans

    X, y = digits
    Z, twin = reduce(backend.asarray(X), "umap", 10, {}, backend, seed=0)
    assert Z.shape == (len(X), 10) and twin == backend.name
    pred = KMeans(10, n_init=3, random_state=0).fit_predict(backend.to_host(Z))
    assert adjusted_mutual_info_score(y, pred) > 0.8  # digits in a UMAP space: ~0.9; raw-pixel KMeans: ~0.75


def test_bad_dims(backend, digits):
    X, _ = digits
    with pytest.raises(UserError, match="at most"):
        reduce(backend.asarray(X), "pca", 100, {}, backend)
    with pytest.raises(UserError, match="at least 1"):
        reduce(backend.asarray(X), "pca", 0, {}, backend)
    with pytest.raises(UserError, match="needs more than"):
        reduce(backend.asarray(X[:20]), "umap", 50, {}, backend)
