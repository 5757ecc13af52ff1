"""Placing new rows into a finished run: its reduced space rebuilt from what the run stored, and its clusters.

The reduced space. A run keeps its embeddings (the store) and, for PCA and UMAP, its reduced rows (the reduction
cache beside them); nothing else is needed:

- none / zscore: arithmetic. The z-score statistics (and those of --normalize zscore/spherical) are the run's
  embeddings' own, recomputed from the store exactly as the run computed them.
- pca: refitted on the run's stored embeddings with the run's seed, on the twin that fitted it, and used only when it
  reproduces the run's stored space (allclose); PCA is seconds where encoding took minutes.
- umap: not refitted (a fit costs as much as the run, and an unseeded GPU fit above 100,000 rows cannot be repeated).
  umap-learn's own `transform` needs the fitted rows, their layout and the parameters, and nothing else the fitted
  object holds: `umap_place` runs that algorithm (exact neighbours among the run's embeddings, membership strengths,
  the weighted mean of the neighbours' positions, then the layout epochs with the run's rows held still) against the
  stored layout. It equals umap-learn's transform of the fitted model (a test checks it), and needs no pickle of the
  model, which would hold a second copy of every embedding. With --normalize l2/zscore/spherical the stored layout is
  the normalised one and the pre-normalisation layout is gone: new rows get the weighted mean of their neighbours'
  normalised positions (the epochs left out; that mean commutes with a per-dimension scaling), rescaled to unit
  length for l2.

The clusters (distances euclidean, in the reduced space):

- kmeans, faiss_kmeans, spectral: the nearest cluster centre (the mean of the run's rows in the cluster).
- gaussian_mixture: the most probable component of a mixture estimated from the run's clusters (weights, means and
  covariances of the run's labelled rows, with the run's covariance_type and reg_covar).
- everything else (hdbscan, dbscan, agglomerative, affinity ...): the label of the nearest clustered row; for hdbscan
  and dbscan a new row is noise (-1) when that row is farther than the run's own reach, the largest distance from a
  clustered row of the run to the nearest row of its own cluster.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import UserError

CENTROID = ("kmeans", "faiss_kmeans", "spectral")
NOISE_AWARE = ("hdbscan", "dbscan")
RULES = {"centroid": "the nearest cluster centre of the run", "gaussian": "the most probable component of the "
         "mixture the run's clusters define", "neighbour": "the label of the nearest clustered row of the run",
         "neighbour+noise": "the label of the nearest clustered row of the run; noise (-1) beyond the run's reach "
         "(the largest distance from a clustered row to the nearest row of its own cluster)"}


@dataclass
class Space:
    """The run's reduced space rebuilt: `Z` the run's rows in it, `place(X_new)` -> new rows in it, and how."""

    Z: np.ndarray
    place: Callable[[np.ndarray], np.ndarray]
    how: str


def rebuild_space(X, reduce: dict, seed: int, twin: str, stored: np.ndarray | None, kept: bool = True) -> Space:
    """The run's reduced space from its embeddings X (host, in the run's row order), its `reduce` section of
    config.json, seed, the twin that reduced ("cpu", "gpu" or "none") and its stored reduced rows (None: not found).
    `kept=False`: the run had no store to keep a space in (precomputed embeddings), so a PCA refit is unchecked."""
    method, post = reduce["method"], reduce.get("normalize", "none")
    if method == "umap":
        return _umap_space(X, reduce, seed, stored)
    if method == "pca" and stored is None and kept:
        raise UserError("the run's PCA space is no longer in its store, so a refit cannot be checked against it; "
                        "rerun the run (its embeddings are reused) and assign again")
    backend = _twin_backend(twin)
    pre = _pre_stats(X, method, reduce.get("zscore"))
    Z_pre, est = _linear(backend, _standardise(X, pre), reduce, seed)
    from ..reduce import normalize

    Z = np.asarray(backend.to_host(normalize(backend, backend.asarray(Z_pre), post)), dtype=np.float32)
    if stored is not None:
        _check_reproduced(Z, stored)
    post_fn = _post_fn(post, Z_pre)

    def place(Q):
        Zq = _standardise(np.asarray(Q, dtype=np.float32), pre)
        if est is not None:
            Zq = backend.to_host(est.call("transform", backend, backend.asarray(Zq)))[:, :est.keep]
        return post_fn(np.asarray(Zq, dtype=np.float32))

    how = {"pca": "PCA refitted with the run's seed" + (" (checked against the stored space)" if stored is not None
                                                         else "")}.get(method, method)
    return Space(Z, place, how)


def _twin_backend(twin: str):
    from ..backend import resolve_backend

    if twin == "gpu":
        try:
            return resolve_backend("gpu")
        except UserError:
            raise UserError("the run reduced on the GPU twin; assign refits its PCA there: run it where a GPU is "
                            "available") from None
    return resolve_backend("cpu")


def _pre_stats(X, method: str, zscore: bool | None):
    """(mean, scale) of the z-score before the reducer, as `reduce.zscore` computes them, or None."""
    if not (method == "zscore" or (zscore if zscore is not None else method == "pca")):
        return None
    mean = X.mean(axis=0)
    std = (X - mean).std(axis=0)
    return mean, np.where(std > 0, std, 1.0)


def _standardise(X, pre):
    return X if pre is None else (X - pre[0]) / pre[1]


def _linear(backend, Xs, reduce: dict, seed: int):
    """(the run's rows before --normalize, the fitted PCA or None)."""
    if reduce["method"] != "pca":
        return Xs, None
    from ..reduce import fit_pca

    Xd = backend.asarray(Xs)
    est = fit_pca(Xd, reduce["dims"], {"random_state": seed, **reduce.get("params", {})}, backend)
    return np.asarray(backend.to_host(est.call("transform", backend, Xd)[:, :est.keep])), est


def _check_reproduced(Z: np.ndarray, stored: np.ndarray) -> None:
    scale = max(float(np.abs(stored).max()), 1e-12)
    if Z.shape != stored.shape or not np.allclose(Z, stored, rtol=1e-3, atol=1e-4 * scale):
        diff = float(np.abs(Z - stored).max()) if Z.shape == stored.shape else float("nan")
        raise UserError(f"refitting the run's reducer did not reproduce its stored space (largest difference {diff:.3g}"
                        "; another library version?): rerun the run and assign again")


def _post_fn(how: str, Z_pre: np.ndarray) -> Callable:
    """--normalize for new rows with the run's statistics (`reduce.normalize` computes them for the run's rows)."""
    if how == "l2":
        return _unit
    if how == "zscore":
        mean = Z_pre.mean(axis=0)
        std = (Z_pre - mean).std(axis=0)
        return lambda Zq: (Zq - mean) / np.where(std > 0, std, 1.0)
    if how == "spherical":
        mean = Z_pre.mean(axis=0)
        scale = max(float((Z_pre - mean).std(axis=0).mean()), 1e-12)
        return lambda Zq: (Zq - mean) / scale
    return lambda Zq: Zq


def _unit(Z):
    return Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)


