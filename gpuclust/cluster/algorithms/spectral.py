"""Spectral clustering on a nearest-neighbour affinity: scikit-learn (CPU) and cuML 25.12+ (GPU)."""
from __future__ import annotations

import logging
import warnings

from ...backend import Algorithm, register
from ...errors import UserError
from ..checks import check_at_least_1

log = logging.getLogger("gpuclust.cluster")


def _translate(params: dict, twin: str) -> dict:
    p = dict(params)
    p.setdefault("affinity", "nearest_neighbors")  # the study's choice; sklearn's default (rbf) is O(n^2) dense
    if twin == "cpu":
        p.setdefault("assign_labels", "kmeans")  # what cuML always does
    else:
        p.pop("assign_labels", None)
    return p


def _gap(p: dict) -> str | None:
    if p.get("affinity", "nearest_neighbors") != "nearest_neighbors":
        return f"affinity {p['affinity']}"
    if p.get("assign_labels", "kmeans") != "kmeans":
        return f"assign_labels {p['assign_labels']}"
    return None


def _check(p: dict) -> None:
    check_at_least_1(p, "n_neighbors")
    if p.get("assign_labels", "kmeans") not in ("kmeans", "discretize", "cluster_qr"):
        raise UserError(f"--cluster-param assign_labels={p['assign_labels']}: kmeans, discretize or cluster_qr")


def _on_warnings(caught: list, params: dict) -> None:
    """The fit's warnings, passed on as they came, except scikit-learn's disconnected-graph warning, which becomes
    a log line that says what it means and what to change. (On digits' UMAP space the 10-neighbour graph is in 16
    pieces and scores AMI 0.67; with 20 neighbours it is in 10 and scores 0.87.)"""
    for w in caught:
        if "not fully connected" in str(w.message):
            n = int(params.get("n_neighbors", 10))
            log.warning("spectral: the %d-neighbour graph of the rows falls apart into pieces, so the clusters depend "
                        "on small numerical differences; more neighbours join it (--cluster-param n_neighbors=%d)",
                        n, max(30, 2 * n))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


SPECTRAL = register(Algorithm(
    "spectral",
    "sklearn.cluster.SpectralClustering",
    "cuml.cluster.SpectralClustering",
    translate=_translate,
    gpu_params=frozenset({"n_clusters", "n_components", "random_state", "n_neighbors", "n_init", "affinity",
                          "assign_labels"}),
    gpu_check=_gap,
    notes="cuML (25.12+): nearest-neighbour affinity, k-means label assignment",
    help="Spectral, nearest-neighbour affinity, --k clusters; sklearn / cuML",
    k_param="n_clusters",
    seeded=True,
    check=_check,
    on_warnings=_on_warnings,
))
