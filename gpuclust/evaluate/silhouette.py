"""Silhouette written once against `xp`, exact in row chunks, or estimated from a seeded sample of rows.

Our own rather than sklearn's or cuML's because one implementation then serves both twins with every metric the study
used (cuML's has no chebyshev), memory stays bounded by the chunk size at any n, and a sample of rows can be scored
against *all* rows, which gives an unbiased estimate of the mean with a confidence interval (sklearn's `sample_size`
subsamples both sides instead).
"""
from __future__ import annotations

import math

from ..backend import Backend
from ..errors import UserError

METRICS = ("euclidean", "l1", "chebyshev", "cosine")
_ALIASES = {"manhattan": "l1", "cityblock": "l1", "l2": "euclidean"}
# Elements of the temporary (chunk, n, d) block for l1/chebyshev on the GPU, (chunk, n) otherwise: 64 MB / 2 GB in
# float64 (a few such temporaries are alive at once, so host memory stays well under a GB at any n).
BLOCK_ELEMENTS = {"cpu": 1 << 23, "gpu": 1 << 28}


# scikit-learn's names for the distances the CPU twin takes from its pairwise_distances.
_CDIST = {"l1": "manhattan", "chebyshev": "chebyshev"}


def _host_threads() -> int:
    """Threads for the CPU twin's distances: the process's OMP_NUM_THREADS budget (a fanned-out sweep run's share of
    the cores), else every core."""
    import os

    budget = os.environ.get("OMP_NUM_THREADS", "")
    return int(budget) if budget.isdigit() and int(budget) > 0 else -1


def _pairwise(xp, A, X, metric: str, sq_norms=None, host: bool = False):
    """Distances (len(A), len(X)) in float64, computed in place in one (len(A), len(X)) buffer. On the host, l1 and
    chebyshev come from scikit-learn's pairwise_distances (scipy's compiled loops, a thread per core): the
    (len(A), len(X), d) broadcast below is memory-bound on a CPU (16 s against scikit-learn's 3.6 s for l1 on
    2,000 x 1,280 rows here), while on a GPU it is what ran on the H100."""
    if metric == "euclidean":
        d2 = A @ X.T
        d2 *= -2.0
        d2 += (A * A).sum(axis=1)[:, None]
        d2 += sq_norms[None, :]
        xp.maximum(d2, 0.0, out=d2)
        return xp.sqrt(d2, out=d2)
    if metric == "cosine":
        d = A @ X.T  # rows pre-normalised by the caller
        xp.subtract(1.0, d, out=d)
        return xp.maximum(d, 0.0, out=d)
    if host:
        from sklearn.metrics import pairwise_distances

        return pairwise_distances(A, X, metric=_CDIST[metric], n_jobs=_host_threads())
    diff = xp.abs(A[:, None, :] - X[None, :, :])
    return diff.sum(axis=2) if metric == "l1" else diff.max(axis=2)


def silhouette_samples(backend: Backend, X, labels, metric: str = "euclidean", rows=None):
    """Silhouette of each row in `rows` (default all) against every row of X. Labels must be >= 0.

    Follows sklearn: a(i) averages over the other members of i's cluster, b(i) is the smallest mean distance to
    another cluster, s(i) = 0 for members of singleton clusters.
    """
    xp = backend.xp
    metric = _ALIASES.get(metric, metric)
    if metric not in METRICS:
        raise UserError(f"silhouette metric {metric!r}: choose one of {', '.join(METRICS)}")
    X = xp.asarray(X, dtype=xp.float64)
    if metric == "cosine":
        X = X / xp.maximum(xp.linalg.norm(X, axis=1, keepdims=True), 1e-300)
    _, inv, sizes = xp.unique(labels, return_inverse=True, return_counts=True)
    inv = inv.ravel()
    n, d = X.shape
    # Columns sorted by cluster: a cluster's distance total is a difference of two cumulative sums, so memory is
    # (chunk, n) whatever the number of clusters (a one-hot matrix would be n x k).
    order = xp.argsort(inv, kind="stable")
    Xs = X[order]
    ends = xp.cumsum(sizes) - 1
    starts = ends - sizes + 1
    sq_norms = (Xs * Xs).sum(axis=1) if metric == "euclidean" else None
    rows = xp.arange(n) if rows is None else xp.asarray(rows)
    per_row = n * (d if metric in _CDIST and backend.is_gpu else 1)
    chunk = max(1, BLOCK_ELEMENTS[backend.name] // max(per_row, 1))
    out = []
    sizes_f = sizes.astype(xp.float64)
    for start in range(0, int(rows.shape[0]), chunk):
        r = rows[start:start + chunk]
        D = _pairwise(xp, X[r], Xs, metric, sq_norms, host=not backend.is_gpu)
        if not backend.is_gpu:  # one read of D; the GPU keeps the cumulative-sum form that ran on the H100
            sums = xp.add.reduceat(D, starts, axis=1)  # (c, k): total distance to each cluster
        else:
            sums = xp.diff(xp.cumsum(D, axis=1)[:, ends], axis=1, prepend=0.0)
        del D
        own = inv[r]
        own_size = sizes_f[own]
        a = sums[xp.arange(r.shape[0]), own] / xp.maximum(own_size - 1.0, 1.0)
        mean_other = sums / sizes_f[None, :]
        mean_other[xp.arange(r.shape[0]), own] = xp.inf
        b = mean_other.min(axis=1)
        s = (b - a) / xp.maximum(xp.maximum(a, b), 1e-300)
        out.append(xp.where(own_size > 1, s, 0.0))
    return xp.concatenate(out) if out else xp.zeros(0)


def silhouette_score(backend: Backend, X, labels, metric: str = "euclidean", max_exact: int = 30_000,
                     sample_size: int = 10_000, seed: int = 0) -> dict:
    """Mean silhouette of the clustered rows (label >= 0).

    Exact up to `max_exact` rows; beyond, `sample_size` seeded rows are scored against all rows and the result
    carries a 95% confidence half-width. Returns {"value", "rows", "exact", "ci95"}; value None when undefined
    (fewer than 2 clusters, or every point its own cluster).
    """
    xp = backend.xp
    keep = labels >= 0
    X, labels = X[keep], labels[keep]
    n = int(labels.shape[0])
    n_labels = int(xp.unique(labels).shape[0]) if n else 0
    if n_labels < 2 or n_labels > n - 1:
        return {"value": None, "rows": n, "exact": True, "ci95": None}
    if n <= max_exact:
        s = silhouette_samples(backend, X, labels, metric)
        return {"value": float(s.mean()), "rows": n, "exact": True, "ci95": 0.0}
    m = min(sample_size, n)
    rows = xp.sort(xp.random.RandomState(seed).permutation(n)[:m])
    s = silhouette_samples(backend, X, labels, metric, rows)
    # finite-population correction: sampling without replacement from n rows
    half = 1.96 * float(s.std(ddof=1)) / math.sqrt(m) * math.sqrt((n - m) / (n - 1))
    return {"value": float(s.mean()), "rows": m, "exact": False, "ci95": half}
