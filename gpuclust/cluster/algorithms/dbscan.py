"""DBSCAN: scikit-learn (CPU) and cuML (GPU: euclidean and cosine). Finds k; noise is -1."""
from __future__ import annotations

from ...backend import Algorithm, Backend, register
from ..checks import check_at_least_1, check_metric, check_range


def _gap(p: dict) -> str | None:
    return None if p.get("metric", "euclidean") in ("euclidean", "l2", "cosine") else f"metric {p['metric']}"


def _check(p: dict) -> None:
    check_range(p, "eps", 1e-300, float("inf"), "must be > 0")
    check_at_least_1(p, "min_samples")
    check_metric(p)


def _prepare(backend: Backend, Z, p: dict) -> tuple:
    return Z.copy(), p, {}  # cuML's cosine DBSCAN rewrites its input in place; Z may share memory with torch's


DBSCAN = register(Algorithm(
    "dbscan",
    "sklearn.cluster.DBSCAN",
    "cuml.cluster.DBSCAN",
    gpu_params=frozenset({"eps", "min_samples", "metric"}),
    gpu_check=_gap,
    gpu_only=frozenset({"max_mbytes_per_batch"}),
    notes="cuML: euclidean and cosine; its cosine path rewrites the input, so the stage passes a copy",
    help="DBSCAN (eps, min_samples, metric); noise -1; sklearn / cuML (euclidean, cosine)",
    check=_check,
    prepare=_prepare,
))
