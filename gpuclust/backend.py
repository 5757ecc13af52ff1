"""The backend: numpy + scikit-learn/umap-learn (CPU twin) or CuPy + cuML (GPU twin), chosen once per run.

Stage code is written once against `backend.xp` and builds estimators through `make_estimator`, which reads the
twin table `ALGORITHMS`. Nothing outside this module and the report decides between host and device.
"""
from __future__ import annotations

import functools
import inspect
import logging
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable

import numpy as np

from .errors import UserError, require

log = logging.getLogger(__name__)

GPU_INSTALL = "pip install 'gpuclust[gpu]' (or conda: see environment.yml)"


@dataclass(frozen=True)
class Backend:
    """Array module and friends for one twin. `name` is "cpu" or "gpu"."""

    name: str
    xp: ModuleType
    special: ModuleType  # scipy.special or cupyx.scipy.special (gammaln for AMI)

    @property
    def is_gpu(self) -> bool:
        return self.name == "gpu"

    @property
    def torch_device(self) -> str:
        return "cuda" if self.is_gpu else "cpu"

    def asarray(self, x: Any, dtype: Any = None):
        return self.xp.asarray(x, dtype=dtype)

    def from_torch(self, tensor):
        """Torch tensor -> xp array without a host copy on the GPU (DLPack)."""
        if self.is_gpu:
            import torch

            # cupy reads the memory on its own stream: finish torch's kernels first.
            torch.cuda.current_stream(tensor.device).synchronize()
            return self.xp.from_dlpack(tensor.detach())
        return tensor.detach().cpu().numpy()

    def to_host(self, x: Any) -> Any:
        """xp array or scalar -> numpy array or Python scalar. Used only where results leave the pipeline."""
        if hasattr(x, "__cuda_array_interface__"):
            x = x.get()
        if isinstance(x, np.generic) or (isinstance(x, np.ndarray) and x.ndim == 0):
            return x.item()
        return x

    def synchronize(self) -> None:
        if self.is_gpu:
            self.xp.cuda.Device().synchronize()


def cpu_backend() -> Backend:
    import scipy.special

    return Backend("cpu", np, scipy.special)


def gpu_available() -> tuple[bool, str]:
    """(usable, reason). Usable means CuPy sees a CUDA device and cuML imports."""
    try:
        import cupy
    except ImportError:
        return False, f"--device gpu needs CuPy and cuML, which are not installed: {GPU_INSTALL}"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception:  # cupy raises CUDARuntimeError without a driver
        n = 0
    if n == 0:
        return False, "--device gpu needs a CUDA GPU, and none is visible (check nvidia-smi and CUDA_VISIBLE_DEVICES)"
    try:
        import cuml  # noqa: F401
    except ImportError:
        return False, f"--device gpu needs cuML, which is not installed: {GPU_INSTALL}"
    return True, ""


def gpu_backend() -> Backend:
    ok, reason = gpu_available()
    if not ok:
        raise UserError(reason)
    import cupy
    import cupyx.scipy.special

    return Backend("gpu", cupy, cupyx.scipy.special)


def resolve_backend(device: str) -> Backend:
    """`auto` picks the GPU twin when it can run, else the CPU twin; `gpu` insists; `cpu` never touches CUDA."""
    if device == "cpu":
        return cpu_backend()
    if device == "gpu":
        return gpu_backend()
    if device == "auto":
        ok, reason = gpu_available()
        if ok:
            return gpu_backend()
        log.info("device auto: CPU twin (%s)", reason.split(",")[0])
        return cpu_backend()
    raise UserError(f"unknown --device {device!r}: choose auto, cpu or gpu")


# ----------------------------------------------------------------------------------------------------------------
# The twin table: one row per algorithm.


def _same(params: dict, twin: str) -> dict:
    return dict(params)


def _hdbscan_params(params: dict, twin: str) -> dict:
    """sklearn counts the point itself among its `min_samples` neighbours; cuML (like the hdbscan library) does not.

    Users speak sklearn's convention everywhere; the GPU twin receives min_samples - 1 so both compute the same
    core distances. sklearn's default (None -> min_cluster_size) is made explicit first so the shift applies to it.
    """
    p = dict(params)
    p.setdefault("min_cluster_size", 5)
    if p.get("min_samples") is None:
        p["min_samples"] = p["min_cluster_size"]
    if twin == "cpu":
        p.setdefault("copy", True)  # never let sklearn modify the caller's array
    if twin == "gpu":
        if int(p["min_samples"]) <= 1:
            log.warning("hdbscan: sklearn's min_samples=1 has no cuML equivalent; the GPU twin uses its minimum, 1")
        p["min_samples"] = max(1, int(p["min_samples"]) - 1)
        if p.get("max_cluster_size", 0) is None:  # sklearn's "no limit" is None, cuML's is 0 (a C int)
            p["max_cluster_size"] = 0
    return p


