"""Clustering metrics written once against `xp` (numpy or CuPy), so the GPU twin computes them on the device.

cuML has no AMI or NMI, so the label metrics (AMI, ARI, NMI) are computed here from a contingency table, following
the definitions scikit-learn uses (arithmetic normalisation; the same edge cases), in float64.
"""
from __future__ import annotations

import math

from ..backend import Backend

# Terms of the expected mutual information evaluated per chunk (bounds temporary memory at ~10 arrays of this size).
EMI_CHUNK = 1 << 22


def contingency(xp, a, b):
    """Dense (n_a_labels, n_b_labels) int64 table of co-occurrence counts."""
    _, ia = xp.unique(a, return_inverse=True)
    ub, ib = xp.unique(b, return_inverse=True)
    ia, ib = ia.ravel(), ib.ravel()
    n_a = int(ia.max()) + 1 if ia.size else 0
    n_b = len(ub)
    return xp.bincount(ia * n_b + ib, minlength=n_a * n_b).reshape(n_a, n_b).astype(xp.int64)


def _entropy(xp, counts):
    n = counts.sum()
    p = counts[counts > 0].astype(xp.float64) / n
    return -(p * xp.log(p)).sum()


def mutual_info(xp, C):
    """Mutual information (nats, float64, clamped at 0) of the contingency table `C`, as a 0-d `xp` array on C's
    device."""
    N = C.sum().astype(xp.float64)
    a = C.sum(axis=1).astype(xp.float64)
    b = C.sum(axis=0).astype(xp.float64)
    i, j = xp.nonzero(C)
    nij = C[i, j].astype(xp.float64)
    mi = (nij / N * (xp.log(nij) + xp.log(N) - xp.log(a[i]) - xp.log(b[j]))).sum()
    return xp.maximum(mi, 0.0)


def expected_mutual_info(backend: Backend, C):
    """E[MI] under the permutation model (Vinh, Epps & Bailey 2010), summed exactly over all cells and all
    admissible counts n_ij in max(1, a_i + b_j - N) .. min(a_i, b_j), in chunks."""
    xp, gammaln = backend.xp, backend.special.gammaln
    N = int(C.sum())
    a = C.sum(axis=1).astype(xp.float64)
    b = C.sum(axis=0).astype(xp.float64)
    A = xp.repeat(a, len(b))  # one entry per cell (i, j), row-major
    B = xp.tile(b, len(a))
    lo = xp.maximum(1.0, A + B - N)
    hi = xp.minimum(A, B)
    counts = xp.maximum(hi - lo + 1, 0).astype(xp.int64)
    ends = xp.cumsum(counts)
    total = int(ends[-1]) if ends.size else 0
    # log of the parts of the hypergeometric probability that do not depend on n_ij
    const = gammaln(A + 1) + gammaln(B + 1) + gammaln(N - A + 1) + gammaln(N - B + 1) - gammaln(xp.asarray(N + 1.0))
    emi = xp.zeros((), dtype=xp.float64)
    for start in range(0, total, EMI_CHUNK):
        t = xp.arange(start, min(total, start + EMI_CHUNK), dtype=xp.int64)
        cell = xp.searchsorted(ends, t, side="right")
        nij = lo[cell] + (t - (ends[cell] - counts[cell])).astype(xp.float64)
        Ac, Bc = A[cell], B[cell]
        log_p = const[cell] - gammaln(nij + 1) - gammaln(Ac - nij + 1) - gammaln(Bc - nij + 1) \
            - gammaln(N - Ac - Bc + nij + 1)
        emi = emi + (nij / N * (xp.log(N * nij) - xp.log(Ac * Bc)) * xp.exp(log_p)).sum()
    return emi


def _single_or_empty(C) -> bool:
    return (C.shape[0] == C.shape[1] == 1) or (C.shape[0] == C.shape[1] == 0)


def ami(backend: Backend, labels_true, labels_pred) -> float:
    """Adjusted mutual information, arithmetic normalisation (sklearn's default)."""
    xp = backend.xp
    C = contingency(xp, labels_true, labels_pred)
    if _single_or_empty(C):
        return 1.0
    mi = mutual_info(xp, C)
    emi = expected_mutual_info(backend, C)
    h = (_entropy(xp, C.sum(axis=1)) + _entropy(xp, C.sum(axis=0))) / 2
    denom = float(h - emi)
    eps = float(xp.finfo(xp.float64).eps)
    denom = min(denom, -eps) if denom < 0 else max(denom, eps)
    return float(mi - emi) / denom


def nmi(backend: Backend, labels_true, labels_pred) -> float:
    """Normalised mutual information, arithmetic normalisation (sklearn's default)."""
    xp = backend.xp
    C = contingency(xp, labels_true, labels_pred)
    if _single_or_empty(C):
        return 1.0
    mi = float(mutual_info(xp, C))
    if mi <= 0:
        return 0.0
    h = float(_entropy(xp, C.sum(axis=1)) + _entropy(xp, C.sum(axis=0))) / 2
    return mi / max(h, float(xp.finfo(xp.float64).eps))


