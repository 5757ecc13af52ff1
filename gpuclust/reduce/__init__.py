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
        X, twin = pca(X, dims, {"random_state": seed, **params}, backend)  # randomized SVD is seeded
    elif method == "umap":
        X, twin = umap(X, dims, params, backend, seed)
    return normalize(backend, X, post), twin


def pca(X, dims: int | float, params: dict, backend: Backend):
    """PCA to `dims` components, or (0 < dims < 1) to the fewest components that keep that share of variance."""
    est = fit_pca(X, dims, params, backend)
    return est.call("transform", backend, X)[:, : est.keep], est.twin


def fit_pca(X, dims: int | float, params: dict, backend: Backend):
    """The fitted PCA estimator for `dims` (components, or a share of variance); `est.keep` components are used."""
    full = min(X.shape)
    if 0 < dims < 1:
        est = make_estimator("pca", backend, n_components=full, **params)
        est.call("fit", backend, X)
        ratio = backend.xp.cumsum(backend.xp.asarray(est.obj.explained_variance_ratio_))
        est.keep = min(int((ratio < dims).sum()) + 1, full)
        log.info("pca: %d components keep %.1f%% of the variance", est.keep, 100 * dims)
        return est
    if dims != int(dims) or dims < 1:
        raise UserError(f"--dims {dims}: a whole number of components, or a share of variance in (0, 1)")
    if dims > full:
        raise UserError(f"--dims {dims}: PCA can keep at most min(rows, features) = {full} components")
    est = make_estimator("pca", backend, n_components=int(dims), **params)
    est.call("fit", backend, X)
    est.keep = int(dims)
    return est


def _umap_settings(n: int, dims, params: dict, seed: int) -> tuple[int, dict, str]:
    """(dims, estimator parameters, knn choice) for UMAP of n rows, checked."""
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
    if knn not in ("auto", "faiss"):
        raise UserError(f"--reduce-param knn={knn}: auto (the UMAP library's own) or faiss")
    if knn == "faiss" and p.get("metric", "euclidean") != "euclidean":
        raise UserError(f"--reduce-param knn=faiss computes euclidean neighbours; metric {p['metric']} "
                        "needs knn=auto")
    return dims, p, knn


def umap(X, dims: int, params: dict, backend: Backend, seed: int = 0):
    dims, p, knn = _umap_settings(X.shape[0], dims, params, seed)
    if knn == "faiss":  # an exact kNN graph from faiss in place of the library's own (nn-descent or brute force)
        from .knn import faiss_knn

        idx, dist = faiss_knn(X, int(p["n_neighbors"]), backend)
        p["precomputed_knn"] = (idx, dist) if backend.is_gpu else (backend.to_host(idx), backend.to_host(dist), None)
    est = make_estimator("umap", backend, n_components=dims, **p)
    Z = est.call("fit_transform", backend, X)
    return backend.xp.asarray(Z, dtype=backend.xp.float32), est.twin