# cuML's settings for how UMAP's neighbour graph is built; umap-learn has no such parameters.
CUML_UMAP_GRAPH_PARAMS = ("build_algo", "build_kwds")


def _umap_params(params: dict, twin: str) -> dict:
    p = dict(params)  # (build_algo/build_kwds never reach the CPU twin: make_estimator drops `gpu_only` there)
    if twin == "cpu":
        if p.get("random_state") is not None:
            p.setdefault("n_jobs", 1)  # umap-learn runs single-threaded when seeded; saying so avoids its warning
        return p
    metric = str(p.get("metric", "euclidean")).lower()
    if p.get("build_algo", "auto") == "auto" and metric not in CUML_NN_DESCENT_METRICS:
        # cuML's "auto" takes nn_descent above 50,000 unseeded rows, which refuses these metrics: search exactly.
        p["build_algo"] = "brute_force_knn"
    return p


# cuML's names for its k-means++ variants; the CPU twin runs scikit-learn's k-means++ for them.
CUML_KMEANS_INITS = ("scalable-k-means++", "k-means||")


def _kmeans_params(params: dict, twin: str) -> dict:
    p = dict(params)
    p.setdefault("n_init", 1)
    if twin == "cpu" and p.get("init") in CUML_KMEANS_INITS:
        log.info("kmeans: init %s is cuML's; the CPU twin runs scikit-learn's k-means++", p["init"])
        p["init"] = "k-means++"
    return p


# cuML's PCA solvers (26.10: auto/full, both a full eigendecomposition of the covariance, and jacobi) are exact; its
# PCA has no randomized solver and so no random_state.
CUML_PCA_SOLVERS = ("auto", "full")


def _pca_params(params: dict, twin: str) -> dict:
    p = dict(params)
    if twin == "gpu":
        p.pop("random_state", None)  # seeds scikit-learn's randomized solver; cuML's solvers are exact
    return p


def _pca_gap(p: dict) -> str | None:
    solver = p.get("svd_solver", "auto")
    return None if solver in CUML_PCA_SOLVERS else f"svd_solver {solver}"


def _kmeans_gap(p: dict) -> str | None:
    init = p.get("init", "k-means++")
    if isinstance(init, str) and init not in ("k-means++", "random", *CUML_KMEANS_INITS):
        return f"init {init}"  # (scikit-learn's names; a callable init is scikit-learn's alone)
    return None if isinstance(init, str) or hasattr(init, "shape") else "a callable init"


def _faiss_kmeans_params(params: dict, twin: str) -> dict:
    p = dict(params)
    p["gpu"] = twin == "gpu"
    return p


def _faiss_gpu_gap(p: dict) -> str | None:
    from .cluster.faiss_kmeans import faiss_gpus

    return None if faiss_gpus() > 0 else "a GPU build of faiss"


def _agglomerative_params(params: dict, twin: str) -> dict:
    p = dict(params)
    p.setdefault("linkage", "ward")
    p.setdefault("metric", "euclidean")
    if twin == "gpu":
        p.pop("distance_threshold", None)  # only reaches the GPU twin when None (see _agglomerative_gap)
        # cuML's default connectivity ("knn") takes euclidean only; its full pairwise graph takes l1 and cosine
        # too (cuML's AgglomerativeClustering docstring). The cluster stage sends cosine single linkage as
        # euclidean on unit rows (cluster.unit_rows), so in a run only l1 needs the n^2 graph.
        if p["metric"] not in ("euclidean", "l2"):
            p["connectivity"] = "pairwise"
    return p


def _affinity_params(params: dict, twin: str) -> dict:
    p = dict(params)
    if twin == "gpu":
        p["xp"] = "cupy"
    return p


def _spectral_params(params: dict, twin: str) -> dict:
    p = dict(params)
    p.setdefault("affinity", "nearest_neighbors")  # the study's choice; sklearn's default (rbf) is O(n^2) dense
    if twin == "cpu":
        p.setdefault("assign_labels", "kmeans")  # what cuML always does
    else:
        p.pop("assign_labels", None)
    return p


