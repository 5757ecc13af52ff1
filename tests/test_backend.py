"""The backend and its twin table: resolution, parameter translation, CPU fallback recorded."""
import numpy as np
import pytest
import scipy.special

from gpuclust.backend import ALGORITHMS, Backend, gpu_available, make_estimator, resolve_backend
from gpuclust.errors import UserError


def test_auto_picks_cpu_without_a_gpu():
    if gpu_available()[0]:
        pytest.skip("this machine has a GPU")
    assert resolve_backend("auto").name == "cpu"
    with pytest.raises(UserError, match="--device gpu needs"):
        resolve_backend("gpu")


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_cpu_twin_resolves(name):
    built = make_estimator(name, resolve_backend("cpu"))
    assert built.twin == "cpu" and hasattr(built.obj, "fit")


def test_hdbscan_min_samples_translation():
    t = ALGORITHMS["hdbscan"].translate
    # sklearn counts the point itself; cuML does not: the GPU twin gets one less.
    assert t({"min_cluster_size": 20}, "cpu")["min_samples"] == 20
    assert t({"min_cluster_size": 20}, "gpu")["min_samples"] == 19
    assert t({"min_cluster_size": 20, "min_samples": 7}, "gpu")["min_samples"] == 6
    assert t({"min_samples": 7}, "cpu")["min_samples"] == 7 and t({}, "cpu")["min_cluster_size"] == 5
    assert t({"min_samples": 1}, "gpu")["min_samples"] == 1  # cuML's floor
    # sklearn's "no size limit" is None; cuML's is 0 (it assigns the value to a C int).
    assert t({"max_cluster_size": None}, "gpu")["max_cluster_size"] == 0
    assert t({"max_cluster_size": 500}, "gpu")["max_cluster_size"] == 500
    assert t({"max_cluster_size": None}, "cpu")["max_cluster_size"] is None


def test_gpu_gaps_follow_cumls_limits():
    """What cuML's fit would reject runs on the CPU twin instead (limits read in cuML 26.x's hdbscan.pyx and
    agglomerative.pyx): HDBSCAN's min_samples above 1023 in cuML's counting, 1024 in scikit-learn's."""
    gap = ALGORITHMS["hdbscan"].gpu_gap
    assert gap({"min_cluster_size": 1024}) is None
    assert "min_samples 1025" in gap({"min_cluster_size": 1025})
    assert "min_samples 2000" in gap({"min_cluster_size": 50, "min_samples": 2000})
    assert gap({"min_cluster_size": 5000, "min_samples": 10}) is None
    assert "euclidean" in gap({"metric": "manhattan"})
    # Single linkage with l1 or cosine: cuML's default kNN connectivity is euclidean only, so the GPU twin gets
    # the full pairwise graph.
    t = ALGORITHMS["agglomerative"].translate
    assert "connectivity" not in t({"linkage": "single"}, "gpu")
    assert t({"linkage": "single", "metric": "cosine"}, "gpu")["connectivity"] == "pairwise"
    assert t({"linkage": "single", "metric": "l1"}, "gpu")["connectivity"] == "pairwise"
    assert "connectivity" not in t({"linkage": "single", "metric": "cosine"}, "cpu")


def test_l1_single_linkage_too_large_for_the_device_runs_on_the_cpu_twin(monkeypatch, caplog):
    """cuML's pairwise single linkage needs n^2 floats: beyond the free device memory the CPU twin (an MST, linear
    memory) runs it, with a log line. A GPU run's decision, with numpy standing in for CuPy."""
    import scipy.special

    import gpuclust.backend as backend_mod
    from gpuclust.backend import Backend, make_estimator
    from gpuclust.cluster import _size_gap

    gpu = Backend("gpu", np, scipy.special)
    monkeypatch.setattr(backend_mod, "device_free_bytes", lambda: 2**30)  # 1 GiB free
    l1 = {"n_clusters": 10, "linkage": "single", "metric": "l1"}
    assert _size_gap("agglomerative", l1, 5_600, gpu) is None  # 26 bytes a pair: 0.76 GiB
    gap = _size_gap("agglomerative", l1, 6_400, gpu)  # 0.99 GiB, above 80% of what is free
    assert "1.0 GiB" in gap and "1.0 GiB free" in gap
    monkeypatch.setattr(backend_mod, "device_free_bytes", lambda: 2**40)
    assert "in 32 bits" in _size_gap("agglomerative", l1, 46_341, gpu)  # the edge count would overflow
    assert _size_gap("agglomerative", l1, 46_340, gpu) is None
    assert _size_gap("agglomerative", {**l1, "metric": "euclidean"}, 10**6, gpu) is None  # cuML's kNN graph
    assert _size_gap("agglomerative", {**l1, "metric": "chebyshev"}, 10**6, gpu) is None  # the table's own gap
    assert _size_gap("agglomerative", {**l1, "linkage": "ward"}, 10**6, gpu) is None  # CPU twin anyway
    assert _size_gap("agglomerative", l1, 10**6, Backend("cpu", np, scipy.special)) is None
    est = make_estimator("agglomerative", gpu, gpu_gap=gap, **l1)
    assert est.twin == "cpu" and type(est.obj).__module__.startswith("sklearn.")
    assert "lacks memory for l1 single linkage of 6400 rows" in caplog.text


