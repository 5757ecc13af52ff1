"""The reducers' twin records: PCA and UMAP on scikit-learn/umap-learn (CPU) and cuML (GPU)."""
from __future__ import annotations

from ..backend import Algorithm, register

# cuML's PCA solvers (26.10: auto/full, both a full eigendecomposition of the covariance, and jacobi) are exact; its
# PCA has no randomized solver and so no random_state.
CUML_PCA_SOLVERS = ("auto", "full")

# cuML's settings for how UMAP's neighbour graph is built; umap-learn has no such parameters.
CUML_UMAP_GRAPH_PARAMS = ("build_algo", "build_kwds")

# cuML UMAP's dense metrics (its umap_utils _METRICS and _SUPPORTED_METRICS, 26.x): every one with the exact kNN
# (brute_force_knn), a few with nn_descent. Other umap-learn metrics run on the CPU twin.
CUML_UMAP_METRICS = frozenset({"l2", "euclidean", "sqeuclidean", "cityblock", "l1", "manhattan", "taxicab",
                               "minkowski", "chebyshev", "linf", "cosine", "correlation", "hellinger", "hamming",
                               "canberra"})
CUML_NN_DESCENT_METRICS = frozenset({"l2", "euclidean", "sqeuclidean", "cosine"})


def _pca_params(params: dict, twin: str) -> dict:
    p = dict(params)
    if twin == "gpu":
        p.pop("random_state", None)  # seeds scikit-learn's randomized solver; cuML's solvers are exact
    return p


def _pca_gap(p: dict) -> str | None:
    solver = p.get("svd_solver", "auto")
    return None if solver in CUML_PCA_SOLVERS else f"svd_solver {solver}"


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


def _umap_gap(p: dict) -> str | None:
    metric = str(p.get("metric", "euclidean")).lower()
    if metric not in CUML_UMAP_METRICS:
        return f"metric {metric}"
    if p.get("build_algo") == "nn_descent" and metric not in CUML_NN_DESCENT_METRICS:
        return f"metric {metric} with build_algo=nn_descent"
    if p.get("init", "spectral") not in ("spectral", "random"):
        return f"init {p['init']}"
    return None


PCA = register(Algorithm(
    "pca",
    "sklearn.decomposition.PCA",
    "cuml.decomposition.PCA",
    translate=_pca_params,
    gpu_params=frozenset({"n_components", "whiten", "copy", "svd_solver", "random_state"}),
    gpu_check=_pca_gap,
    notes="cuML: exact solvers only (a randomized or arpack svd_solver runs on the CPU twin)",
    stage="reduce",
    help="PCA to --dims components, or to a share of variance (0 < dims < 1)",
    seeded=True,
))

UMAP = register(Algorithm(
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
    stage="reduce",
    help="UMAP to --dims (default 50), n_neighbors 30, min_dist 0 (the study's), 200 epochs",
    seeded=True,
))