_CUML_AGGLO_METRICS = {"euclidean", "l2", "l1", "cityblock", "manhattan", "cosine"}


CUML_HDBSCAN_MAX_MIN_SAMPLES = 1023  # cuML's HDBSCAN.fit requires 1 <= min_samples <= 1023 (its own convention)


def _hdbscan_gap(p: dict) -> str | None:
    if p.get("metric", "euclidean") not in ("euclidean", "l2"):
        return "metrics other than euclidean"
    ms = p.get("min_samples")
    ms = p.get("min_cluster_size", 5) if ms is None else ms
    if int(ms) - 1 > CUML_HDBSCAN_MAX_MIN_SAMPLES:  # what the GPU twin would receive (see _hdbscan_params)
        return f"min_samples {ms} (cuML allows up to {CUML_HDBSCAN_MAX_MIN_SAMPLES + 1} in scikit-learn's counting)"
    return None


def _agglomerative_gap(p: dict) -> str | None:
    if p.get("linkage", "ward") != "single":
        return f"{p.get('linkage', 'ward')} linkage (cuML has single linkage only)"
    if p.get("distance_threshold") is not None:
        return "distance_threshold"
    if p.get("metric", "euclidean") not in _CUML_AGGLO_METRICS:
        return f"metric {p['metric']}"
    return None


# cuML UMAP's dense metrics (its umap_utils _METRICS and _SUPPORTED_METRICS, 26.x): every one with the exact kNN
# (brute_force_knn), a few with nn_descent. Other umap-learn metrics run on the CPU twin.
CUML_UMAP_METRICS = frozenset({"l2", "euclidean", "sqeuclidean", "cityblock", "l1", "manhattan", "taxicab",
                               "minkowski", "chebyshev", "linf", "cosine", "correlation", "hellinger", "hamming",
                               "canberra"})
CUML_NN_DESCENT_METRICS = frozenset({"l2", "euclidean", "sqeuclidean", "cosine"})


def _umap_gap(p: dict) -> str | None:
    metric = str(p.get("metric", "euclidean")).lower()
    if metric not in CUML_UMAP_METRICS:
        return f"metric {metric}"
    if p.get("build_algo") == "nn_descent" and metric not in CUML_NN_DESCENT_METRICS:
        return f"metric {metric} with build_algo=nn_descent"
    if p.get("init", "spectral") not in ("spectral", "random"):
        return f"init {p['init']}"
    return None


def _dbscan_gap(p: dict) -> str | None:
    return None if p.get("metric", "euclidean") in ("euclidean", "l2", "cosine") else f"metric {p['metric']}"


def _spectral_gap(p: dict) -> str | None:
    if p.get("affinity", "nearest_neighbors") != "nearest_neighbors":
        return f"affinity {p['affinity']}"
    if p.get("assign_labels", "kmeans") != "kmeans":
        return f"assign_labels {p['assign_labels']}"
    return None


