"""The backend and its twin table: resolution, parameter translation, CPU fallback recorded."""
import inspect
import json
from pathlib import Path

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

    from gpuclust.reduce.twins import _umap_params

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


def test_to_host_scalars_and_arrays():
    be = resolve_backend("cpu")
    assert be.to_host(np.float64(2.5)) == 2.5 and isinstance(be.to_host(np.float64(2.5)), float)
    a = np.arange(3)
    assert be.to_host(a) is a


# cuML 26.10's constructors, read from its wheel's sources (tests/data/cuml_26_10_signatures.json says which).
CUML_SIGNATURES = json.loads((Path(__file__).parent / "data" / "cuml_26_10_signatures.json").read_text())["classes"]
# Values for parameters a GPU twin honours whose scikit-learn/umap-learn default would not show the translation.
EXAMPLE_VALUES = {"n_clusters": 5, "n_components": 5, "min_samples": 7, "max_cluster_size": None,
                  "distance_threshold": None, "random_state": 0, "build_algo": "auto", "build_kwds": {},
                  "precomputed_knn": None, "metric": "euclidean", "linkage": "single",
                  "affinity": "nearest_neighbors", "assign_labels": "kmeans", "oversampling_factor": 2.0,
                  "max_samples_per_batch": 32768, "max_mbytes_per_batch": 1024}