def _umap_space(X, reduce: dict, seed: int, stored: np.ndarray | None) -> Space:
    if stored is None:
        raise UserError("the run's UMAP space is no longer in its store (or the run kept none, as a run of "
                        "precomputed embeddings does); rerun the run (its embeddings are reused) and assign again")
    if stored.shape[0] != X.shape[0]:
        raise UserError(f"the run's stored UMAP space has {stored.shape[0]} rows, its embeddings {X.shape[0]}: "
                        "rerun the run")
    pre = _pre_stats(X, "umap", reduce.get("zscore"))
    Xs = _standardise(X, pre)
    post = reduce.get("normalize", "none")
    params = dict(reduce.get("params", {}))

    def place(Q):
        Zq = umap_place(Xs, stored, params, _standardise(np.asarray(Q, dtype=np.float32), pre), seed,
                        optimise=post == "none")
        return _unit(Zq) if post == "l2" else Zq

    how = "UMAP's transform against the stored layout" + ("" if post == "none" else
                                                          " (weighted neighbour mean in the normalised layout)")
    return Space(np.asarray(stored, dtype=np.float32), place, how)


def umap_place(X_fit: np.ndarray, layout: np.ndarray, params: dict, Q: np.ndarray, seed: int = 0,
               optimise: bool = True) -> np.ndarray:
    """New rows Q placed into a UMAP layout of the rows X_fit, as umap-learn's `UMAP.transform` places them (exact
    neighbours; `params` the run's --reduce-param values over UMAP_DEFAULTS). `optimise=False`: the weighted mean of
    the neighbours' positions only, before the layout epochs."""
    from sklearn.utils import check_random_state
    from umap.layouts import optimize_layout_euclidean
    from umap.umap_ import INT32_MAX, INT32_MIN, find_ab_params, init_graph_transform, make_epochs_per_sample

    from ..reduce import UMAP_DEFAULTS

    p = {**UMAP_DEFAULTS, **params}
    if p.get("output_metric", "euclidean") != "euclidean":
        raise UserError("assign places rows into UMAP layouts with a euclidean output_metric only")
    graph = _membership(X_fit, p, Q)
    layout = np.asarray(layout, dtype=np.float32)
    emb = init_graph_transform(graph.tocsr(), layout)  # (graph holds no explicit zeros: the csr needs no pruning)
    if not optimise:
        return np.asarray(emb, dtype=np.float32)
    # umap-learn's transform: a third of the fit's epochs, or 100 (30 above 10,000 new rows) when it chose them. The
    # run's own --reduce-param only: the 200-epoch default is the fit's, and transforms keep the library's rule, as
    # the streamed runs' transforms do (reduce.reduce_streamed), for runs made before and after that default.
    given = params.get("n_epochs")
    epochs = (100 if Q.shape[0] <= 10000 else 30) if given is None else int(given // 3.0)
    graph.data[graph.data < graph.data.max() / float(epochs)] = 0.0
    graph.eliminate_zeros()
    a, b = (p["a"], p["b"]) if p.get("a") is not None else find_ab_params(p.get("spread", 1.0), p["min_dist"])
    rng_state = check_random_state(p.get("transform_seed", 42)).randint(INT32_MIN, INT32_MAX, 3).astype(np.int64)
    emb = optimize_layout_euclidean(emb, layout.copy(), graph.row, graph.col, epochs, X_fit.shape[0],
                                    make_epochs_per_sample(graph.data, epochs), a, b, rng_state,
                                    p.get("repulsion_strength", 1.0), p.get("learning_rate", 1.0) / 4.0,
                                    p.get("negative_sample_rate", 5), parallel=False, verbose=False,
                                    tqdm_kwds={"disable": True})
    return np.asarray(emb, dtype=np.float32)


def _membership(X_fit, p: dict, Q):
    """The new rows' fuzzy membership in the fitted rows (a coo matrix, new x fitted), from their exact neighbours."""
    import scipy.sparse
    from umap.umap_ import DISCONNECTION_DISTANCES, compute_membership_strengths, smooth_knn_dist

    from ..reduce.knn import ExactQueryIndex

    n, k = X_fit.shape[0], min(int(p["n_neighbors"]), X_fit.shape[0] - 1)
    idx, dist = ExactQueryIndex(np.asarray(X_fit, dtype=np.float32), p["metric"]).query(Q, k)
    idx[dist >= p.get("disconnection_distance", DISCONNECTION_DISTANCES.get(p["metric"], np.inf))] = -1
    sigmas, rhos = smooth_knn_dist(dist, float(k), local_connectivity=max(0.0, p.get("local_connectivity", 1.0) - 1))
    rows, cols, vals, _ = compute_membership_strengths(idx, dist, sigmas, rhos, bipartite=True)
    graph = scipy.sparse.coo_matrix((vals, (rows, cols)), shape=(Q.shape[0], n))
    graph.eliminate_zeros()
    return graph


def cluster_rule(method: str) -> str:
    """Which of RULES places rows into a run clustered by `method`."""
    if method in CENTROID:
        return "centroid"
    if method == "gaussian_mixture":
        return "gaussian"
    return "neighbour+noise" if method in NOISE_AWARE else "neighbour"


def place_clusters(Z: np.ndarray, labels: np.ndarray, method: str, params: dict, Zq: np.ndarray):
    """(labels, distances) of new rows Zq in the run's clusters: `labels` the run's (-1 noise) for its rows Z,
    `method` and `params` its clusterer and resolved parameters. The distance is to the centre (centroid, gaussian)
    or to the nearest clustered row (neighbour rules)."""
    Z, Zq = np.asarray(Z, dtype=np.float64), np.asarray(Zq, dtype=np.float64)
    labels = np.asarray(labels)
    clustered = labels >= 0
    if not clustered.any():
        raise UserError("the run found no clusters (every row is noise): nothing to assign into")
    ids = np.unique(labels[clustered])
    rule = cluster_rule(method)
    if rule in ("centroid", "gaussian"):
        centres = np.stack([Z[labels == c].mean(axis=0) for c in ids])
        d = _pairwise(Zq, centres)
        pick = d.argmin(axis=1) if rule == "centroid" else _gaussian_argmax(Z, labels, ids, params, Zq)
        return ids[pick], d[np.arange(len(Zq)), pick]
    from sklearn.neighbors import NearestNeighbors

    dist, nn = NearestNeighbors(n_neighbors=1).fit(Z[clustered]).kneighbors(Zq)
    out, dist = labels[clustered][nn[:, 0]].copy(), dist[:, 0]
    if rule == "neighbour+noise":
        out[dist > run_reach(Z, labels)] = -1
    return out, dist


def _pairwise(A, B):
    d2 = (A * A).sum(1)[:, None] - 2 * A @ B.T + (B * B).sum(1)[None, :]
    return np.sqrt(np.maximum(d2, 0))


def run_reach(Z: np.ndarray, labels: np.ndarray) -> float:
    """The largest distance from a clustered row to the nearest other row of its own cluster (clusters of one row
    left out): how far apart the run itself let a cluster's rows be."""
    from sklearn.neighbors import NearestNeighbors

    reach = 0.0
    for c in np.unique(labels[labels >= 0]):
        rows = Z[labels == c]
        if len(rows) > 1:
            dist, _ = NearestNeighbors(n_neighbors=2).fit(rows).kneighbors(rows)
            reach = max(reach, float(dist[:, 1].max()))
    return reach


def _gaussian_argmax(Z, labels, ids, params: dict, Zq) -> np.ndarray:
    """The most probable component for each new row, the mixture estimated from the run's clusters."""
    from scipy.stats import multivariate_normal

    kind, reg = params.get("covariance_type", "full"), float(params.get("reg_covar", 1e-4))
    d = Z.shape[1]
    groups = [Z[labels == c] for c in ids]
    tied = sum(np.cov(g, rowvar=False, bias=True) * len(g) for g in groups if len(g) > 1) / len(Z)
    scores = []
    for g in groups:
        if kind == "tied":
            cov = tied
        else:
            var = np.cov(g, rowvar=False, bias=True) if len(g) > 1 else np.zeros((d, d))
            cov = {"diag": np.diag(np.diag(var)), "spherical": np.eye(d) * np.trace(var) / d}.get(kind, var)
        cov = np.atleast_2d(cov) + reg * np.eye(d)
        log_w = np.log(len(g) / len(Z))
        scores.append(multivariate_normal(g.mean(axis=0), cov, allow_singular=True).logpdf(Zq) + log_w)
    return np.argmax(np.column_stack(scores), axis=1)