def reduce_streamed(matrix, method: str, dims, params: dict, backend: Backend, seed: int, fit_sample: int,
                    zscore_first: bool | None = None, post: str = "none", rows=None, client=None):
    """`reduce` for embeddings read in chunks (`gpuclust.stream.RowChunks`), never held whole.

    One pass gathers the column statistics (and checks every value is finite); the reducer is fitted on
    `fit_sample` seeded rows and each chunk is transformed on its own, on the Dask workers when `client` is given
    (each reads its chunk from disk itself). UMAP keeps the fit's own layout for the sampled rows. Returns (Z, twin).
    """
    import numpy as np

    from ..stream import column_stats, sample_positions

    if method not in ("pca", "umap"):
        raise UserError(f"--fit-sample applies to --reduce pca or umap (got {method}): those can transform rows they "
                        "were not fitted on")
    if post not in NORMALIZE:
        raise UserError(f"--normalize {post}: choose one of {', '.join(NORMALIZE)}")
    xp = backend.xp
    n = matrix.n_rows
    pos = sample_positions(n, fit_sample, seed)
    mean, std, S = column_stats(matrix, backend, rows, sample=pos)  # one read of the rows for both
    shift = scale = None
    if zscore_first if zscore_first is not None else method == "pca":
        # float32 statistics, so standardising a chunk makes float32 copies of it, not float64 ones
        shift, scale = mean.astype(xp.float32), xp.where(std > 0, std, 1.0).astype(xp.float32)
    S = _standardise(xp, xp.asarray(S, dtype=xp.float32), shift, scale)
    keep = None
    if method == "pca":
        est = fit_pca(S, dims, {"random_state": seed, **params}, backend)
        keep = est.keep
    else:
        udims, p, knn = _umap_settings(len(pos), dims, params, seed)
        if knn == "faiss":
            raise UserError("--reduce-param knn=faiss cannot be combined with --fit-sample: UMAP transforms new rows "
                            "with its own neighbour index; drop one of them")
        est = make_estimator("umap", backend, n_components=udims, **p)
        est.call("fit", backend, S)
        if est.twin == "cpu" and getattr(est.obj, "_knn_search_index", None) is not None:
            from .knn import ExactQueryIndex

            # exact neighbours for the transformed rows (cuML's transform searches exactly already)
            est.obj._knn_search_index = ExactQueryIndex(est.obj._raw_data, est.obj.metric)
    model = est.obj
    stats = None if shift is None else (backend.to_host(shift), backend.to_host(scale))
    Z = _transform_all(matrix, model, est.twin, backend, stats, client)
    if keep is not None:
        Z = Z[:, :keep]
    if method == "umap":  # the fitted rows keep the layout UMAP optimised for them
        Z[xp.asarray(pos)] = xp.asarray(np.asarray(backend.to_host(model.embedding_)), dtype=xp.float32)
    log.info("%s: fitted on %d of %d rows, transformed the rest in %d chunk(s)", method, len(pos), n,
             len(matrix.chunk_ids()))
    return normalize(backend, Z, post), est.twin


def _standardise(xp, B, shift, scale):
    return B if shift is None else ((B - xp.asarray(shift)) / xp.asarray(scale)).astype(xp.float32)


def _transform_block(backend: Backend, model, B, stats):
    xp = backend.xp
    B = xp.asarray(B, dtype=xp.float32)
    if stats is not None:
        B = _standardise(xp, B, stats[0], stats[1])
    return xp.asarray(model.transform(B), dtype=xp.float32)


def transform_chunk(matrix, cid, model, twin: str, stats):
    """One chunk through a fitted reducer on a Dask worker (which reads the chunk from disk itself); host result,
    small (rows x --dims), so it travels back cheaply."""
    import numpy as np

    from ..backend import resolve_backend

    backend = resolve_backend(twin)
    return np.asarray(backend.to_host(_transform_block(backend, model, matrix.read(cid), stats)))


def _transform_all(matrix, model, twin: str, backend: Backend, stats, client=None):
    xp = backend.xp
    ids = matrix.chunk_ids()
    starts, start = [], 0
    for cid in ids:
        starts.append(start)
        start += matrix.chunk_len(cid)
    parts = {}
    if client is not None and len(ids) > 1:
        from distributed import as_completed
        from tqdm.auto import tqdm

        model_f = client.scatter(model, broadcast=True)
        futures = {client.submit(transform_chunk, matrix, cid, model_f, twin, stats, pure=False, retries=3): j
                   for j, cid in enumerate(ids)}
        for fut in tqdm(as_completed(futures), total=len(ids), desc="transform (dask)", disable=None):
            parts[futures[fut]] = fut.result()
    else:
        from ..backend import cpu_backend

        local = backend if twin == backend.name else cpu_backend()  # the CPU twin standing in takes host rows
        for j, cid in enumerate(ids):
            B = matrix.read(cid)
            parts[j] = _transform_block(local, model, B if local is backend else backend.to_host(B), stats)
    dims = parts[0].shape[1]
    Z = xp.empty((matrix.n_rows, dims), dtype=xp.float32)
    for j in range(len(ids)):
        Z[starts[j]:starts[j] + parts[j].shape[0]] = xp.asarray(parts[j])
    return Z