def _cpu_defaults(algo) -> dict:
    """Every parameter a user can give this algorithm (its CPU class's), at that class's default."""
    from gpuclust.backend import _resolve

    cls = _resolve(algo.cpu, algo, "cpu")
    return {name: p.default for name, p in inspect.signature(cls).parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


CUML_ROWS = sorted(n for n, a in ALGORITHMS.items() if a.gpu and a.gpu.startswith("cuml."))


def test_every_cuml_class_the_table_names_has_a_recorded_signature():
    assert CUML_ROWS and all(ALGORITHMS[n].gpu in CUML_SIGNATURES for n in CUML_ROWS)
    assert all(ALGORITHMS[n].gpu_params is not None for n in CUML_ROWS)  # each GPU twin knows what its class takes


@pytest.mark.parametrize("name", CUML_ROWS)
def test_what_each_gpu_class_receives_is_in_its_signature(name):
    """For every parameter a user can give (alone, and all the GPU twin honours at once): when the table sends it to
    the GPU twin, the translated keywords are ones cuML 26.10's class takes."""
    algo = ALGORITHMS[name]
    takes = set(CUML_SIGNATURES[algo.gpu])
    defaults = _cpu_defaults(algo)
    together = {k: EXAMPLE_VALUES.get(k, defaults.get(k)) for k in algo.gpu_params | algo.gpu_only}
    cases = [{k: v} for k, v in defaults.items()] + [{k: v} for k, v in together.items()] + [together]
    assert algo.gpu_gap(together) is None  # everything the GPU twin honours, at once, does reach it
    for params in cases:
        if algo.gpu_gap(params) is None:
            handed = {**algo.translate(params, "gpu"), "output_type": "cupy"}
            assert set(handed) <= takes, (params, sorted(set(handed) - takes))


def test_gpu_pca_takes_no_seed_and_sklearn_only_settings_run_on_the_cpu_twin(caplog):
    """cuML 26.10's PCA has no random_state (its solvers are exact); KMeans has no algorithm or copy_x: those run on
    the CPU twin, with a log line, instead of failing on the GPU."""
    fake_gpu = Backend("gpu", np, scipy.special)
    pca = ALGORITHMS["pca"]
    assert pca.gpu_gap({"n_components": 5, "random_state": 0}) is None
    assert "random_state" not in pca.translate({"n_components": 5, "random_state": 0}, "gpu")
    assert pca.translate({"n_components": 5, "random_state": 0}, "cpu")["random_state"] == 0
    assert "svd_solver randomized" in pca.gpu_gap({"svd_solver": "randomized"})
    for params in ({"algorithm": "elkan"}, {"copy_x": False}, {"init": "k-means++", "algorithm": "lloyd"}):
        built = make_estimator("kmeans", fake_gpu, n_clusters=3, **params)
        assert built.twin == "cpu" and type(built.obj).__module__.startswith("sklearn")
    assert "kmeans: the GPU twin lacks parameter(s) algorithm" in caplog.text
    assert ALGORITHMS["kmeans"].gpu_gap({"n_clusters": 3, "init": "random", "n_init": 4}) is None


def test_an_unknown_keyword_names_the_ones_the_estimator_takes():
    with pytest.raises(UserError, match=r"kmeans: KMeans has no parameter nonsense; it takes .*n_clusters"):
        make_estimator("kmeans", resolve_backend("cpu"), n_clusters=3, nonsense=1)
    # cuML's own graph settings are known keywords (the CPU twin drops them), not typos
    assert make_estimator("umap", resolve_backend("cpu"), build_algo="nn_descent").twin == "cpu"


def test_an_error_while_building_is_internal_not_bad_input(monkeypatch):
    """A keyword of ours that the class lacks (as cuML's PCA lacked random_state) is a bug: it surfaces as itself,
    exit 1 with a traceback, and is never worded as the user's mistake."""
    from dataclasses import replace

    broken = replace(ALGORITHMS["kmeans"], translate=lambda p, twin: {**p, "made_up_by_us": 1})
    monkeypatch.setitem(ALGORITHMS, "kmeans", broken)
    with pytest.raises(TypeError, match="made_up_by_us"):
        make_estimator("kmeans", resolve_backend("cpu"), n_clusters=3)


def test_recorded_signatures_match_the_installed_cuml():
    """Where cuML imports, its classes' real signatures must be the recorded ones (a new cuML release shows here)."""
    pytest.importorskip("cuml")
    from gpuclust.backend import _resolve, accepted_keywords

    for name in CUML_ROWS:
        algo = ALGORITHMS[name]
        cls = _resolve(algo.gpu, algo, "gpu")
        assert accepted_keywords(cls) == frozenset(CUML_SIGNATURES[algo.gpu]), name


def test_multi_gpu_kmeans_hands_cumls_dask_class_only_keywords_it_takes():
    """cuml.dask's KMeans forwards its keywords to cuML's KMeans on the workers, where a wrong one fails only at fit."""
    algo = ALGORITHMS["kmeans"]
    together = {k: EXAMPLE_VALUES.get(k, 1) for k in algo.gpu_params} | {"init": "scalable-k-means++"}
    assert algo.gpu_gap(together) is None
    assert set(algo.translate(together, "gpu")) <= set(CUML_SIGNATURES["cuml.dask.cluster.KMeans"])


def test_cumls_own_settings_tune_the_gpu_twin_and_are_dropped_on_the_cpu(caplog):
    import logging

    caplog.set_level(logging.INFO, logger="gpuclust.backend")
    fake_gpu = Backend("gpu", np, scipy.special)
    for name, params in [("kmeans", {"n_clusters": 3, "oversampling_factor": 4.0, "init": "scalable-k-means++"}),
                         ("hdbscan", {"build_algo": "nn_descent"}), ("dbscan", {"max_mbytes_per_batch": 512})]:
        assert ALGORITHMS[name].gpu_gap(params) is None  # the GPU twin takes them
        built = make_estimator(name, resolve_backend("cpu"), **params)
        assert built.twin == "cpu" and not set(built.params) & ALGORITHMS[name].gpu_only
    assert make_estimator("kmeans", resolve_backend("cpu"), init="k-means||").params["init"] == "k-means++"
    assert "kmeans: oversampling_factor apply to cuML only" in caplog.text
    assert make_estimator("kmeans", fake_gpu, n_clusters=3, algorithm="elkan", oversampling_factor=2.0).twin == "cpu"
