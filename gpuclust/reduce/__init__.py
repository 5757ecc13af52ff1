"""The reduce stage: embeddings -> the space to cluster in.

In the study's order: an optional per-dimension z-score (on by default before PCA, as the study did), the reducer
(none, PCA by components or by variance kept, UMAP), then an optional normalisation of the result (L2, z-score or the
study's spherical z-score).
"""
from __future__ import annotations

import logging

from ..backend import Backend, make_estimator
from ..errors import UserError

log = logging.getLogger(__name__)

# The study's UMAP: 50 dimensions, 30 neighbours, min_dist 0.
UMAP_DEFAULTS = {"n_neighbors": 30, "min_dist": 0.0, "metric": "euclidean"}

REDUCERS = {
    "none": "keep the embeddings as they are",
    "zscore": "per-dimension z-score only",
    "pca": "PCA to --dims components, or to the variance kept when 0 < --dims < 1; z-scored first (sklearn / cuML)",
    "umap": "UMAP to --dims components, n_neighbors 30, min_dist 0 (umap-learn / cuML)",
}
NORMALIZE = {
    "none": "leave the reduced space as it is",
    "l2": "each row scaled to unit length",
    "zscore": "each dimension to zero mean and unit variance",
    "spherical": "the study's spherical z-score: centred, divided by the mean per-dimension std",
}


def zscore(xp, X):
    """Per-dimension z-score; constant dimensions become 0 (as in the study)."""
    X = X - X.mean(axis=0)
    std = X.std(axis=0)
    return X / xp.where(std > 0, std, 1.0)


def normalize(backend: Backend, Z, how: str):
    xp = backend.xp
    if how == "none":
        return Z
    if how == "l2":
        return Z / xp.maximum(xp.linalg.norm(Z, axis=1, keepdims=True), 1e-12)
    if how == "zscore":
        return zscore(xp, Z)
    if how == "spherical":
        Z = Z - Z.mean(axis=0)
        return Z / xp.maximum(Z.std(axis=0).mean(), 1e-12)
    raise UserError(f"--normalize {how}: choose one of {', '.join(NORMALIZE)}")


def reduce(X, method: str, dims: int | float, params: dict, backend: Backend, seed: int = 0,
           zscore_first: bool | None = None, post: str = "none"):
    """Returns (Z, twin) where twin is the backend that ran the reducer ("none" when only arithmetic ran).

    `zscore_first=None` z-scores before PCA only, the study's default.
    """
    if method not in REDUCERS:
        raise UserError(f"unknown reducer {method!r}; known: {', '.join(REDUCERS)}")
    if post not in NORMALIZE:
        raise UserError(f"--normalize {post}: choose one of {', '.join(NORMALIZE)}")
    xp = backend.xp
    if method == "zscore" or (zscore_first if zscore_first is not None else method == "pca"):
        X = zscore(xp, X)
    twin = "none"
    if method == "pca":
        X, twin = pca(X, dims, params, backend)
    elif method == "umap":
        X, twin = umap(X, dims, params, backend, seed)
    return normalize(backend, X, post), twin


def pca(X, dims: int | float, params: dict, backend: Backend):
    """PCA to `dims` components, or (0 < dims < 1) to the fewest components that keep that share of variance."""
    n, d = X.shape
    full = min(n, d)
    if 0 < dims < 1:
        est = make_estimator("pca", backend, n_components=full, **params)
        Z = est.call("fit_transform", backend, X)
        ratio = backend.xp.cumsum(backend.xp.asarray(est.obj.explained_variance_ratio_))
        keep = int((ratio < dims).sum()) + 1
        log.info("pca: %d components keep %.1f%% of the variance", keep, 100 * dims)
        return Z[:, : min(keep, full)], est.twin
    if dims != int(dims) or dims < 1:
        raise UserError(f"--dims {dims}: a whole number of components, or a share of variance in (0, 1)")
    if dims > full:
        raise UserError(f"--dims {dims}: PCA can keep at most min(rows, features) = {full} components")
    est = make_estimator("pca", backend, n_components=int(dims), **params)
    return est.call("fit_transform", backend, X), est.twin


def umap(X, dims: int, params: dict, backend: Backend, seed: int = 0):
    n = X.shape[0]
    if dims != int(dims) or dims < 1:
        raise UserError(f"--dims {dims}: UMAP needs a whole number of dimensions, at least 1")
    dims = int(dims)
    p = {**UMAP_DEFAULTS, **params}
    if n <= dims + 1:
        raise UserError(f"UMAP to {dims} dimensions needs more than {dims + 1} rows; the data has {n} (lower --dims)")
    if p["n_neighbors"] >= n:
        log.warning("umap: n_neighbors %d >= %d rows; using %d", p["n_neighbors"], n, n - 1)
        p["n_neighbors"] = n - 1
    p.setdefault("random_state", seed)
    knn = p.pop("knn", "auto")
    if knn == "faiss":  # an exact kNN graph from faiss in place of the library's own (nn-descent or brute force)
        from .knn import faiss_knn

        if p.get("metric", "euclidean") != "euclidean":
            raise UserError(f"--reduce-param knn=faiss computes euclidean neighbours; metric {p['metric']} "
                            "needs knn=auto")
        idx, dist = faiss_knn(X, int(p["n_neighbors"]), backend)
        p["precomputed_knn"] = (idx, dist) if backend.is_gpu else (backend.to_host(idx), backend.to_host(dist), None)
    elif knn != "auto":
        raise UserError(f"--reduce-param knn={knn}: auto (the UMAP library's own) or faiss")
    est = make_estimator("umap", backend, n_components=dims, **p)
    Z = est.call("fit_transform", backend, X)
    return backend.xp.asarray(Z, dtype=backend.xp.float32), est.twin
