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
    with pytest.raises(UserError, match="share of variance"):
        reduce(backend.asarray(X), "pca", 0, {}, backend)
    with pytest.raises(UserError, match="whole number"):
        reduce(backend.asarray(X), "umap", 2.5, {}, backend)
    with pytest.raises(UserError, match="--normalize"):
        reduce(backend.asarray(X), "none", 2, {}, backend, post="cubic")
    with pytest.raises(UserError, match="needs more than"):
        reduce(backend.asarray(X[:20]), "umap", 50, {}, backend)


def test_pca_by_variance_kept_matches_sklearn(backend, digits):
    from sklearn.decomposition import PCA

    X, _ = digits
    Z, _ = reduce(backend.asarray(X), "pca", 0.9, {}, backend)
    Xz = (X - X.mean(0)) / np.where(X.std(0) > 0, X.std(0), 1)  # z-scored first, constant pixels -> 0
    ref = PCA(0.9, svd_solver="full").fit(Xz)
    assert Z.shape[1] == ref.n_components_
    # same subspace up to sign: absolute correlation of matching components ~ 1
    Zh = backend.to_host(Z)
    Zr = ref.transform(Xz)
    corr = [abs(np.corrcoef(Zh[:, j], Zr[:, j])[0, 1]) for j in range(5)]
    assert min(corr) > 0.999


def test_zscore_and_normalisations(backend, digits):
    X, _ = digits
    Xd = backend.asarray(X)
    Z, twin = reduce(Xd, "zscore", 0, {}, backend)
    Zh = backend.to_host(Z)
    assert twin == "none" and np.abs(Zh.mean(0)).max() < 1e-4
    assert np.allclose(Zh.std(0)[X.std(0) > 0], 1, atol=1e-4) and np.all(Zh[:, X.std(0) == 0] == 0)
    L, _ = reduce(Xd, "none", 0, {}, backend, post="l2")
    np.testing.assert_allclose(np.linalg.norm(backend.to_host(L), axis=1), 1, rtol=1e-5)
    S, _ = reduce(Xd, "none", 0, {}, backend, post="spherical")
    Sh = backend.to_host(S)
    assert Sh.std(0).mean() == pytest.approx(1.0, rel=1e-4) and np.abs(Sh.mean(0)).max() < 1e-4


def test_what_the_seed_means_for_umap_on_each_twin(caplog):
    """The run's seed seeds UMAP on the CPU twin always and on the GPU twin up to GPU_SEEDED_UMAP_MAX_ROWS fitted
    rows; above that the GPU twin fits unseeded (cuML's seeded path is exact and deterministic, too slow at scale)
    and says so. A random_state the user gives is always kept. (A GPU run's decision, numpy standing in for CuPy.)"""
    import logging

    import numpy as np
    import scipy.special

    from gpuclust.backend import Backend, resolve_backend
    from gpuclust.reduce import GPU_SEEDED_UMAP_MAX_ROWS, _umap_settings, umap_seed

    caplog.set_level(logging.INFO)
    gpu, cpu = Backend("gpu", np, scipy.special), resolve_backend("cpu")
    big = GPU_SEEDED_UMAP_MAX_ROWS + 1
    assert umap_seed(GPU_SEEDED_UMAP_MAX_ROWS, {}, 7, gpu) == 7
    assert umap_seed(big, {}, 7, gpu) is None and "fitted unseeded" in caplog.text
    assert umap_seed(big, {"random_state": 3}, 7, gpu) == 3
    assert umap_seed(10 * big, {}, 7, cpu) == 7
    assert umap_seed(big, {"metric": "haversine"}, 7, gpu) == 7  # runs on the CPU twin: seeded there
    assert _umap_settings(big, 50, {}, 7, gpu)[1]["random_state"] is None
    assert _umap_settings(big, 50, {"knn": "auto"}, 7, gpu)[1]["random_state"] is None  # knn is gpuclust's own
    assert _umap_settings(big, 50, {}, 7, cpu)[1]["random_state"] == 7
