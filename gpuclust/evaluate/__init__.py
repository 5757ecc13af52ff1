"""The evaluate stage: labels (+ truth when known) -> metrics, all computed on the backend's device."""
from __future__ import annotations

import logging

from ..backend import Backend, make_estimator
from .metrics import ami, ari, label_metrics, nmi

log = logging.getLogger(__name__)

__all__ = ["evaluate", "silhouette", "label_metrics", "ami", "ari", "nmi", "SILHOUETTE_MAX_EXACT"]

# Exact silhouette is O(n^2); above this many rows it is computed on a seeded sample of this size.
SILHOUETTE_MAX_EXACT = {"cpu": 30_000, "gpu": 100_000}


def silhouette(backend: Backend, X, labels, seed: int = 0, metric: str = "euclidean"):
    """Mean silhouette of the clustered (non-noise) rows; (value or None when undefined, rows used)."""
    xp = backend.xp
    keep = labels >= 0
    X, labels = X[keep], labels[keep]
    n = int(labels.shape[0])
    n_labels = int(xp.unique(labels).shape[0])
    if n_labels < 2 or n_labels > n - 1:
        return None, n
    limit = SILHOUETTE_MAX_EXACT[backend.name]
    if n > limit:
        idx = xp.sort(xp.random.RandomState(seed).permutation(n)[:limit])
        X, labels = X[idx], labels[idx]
        if int(xp.unique(labels).shape[0]) < 2:
            return None, limit
        n = limit
    fn = make_estimator("silhouette", backend)
    return float(fn.call(None, backend, X, labels, metric=metric)), n


def evaluate(backend: Backend, Z, labels_pred, labels_true=None, Z_umap=None, seed: int = 0) -> dict:
    """Flat metrics: label metrics when truth is known, label-free ones always.

    `Z` is the space that was clustered; `Z_umap` the UMAP space for the study's label-free proxy (None: skip).
    """
    xp = backend.xp
    noise = labels_pred < 0
    clusters = xp.unique(labels_pred[~noise])
    m: dict = {
        "n_rows": int(labels_pred.shape[0]),
        "n_clusters": int(clusters.shape[0]),
        "noise_fraction": float(noise.mean()),
    }
    if labels_true is not None:
        # Noise stays one cluster of its own (label -1), as in the study.
        m.update(label_metrics(backend, labels_true, labels_pred))
        m["n_classes"] = int(xp.unique(labels_true).shape[0])
    m["silhouette"], m["silhouette_rows"] = silhouette(backend, Z, labels_pred, seed)
    if Z_umap is not None:
        if Z_umap is Z:
            m["silhouette_umap"] = m["silhouette"]
        else:
            m["silhouette_umap"], _ = silhouette(backend, Z_umap, labels_pred, seed)
    return m