def ari(backend: Backend, labels_true, labels_pred) -> float:
    """Adjusted Rand index from the pair confusion counts (exact integer arithmetic up to ~3e9 rows)."""
    xp = backend.xp
    C = contingency(xp, labels_true, labels_pred)
    n = int(C.sum())
    sum_sq = int((C * C).sum())
    a2 = int((C.sum(axis=1) ** 2).sum())
    b2 = int((C.sum(axis=0) ** 2).sum())
    tp = sum_sq - n
    fp = a2 - sum_sq
    fn = b2 - sum_sq
    tn = n * n - fp - fn - sum_sq
    if fn == 0 and fp == 0:
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


def homogeneity_completeness(backend: Backend, labels_true, labels_pred) -> tuple[float, float, float]:
    """Homogeneity, completeness and V-measure (beta = 1), as sklearn defines them."""
    xp = backend.xp
    C = contingency(xp, labels_true, labels_pred)
    if C.shape[0] == 0:
        return 1.0, 1.0, 1.0
    h_true = float(_entropy(xp, C.sum(axis=1)))
    h_pred = float(_entropy(xp, C.sum(axis=0)))
    mi = float(mutual_info(xp, C))
    hom = mi / h_true if h_true else 1.0
    com = mi / h_pred if h_pred else 1.0
    v = 0.0 if hom + com == 0 else 2 * hom * com / (hom + com)
    return hom, com, v


def fowlkes_mallows(backend: Backend, labels_true, labels_pred) -> float:
    """Fowlkes-Mallows index (geometric mean of pairwise precision and recall) as a float; 0.0 when no pair of rows
    shares both a class and a cluster."""
    xp = backend.xp
    C = contingency(xp, labels_true, labels_pred)
    n = int(C.sum())
    tk = int((C * C).sum()) - n
    pk = int((C.sum(axis=0) ** 2).sum()) - n
    qk = int((C.sum(axis=1) ** 2).sum()) - n
    return math.sqrt(tk / pk) * math.sqrt(tk / qk) if tk != 0 else 0.0


def label_metrics(backend: Backend, labels_true, labels_pred) -> dict:
    """All label metrics; noise (-1) is one cluster of its own, as in the study."""
    hom, com, v = homogeneity_completeness(backend, labels_true, labels_pred)
    return {
        "ami": ami(backend, labels_true, labels_pred),
        "ari": ari(backend, labels_true, labels_pred),
        "nmi": nmi(backend, labels_true, labels_pred),
        "homogeneity": hom,
        "completeness": com,
        "v_measure": v,
        "fowlkes_mallows": fowlkes_mallows(backend, labels_true, labels_pred),
    }


def calinski_harabasz(backend: Backend, X, labels) -> float | None:
    """Between- over within-cluster dispersion, each per degree of freedom (sklearn's definition)."""
    c = _clusters(backend.xp, X, labels)
    if c is None:
        return None
    X, centroids, inv, sizes = c
    n, k = X.shape[0], centroids.shape[0]
    between = float((sizes[:, None] * (centroids - X.mean(axis=0)) ** 2).sum())
    within = float(((X - centroids[inv]) ** 2).sum())
    return 1.0 if within == 0 else between * (n - k) / (within * (k - 1))


def davies_bouldin(backend: Backend, X, labels) -> float | None:
    """Mean over clusters of the worst (scatter_i + scatter_j) / centroid distance (sklearn's definition)."""
    xp = backend.xp
    c = _clusters(xp, X, labels)
    if c is None:
        return None
    X, centroids, inv, sizes = c
    k = centroids.shape[0]
    scatter = xp.bincount(inv, weights=xp.linalg.norm(X - centroids[inv], axis=1), minlength=k) / sizes
    sq = (centroids * centroids).sum(axis=1)
    sep = xp.sqrt(xp.maximum(sq[:, None] + sq[None, :] - 2.0 * centroids @ centroids.T, 0.0))  # k x k, no k*k*d
    if float(scatter.max()) == 0 or float(sep.max()) == 0:
        return 0.0
    ratio = (scatter[:, None] + scatter[None, :]) / xp.where(sep == 0, xp.inf, sep)
    ratio[xp.arange(k), xp.arange(k)] = 0.0
    return float(ratio.max(axis=1).mean())


def _clusters(xp, X, labels):
    """(X in float64, centroids, cluster index per row, sizes), or None when 2 <= k < n does not hold.

    Centroids come from one weighted bincount per dimension: O(n) memory whatever the number of clusters."""
    X = xp.asarray(X, dtype=xp.float64)
    _, inv, sizes = xp.unique(labels, return_inverse=True, return_counts=True)
    inv, k = inv.ravel(), int(sizes.shape[0])
    if not 1 < k < X.shape[0]:
        return None
    sums = xp.stack([xp.bincount(inv, weights=X[:, j], minlength=k) for j in range(X.shape[1])], axis=1)
    return X, sums / sizes[:, None], inv, sizes
