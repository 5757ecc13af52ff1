"""HDBSCAN: scikit-learn (CPU) and cuML (GPU, euclidean). Finds k; noise is -1."""
from __future__ import annotations

import logging

from ...backend import Algorithm, register
from ..checks import check_at_least_1, check_choice, check_metric, check_range

log = logging.getLogger("gpuclust.cluster")

CUML_HDBSCAN_MAX_MIN_SAMPLES = 1023  # cuML's HDBSCAN.fit requires 1 <= min_samples <= 1023 (its own convention)


def _translate(params: dict, twin: str) -> dict:
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


def _gap(p: dict) -> str | None:
    if p.get("metric", "euclidean") not in ("euclidean", "l2"):
        return "metrics other than euclidean"
    ms = p.get("min_samples")
    ms = p.get("min_cluster_size", 5) if ms is None else ms
    if int(ms) - 1 > CUML_HDBSCAN_MAX_MIN_SAMPLES:  # what the GPU twin would receive (see _translate)
        return f"min_samples {ms} (cuML allows up to {CUML_HDBSCAN_MAX_MIN_SAMPLES + 1} in scikit-learn's counting)"
    return None


def _check(p: dict) -> None:
    check_range(p, "min_cluster_size", 2, float("inf"), "must be at least 2")
    check_at_least_1(p, "min_samples")
    check_metric(p)
    check_choice(p, "cluster_selection_method", "eom", ("eom", "leaf"))


HDBSCAN = register(Algorithm(
    "hdbscan",
    "sklearn.cluster.HDBSCAN",
    "cuml.cluster.hdbscan.HDBSCAN",
    translate=_translate,
    gpu_params=frozenset(
        {"min_cluster_size", "min_samples", "cluster_selection_epsilon", "cluster_selection_method",
         "max_cluster_size", "alpha", "allow_single_cluster", "metric"}
    ),
    gpu_check=_gap,
    gpu_only=frozenset({"build_algo", "build_kwds"}),
    notes="cuML is euclidean only; min_samples translated (see _translate)",
    help="HDBSCAN, finds k; noise -1; sklearn / cuML (euclidean)",
    check=_check,
))
