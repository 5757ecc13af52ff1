"""KMeans: scikit-learn (CPU) and cuML (GPU)."""
from __future__ import annotations

import logging

from ...backend import Algorithm, register
from ..checks import check_at_least_1

log = logging.getLogger("gpuclust.cluster")

# cuML's names for its k-means++ variants; the CPU twin runs scikit-learn's k-means++ for them.
CUML_KMEANS_INITS = ("scalable-k-means++", "k-means||")


def _translate(params: dict, twin: str) -> dict:
    p = dict(params)
    p.setdefault("n_init", 1)
    if twin == "cpu" and p.get("init") in CUML_KMEANS_INITS:
        log.info("kmeans: init %s is cuML's; the CPU twin runs scikit-learn's k-means++", p["init"])
        p["init"] = "k-means++"
    return p


def _gap(p: dict) -> str | None:
    init = p.get("init", "k-means++")
    if isinstance(init, str) and init not in ("k-means++", "random", *CUML_KMEANS_INITS):
        return f"init {init}"  # (scikit-learn's names; a callable init is scikit-learn's alone)
    return None if isinstance(init, str) or hasattr(init, "shape") else "a callable init"


def _check(p: dict) -> None:
    check_at_least_1(p, "n_init", "max_iter")


KMEANS = register(Algorithm(
    "kmeans",
    "sklearn.cluster.KMeans",
    "cuml.cluster.KMeans",
    translate=_translate,
    gpu_params=frozenset({"n_clusters", "init", "n_init", "max_iter", "tol", "random_state"}),
    gpu_check=_gap,
    gpu_only=frozenset({"oversampling_factor", "max_samples_per_batch"}),
    notes="cuML has no algorithm or copy_x (those run on the CPU twin)",
    help="KMeans, --k clusters (default: number of classes); sklearn / cuML",
    k_param="n_clusters",
    seeded=True,
    check=_check,
))
