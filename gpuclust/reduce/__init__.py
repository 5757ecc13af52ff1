"""The reduce stage: embeddings -> a lower-dimensional space to cluster in (none, PCA, UMAP)."""
from __future__ import annotations

import logging

from ..backend import Backend, make_estimator
from ..errors import UserError

log = logging.getLogger(__name__)

# The study's UMAP: 50 dimensions, 30 neighbours, min_dist 0.
UMAP_DEFAULTS = {"n_neighbors": 30, "min_dist": 0.0, "metric": "euclidean"}

REDUCERS = {
    "none": "keep the embeddings as they are",
    "pca": "PCA to --dims components (sklearn / cuML)",
    "umap": "UMAP to --dims components, n_neighbors 30, min_dist 0 (umap-learn / cuML)",
}


def reduce(X, method: str, dims: int, params: dict, backend: Backend, seed: int = 0):
    """Returns (Z, twin) where twin is the backend that ran the step ("none" when nothing ran)."""
    if method not in REDUCERS:
        raise UserError(f"unknown reducer {method!r}; known: {', '.join(REDUCERS)}")
    if method == "none":
        return X, "none"
    n, d = X.shape
    if dims < 1:
        raise UserError(f"--dims {dims}: must be at least 1")
    if method == "pca":
        if dims > min(n, d):
            raise UserError(f"--dims {dims}: PCA can keep at most min(rows, features) = {min(n, d)} components")
        est = make_estimator("pca", backend, n_components=dims, **params)
        return est.call("fit_transform", backend, X), est.twin
    return umap(X, dims, params, backend, seed)


def umap(X, dims: int, params: dict, backend: Backend, seed: int = 0):
    n = X.shape[0]
    p = {**UMAP_DEFAULTS, **params}
    if n <= dims + 1:
        raise UserError(f"UMAP to {dims} dimensions needs more than {dims + 1} rows; the data has {n} (lower --dims)")
    if p["n_neighbors"] >= n:
        log.warning("umap: n_neighbors %d >= %d rows; using %d", p["n_neighbors"], n, n - 1)
        p["n_neighbors"] = n - 1
    p.setdefault("random_state", seed)
    est = make_estimator("umap", backend, n_components=dims, **p)
    Z = est.call("fit_transform", backend, X)
    return backend.xp.asarray(Z, dtype=backend.xp.float32), est.twin
