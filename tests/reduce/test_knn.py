"""faiss kNN graphs fed to UMAP as precomputed neighbours."""
import numpy as np
import pytest

pytest.importorskip("faiss")

from gpuclust.backend import cpu_backend  # noqa: E402
from gpuclust.errors import UserError  # noqa: E402
from gpuclust.reduce import reduce  # noqa: E402
from gpuclust.reduce.knn import faiss_knn  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.data.astype(np.float32), d.target


def test_faiss_graph_equals_exact_neighbours_with_self_first(digits):
    from sklearn.neighbors import NearestNeighbors

    X, _ = digits
    X = np.vstack([X, X[:5]])  # exact duplicates: each must still list itself first
    idx, dist_f = faiss_knn(X, 10, cpu_backend())
    assert idx.shape == dist_f.shape == (len(X), 10) and idx.dtype == np.int64
    assert np.array_equal(idx[:, 0], np.arange(len(X))) and np.all(dist_f[:, 0] == 0)
    dist, _ = NearestNeighbors(n_neighbors=10).fit(X).kneighbors(X)
    np.testing.assert_allclose(dist_f[:, 1:], dist[:, 1:], rtol=1e-4, atol=1e-3)  # euclidean, not squared
    assert np.all(np.diff(dist_f, axis=1) >= -1e-5)
    dup = len(X) - 5
    assert idx[dup, 1] == 0 and dist_f[dup, 1] == 0  # the duplicate's twin is its nearest other row


def test_umap_on_faiss_graph_clusters_as_well(digits):
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_mutual_info_score

    X, y = digits
    be = cpu_backend()
    Z_own, _ = reduce(X, "umap", 10, {"n_neighbors": 15}, be, seed=0)
    Z_faiss, _ = reduce(X, "umap", 10, {"n_neighbors": 15, "knn": "faiss"}, be, seed=0)
    ami = [adjusted_mutual_info_score(y, KMeans(10, n_init=3, random_state=0).fit_predict(Z))
           for Z in (Z_own, Z_faiss)]
    assert ami[1] > 0.8 and abs(ami[0] - ami[1]) < 0.05, ami


def test_knn_parameter_errors(digits):
    X, _ = digits
    with pytest.raises(UserError, match="auto .* or faiss"):
        reduce(X, "umap", 5, {"knn": "annoy"}, cpu_backend())
    with pytest.raises(UserError, match="euclidean"):
        reduce(X, "umap", 5, {"knn": "faiss", "metric": "cosine"}, cpu_backend())