@dataclass(frozen=True)
class Algorithm:
    """A CPU/GPU pair. Dotted paths resolve lazily. Users speak the CPU twin's parameter names (scikit-learn's,
    umap-learn's); `gpu_params` lists those the GPU twin honours (None only where both twins are one class), and
    `translate` turns them into what each twin's class takes (tests check the result against cuML's signatures)."""

    name: str
    cpu: str
    gpu: str | None
    translate: Callable[[dict, str], dict] = _same
    gpu_params: frozenset[str] | None = None
    gpu_check: Callable[[dict], str | None] | None = None  # what in these values the GPU twin cannot do
    notes: str = ""
    cpu_install: str = "pip install gpuclust"
    gpu_only: frozenset[str] = frozenset()  # the GPU class's own tuning settings: honoured there, dropped on the CPU

    def gpu_gap(self, params: dict) -> str | None:
        """None when the GPU twin can run `params`, else what it lacks."""
        if self.gpu is None:
            return "a GPU implementation"
        extra = sorted(set(params) - self.gpu_params - self.gpu_only) if self.gpu_params is not None else []
        if extra:
            return "parameter(s) " + ", ".join(extra)
        return self.gpu_check(params) if self.gpu_check else None


ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in [
        Algorithm(
            "pca",
            "sklearn.decomposition.PCA",
            "cuml.decomposition.PCA",
            translate=_pca_params,
            gpu_params=frozenset({"n_components", "whiten", "copy", "svd_solver", "random_state"}),
            gpu_check=_pca_gap,
            notes="cuML: exact solvers only (a randomized or arpack svd_solver runs on the CPU twin)",
        ),
        Algorithm(
            "umap",
            "umap.UMAP",
            "cuml.manifold.UMAP",
            translate=_umap_params,
            gpu_params=frozenset(
                {"n_components", "n_neighbors", "min_dist", "metric", "random_state", "n_epochs", "init",
                 "spread", "negative_sample_rate", "learning_rate", "precomputed_knn"}
            ),
            gpu_check=_umap_gap,
            gpu_only=frozenset(CUML_UMAP_GRAPH_PARAMS),
            cpu_install="pip install umap-learn",
        ),
        Algorithm(
            "kmeans",
            "sklearn.cluster.KMeans",
            "cuml.cluster.KMeans",
            translate=_kmeans_params,
            gpu_params=frozenset({"n_clusters", "init", "n_init", "max_iter", "tol", "random_state"}),
            gpu_check=_kmeans_gap,
            gpu_only=frozenset({"oversampling_factor", "max_samples_per_batch"}),
            notes="cuML has no algorithm or copy_x (those run on the CPU twin)",
        ),
        Algorithm(
            "faiss_kmeans",
            "gpuclust.cluster.faiss_kmeans.FaissKMeans",
            "gpuclust.cluster.faiss_kmeans.FaissKMeans",
            translate=_faiss_kmeans_params,
            gpu_check=_faiss_gpu_gap,
            notes="faiss k-means (sampled training, exact assignment); GPU twin with a GPU build of faiss",
            cpu_install="pip install faiss-cpu",
        ),
        Algorithm(
            "hdbscan",
            "sklearn.cluster.HDBSCAN",
            "cuml.cluster.hdbscan.HDBSCAN",
            translate=_hdbscan_params,
            gpu_params=frozenset(
                {"min_cluster_size", "min_samples", "cluster_selection_epsilon", "cluster_selection_method",
                 "max_cluster_size", "alpha", "allow_single_cluster", "metric"}
            ),
            gpu_check=_hdbscan_gap,
            gpu_only=frozenset({"build_algo", "build_kwds"}),
            notes="cuML is euclidean only; min_samples translated (see _hdbscan_params)",
        ),
        Algorithm(
            "agglomerative",
            "sklearn.cluster.AgglomerativeClustering",
            "cuml.cluster.AgglomerativeClustering",
            translate=_agglomerative_params,
            gpu_params=frozenset({"n_clusters", "metric", "linkage", "distance_threshold"}),
            gpu_check=_agglomerative_gap,
            notes="cuML: single linkage only, no distance_threshold; other linkages run on the CPU twin",
        ),
        Algorithm(
            "dbscan",
            "sklearn.cluster.DBSCAN",
            "cuml.cluster.DBSCAN",
            gpu_params=frozenset({"eps", "min_samples", "metric"}),
            gpu_check=_dbscan_gap,
            gpu_only=frozenset({"max_mbytes_per_batch"}),
            notes="cuML: euclidean and cosine; its cosine path rewrites the input, so the stage passes a copy",
        ),
        Algorithm(
            "affinity",
            "sklearn.cluster.AffinityPropagation",
            "gpuclust.cluster.affinity.AffinityPropagationXP",
            translate=_affinity_params,
            gpu_params=frozenset({"damping", "max_iter", "convergence_iter", "preference", "random_state"}),
            notes="cuML has none: our CuPy implementation (gpuclust/cluster/affinity.py)",
        ),
        Algorithm(
            "spectral",
            "sklearn.cluster.SpectralClustering",
            "cuml.cluster.SpectralClustering",
            translate=_spectral_params,
            gpu_params=frozenset({"n_clusters", "n_components", "random_state", "n_neighbors", "n_init", "affinity",
                                  "assign_labels"}),
            gpu_check=_spectral_gap,
            notes="cuML (25.12+): nearest-neighbour affinity, k-means label assignment",
        ),
    ]
}


def _resolve(path: str, algo: Algorithm, twin: str):
    module, _, attr = path.rpartition(".")
    install = GPU_INSTALL if twin == "gpu" else algo.cpu_install
    mod = require(module, f"{algo.name} ({twin})", install)
    return getattr(mod, attr)