def test_umap_metrics_and_inits_cuml_lacks_run_on_the_cpu_twin():
    """cuML's UMAP knows a subset of umap-learn's metrics (fewer still with nn_descent) and two inits (its
    umap_utils.pyx): the rest runs on the CPU twin instead of failing inside cuML."""
    gap = ALGORITHMS["umap"].gpu_gap
    assert gap({"n_neighbors": 30, "metric": "euclidean"}) is None and gap({"metric": "cosine"}) is None
    assert gap({"metric": "manhattan", "init": "random"}) is None
    assert gap({"metric": "haversine"}) == "metric haversine"
    assert gap({"metric": "l1", "build_algo": "nn_descent"}) == "metric l1 with build_algo=nn_descent"
    assert gap({"metric": "cosine", "build_algo": "nn_descent"}) is None
    assert gap({"init": "pca"}) == "init pca"


def test_umap_graph_settings_translate_per_twin(caplog):
    """cuML's build_algo/build_kwds choose how its neighbour graph is searched: the CPU twin (umap-learn has neither)
    drops them, also when it stands in for the GPU twin, and the GPU twin searches exactly for metrics that cuML's
    nn_descent refuses, since its "auto" switches to nn_descent above 50,000 unseeded rows."""
    import logging

    from gpuclust.backend import _umap_params

    gpu = Backend("gpu", np, scipy.special)  # numpy inside: only the twin choice matters here
    caplog.set_level(logging.INFO, logger="gpuclust.backend")
    for backend in (gpu, resolve_backend("cpu")):
        est = make_estimator("umap", backend, n_components=2, metric="l1", build_algo="nn_descent",
                             build_kwds={"nnd_graph_degree": 64}, random_state=0)
        assert est.twin == "cpu" and type(est.obj).__module__.startswith("umap")
        assert "build_algo" not in est.params and "build_kwds" not in est.params
    assert "build_algo, build_kwds apply to cuML only" in caplog.text
    assert _umap_params({"metric": "l1", "random_state": None}, "gpu")["build_algo"] == "brute_force_knn"
    assert _umap_params({"metric": "correlation", "build_algo": "auto"}, "gpu")["build_algo"] == "brute_force_knn"
    assert "build_algo" not in _umap_params({"metric": "cosine"}, "gpu")
    assert "build_algo" not in _umap_params({}, "gpu")  # euclidean: cuML's own choice stands
    assert _umap_params({"metric": "cosine", "build_algo": "nn_descent"}, "gpu")["build_algo"] == "nn_descent"


def test_hdbscan_translation_keeps_cpu_results():
    from sklearn.cluster import HDBSCAN
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA

    X = PCA(5, random_state=0).fit_transform(load_digits().data)
    built = make_estimator("hdbscan", resolve_backend("cpu"), min_cluster_size=15)
    np.testing.assert_array_equal(built.call("fit_predict", resolve_backend("cpu"), X),
                                  HDBSCAN(min_cluster_size=15, min_samples=15, copy=True).fit_predict(X))


def test_gpu_twin_lacking_a_parameter_falls_back_to_cpu_and_says_so(caplog):
    # A GPU run (array module left as numpy so this runs anywhere): cuML's HDBSCAN has no `leaf_size`.
    fake_gpu = Backend("gpu", np, scipy.special)
    built = make_estimator("hdbscan", fake_gpu, min_cluster_size=10, leaf_size=30)
    assert built.twin == "cpu" and type(built.obj).__module__.startswith("sklearn")
    assert "runs on the CPU twin" in caplog.text
    X = np.random.default_rng(0).normal(size=(60, 3))
    labels = built.call("fit_predict", fake_gpu, X)
    assert labels.shape == (60,)


def test_unknown_estimator_parameter_is_a_user_error():
    with pytest.raises(UserError, match="kmeans"):
        make_estimator("kmeans", resolve_backend("cpu"), n_clusters=3, nonsense=1)


def test_to_host_scalars_and_arrays():
    be = resolve_backend("cpu")
    assert be.to_host(np.float64(2.5)) == 2.5 and isinstance(be.to_host(np.float64(2.5)), float)
    a = np.arange(3)
    assert be.to_host(a) is a
