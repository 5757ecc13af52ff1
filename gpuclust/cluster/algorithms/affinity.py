"""Affinity Propagation: scikit-learn (CPU) and ours in CuPy (GPU; cuML has none). Finds k."""
from __future__ import annotations

from ...backend import Algorithm, register
from ..checks import check_at_least_1, check_range


def _translate(params: dict, twin: str) -> dict:
    return {**params, "xp": "cupy"} if twin == "gpu" else dict(params)


def _check(p: dict) -> None:
    check_range(p, "damping", 0.5, 1.0, "must be in [0.5, 1)")
    check_at_least_1(p, "max_iter", "convergence_iter")


AFFINITY = register(Algorithm(
    "affinity",
    "sklearn.cluster.AffinityPropagation",
    "gpuclust.cluster.affinity.AffinityPropagationXP",
    translate=_translate,
    gpu_params=frozenset({"damping", "max_iter", "convergence_iter", "preference", "random_state"}),
    notes="cuML has none: our CuPy implementation (gpuclust/cluster/affinity.py)",
    help="Affinity Propagation (damping, preference, ...); sklearn / CuPy (ours)",
    seeded=True,
    check=_check,
))