@dataclass
class Built:
    """An estimator and the twin that will run it."""

    obj: Any
    twin: str
    params: dict = field(default_factory=dict)

    def call(self, method: str, backend: Backend, X, *args, **kwargs):
        """`obj.method(X, ...)`. When the CPU twin stands in on a GPU run, X goes to the host for this step only and
        array results come back to the device."""
        fn = getattr(self.obj, method)
        try:
            if self.twin == backend.name:
                return fn(X, *args, **kwargs)
            host_args = [backend.to_host(a) for a in args]
            out = fn(backend.to_host(X), *host_args, **kwargs)
        except Exception as exc:
            if _is_parameter_error(exc):
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise UserError(f"{type(self.obj).__name__}: {msg}") from None
            raise
        return backend.xp.asarray(out) if isinstance(out, np.ndarray) else out


def _is_parameter_error(exc: Exception) -> bool:
    """scikit-learn's validation of a user-supplied parameter value (type or range)."""
    try:
        from sklearn.utils._param_validation import InvalidParameterError
    except ImportError:  # pragma: no cover - older scikit-learn
        return False
    return isinstance(exc, InvalidParameterError)


def device_free_bytes() -> int:
    """Free memory on the current GPU, as the driver counts it, after CuPy's default pool has handed back its cached
    blocks (RMM, which cuML allocates through, cannot use them)."""
    import sys

    import cupy

    cupy.get_default_memory_pool().free_all_blocks()
    if "torch" in sys.modules:  # blocks torch's caching allocator still holds count as used otherwise
        sys.modules["torch"].cuda.empty_cache()
    return int(cupy.cuda.runtime.memGetInfo()[0])


def planned_twin(name: str, backend: Backend, params: dict, warn: bool = False, gap: str | None = None) -> str:
    """The twin that `make_estimator` will build for these parameters: the backend's own, or the CPU twin standing
    in for a GPU twin that lacks the algorithm or one of the parameters (or `gap`, a limit the caller found)."""
    if not backend.is_gpu:
        return "cpu"
    gap = gap or ALGORITHMS[name].gpu_gap(params)  # gap checks apply sklearn's defaults themselves
    if gap and warn:
        log.warning("%s: the GPU twin lacks %s; this step runs on the CPU twin", name, gap)
    return "cpu" if gap else "gpu"


def accepted_keywords(cls) -> frozenset[str] | None:
    """The keyword arguments `cls(...)` takes, from its signature; None when it takes any (**kwargs)."""
    params = inspect.signature(cls).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params
                     if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY))


@functools.lru_cache(maxsize=None)
def _user_keywords(name: str) -> tuple[str, frozenset[str] | None]:
    """(CPU class name, the keywords a user may give `name`): its CPU class's (the convention users speak on both
    twins) and the GPU class's own tuning settings; None when the class takes any."""
    algo = ALGORITHMS[name]
    cls = _resolve(algo.cpu, algo, "cpu")
    accepted = accepted_keywords(cls)
    return cls.__name__, None if accepted is None else accepted | algo.gpu_only


def check_keywords(name: str, params: dict) -> None:
    """A user's keywords against what `name` takes: one line naming the ones it lacks and the ones it takes."""
    cls_name, accepted = _user_keywords(name)
    unknown = sorted(set(params) - accepted) if accepted is not None else []
    if unknown:
        raise UserError(f"{name}: {cls_name} has no parameter {', '.join(unknown)}; it takes "
                        f"{', '.join(sorted(accepted))}")


def make_estimator(name: str, backend: Backend, *, gpu_gap: str | None = None, **params) -> Built:
    """Build `name` for `backend` from the twin table, translating parameters in one place.

    If the GPU twin lacks the algorithm or one of the requested parameters (or the caller names a `gpu_gap` that
    depends on the data, such as its size), the CPU twin is built instead and `twin` says so; the caller moves data
    to the host for that step only. Keywords are checked against the classes' signatures first; an exception while
    building is then a fault of ours, not the user's, and is left to propagate.
    """
    algo = ALGORITHMS[name]
    check_keywords(name, params)
    twin = planned_twin(name, backend, params, warn=True, gap=gpu_gap)
    dropped = sorted(set(params) & algo.gpu_only) if twin == "cpu" else []
    if dropped:  # a configuration written for the GPU still runs here: these tune cuML, not the model
        log.info("%s: %s apply to cuML only; the CPU twin runs without them", name, ", ".join(dropped))
        params = {k: v for k, v in params.items() if k not in algo.gpu_only}
    p = algo.translate(params, twin)
    path = algo.gpu if twin == "gpu" else algo.cpu
    target = _resolve(path, algo, twin)
    if path.startswith("cuml."):
        p.setdefault("output_type", "cupy")
    return Built(target(**p), twin, p)
