"""Label-free criteria of the selection study: per-row silhouettes (noise 0), stability across subsamples,
prediction strength, and the bootstrap confidence of a pick. Clusterers run through gpuclust's own cluster stage
(`gpuclust.cluster.cluster`, CPU twin), so a candidate's labels are the product's.
"""
from __future__ import annotations

import time

import numpy as np
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score, silhouette_samples

N_SUB, SUB_FRAC = 5, 0.8  # stability: 5 seeded subsamples of 80% of the rows


def _backend():
    from gpuclust.backend import resolve_backend

    return resolve_backend("cpu")


def fit(Z: np.ndarray, method: str, k: int | None, params: dict, seed: int = 0) -> np.ndarray:
    """Labels of one clusterer on Z through gpuclust's cluster stage (-1 = noise)."""
    import logging

    from gpuclust.cluster import cluster

    logging.getLogger("gpuclust").setLevel(logging.ERROR)
    labels, _, _ = cluster(Z, method, k, dict(params), _backend(), seed)
    return np.asarray(labels)


def ami(y: np.ndarray, labels: np.ndarray) -> float:
    """AMI with noise (-1) as one cluster of its own, as gpuclust's metrics count it."""
    return float(adjusted_mutual_info_score(y, labels))


def silhouette_rows(Z: np.ndarray, labels: np.ndarray, D: np.ndarray | None = None) -> np.ndarray:
    """Each row's silhouette in Z over the clustered rows, noise rows scoring 0 (the mean is silhouette_umap_all);
    all zeros when fewer than 2 clusters. `D`: Z's pairwise distances, when already computed."""
    s = np.zeros(len(labels))
    kept = labels >= 0
    if len(np.unique(labels[kept])) < 2 or len(np.unique(labels[kept])) >= kept.sum():
        return s
    if D is None:
        s[kept] = silhouette_samples(Z[kept], labels[kept])
    else:
        s[kept] = silhouette_samples(D[np.ix_(kept, kept)], labels[kept], metric="precomputed")
    return s


def subsamples(n: int, seed: int = 0, n_sub: int = N_SUB, frac: float = SUB_FRAC) -> list[np.ndarray]:
    """`n_sub` seeded subsamples (sorted row indices) of `frac` of n rows."""
    rng = np.random.default_rng(1000 + seed)
    return [np.sort(rng.choice(n, int(frac * n), replace=False)) for _ in range(n_sub)]


def stability(Z, labels, refit, n_sub: int = N_SUB) -> list[float]:
    """ARI between `labels` and `refit(rows, seed)` (the clusterer refitted on those rows' Z with another seed) on
    each subsample's rows; noise counts as one cluster."""
    return [float(adjusted_rand_score(labels[rows], refit(rows, i + 1)))
            for i, rows in enumerate(subsamples(len(labels), n_sub=n_sub))]


def prediction_strength(Z, refit, seed: int = 0) -> float:
    """Tibshirani & Walther's prediction strength over one seeded half split, both ways: cluster each half, assign
    the other half's rows to the nearest centroid of the first half's clusters, and for each cluster of the other
    half the share of its pairs that the assignment keeps together; the minimum over clusters (of >= 2 rows, noise
    rows left out), averaged over the two directions."""
    rng = np.random.default_rng(2000 + seed)
    perm = rng.permutation(len(Z))
    halves = [np.sort(perm[: len(Z) // 2]), np.sort(perm[len(Z) // 2:])]
    fits = [refit(h, 7 + i) for i, h in enumerate(halves)]
    out = []
    for train, test in ((0, 1), (1, 0)):
        out.append(_ps_one(Z[halves[train]], fits[train], Z[halves[test]], fits[test]))
    return float(np.mean(out))


def _ps_one(Ztr, ltr, Zte, lte) -> float:
    ids = [c for c in np.unique(ltr) if c >= 0]
    if not ids:
        return 0.0
    cents = np.stack([Ztr[ltr == c].mean(0) for c in ids])
    assign = np.argmin(((Zte[:, None, :] - cents[None]) ** 2).sum(-1), axis=1)
    worst = 1.0
    for c in np.unique(lte):
        a = assign[lte == c] if c >= 0 else None
        if a is None or len(a) < 2:
            continue
        counts = np.bincount(a)
        worst = min(worst, float((counts * (counts - 1)).sum() / (len(a) * (len(a) - 1))))
    return worst


def timed(fn, *args, **kw):
    """(fn's result, seconds)."""
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t


# --- picks and confidence -------------------------------------------------------------------------------------------

def bootstrap_rows(n: int, b: int = 50, seed: int = 0) -> np.ndarray:
    """(b, n) row indices drawn with replacement, the same draws for every candidate of a set (paired)."""
    return np.random.default_rng(3000 + seed).integers(0, n, size=(b, n))


def confidence(score_draws: np.ndarray, pick: int, runner: int, twins: np.ndarray) -> tuple[float, float]:
    """From (b, candidates) draws of a criterion (higher is better), the full-data pick and runner-up (the best
    candidate with another partition) and a mask of the pick's twins (candidates with the pick's partition, such as
    HDBSCAN at two sizes finding the same clusters): (the share of draws whose first is the pick or a twin, the
    margin pick - runner-up in units of the bootstrap standard deviation of that difference)."""
    share = float(twins[np.argmax(score_draws, axis=1)].mean())
    diff = score_draws[:, pick] - score_draws[:, runner]
    sd = float(diff.std(ddof=1)) if len(diff) > 1 else 0.0
    if sd == 0:  # the same difference in every draw (stability and prediction strength do not move with the rows)
        return share, float("inf") if diff.mean() > 0 else 0.0
    return share, float(diff.mean() / sd)


# --- graph modularity -----------------------------------------------------------------------------------------------

def knn_graph(Z: np.ndarray, k: int = 15):
    """The symmetric k-nearest-neighbour graph of Z's rows (scipy sparse, weights 1)."""
    import scipy.sparse as sp
    from sklearn.neighbors import NearestNeighbors

    idx = NearestNeighbors(n_neighbors=k + 1).fit(Z).kneighbors(Z, return_distance=False)[:, 1:]
    n = len(Z)
    A = sp.csr_matrix((np.ones(idx.size), (np.repeat(np.arange(n), k), idx.ravel())), shape=(n, n))
    return A.maximum(A.T).tocsr()


def modularity(A, labels: np.ndarray) -> float:
    """Newman's modularity of `labels` on graph A, each noise row a cluster of its own (so noise earns nothing):
    the share of edges inside clusters minus what random edges with the same degrees would put there. Unlike the
    silhouette it does not reward merging two groups that are well apart but each a dense community."""
    import scipy.sparse as sp

    lab = labels.copy()
    noise = lab < 0
    lab[noise] = lab.max() + 1 + np.arange(noise.sum())
    _, lab = np.unique(lab, return_inverse=True)
    M = sp.csr_matrix((np.ones(len(lab)), (np.arange(len(lab)), lab)))
    two_m = A.sum()
    inside = (M.T @ A @ M).diagonal().sum() / two_m
    deg = np.asarray(M.T @ np.asarray(A.sum(axis=1)).ravel()).ravel() / two_m
    return float(inside - (deg ** 2).sum())
