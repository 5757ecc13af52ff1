"""The adjusted Rand index between every pair of partitions, under many row weightings at once.

scikit-learn's `adjusted_rand_score` takes no row weights and builds its contingency table anew for each call; the
confidence of a pick needs pairs x resamples of them (a 30-run sweep: 435 pairs x 50 bootstrap resamples), where a
resample is a vector of row counts. Here each pair's contingency table is one sparse product, (resamples x rows) by
(rows x occupied cells), for every resample at once; the index is then the usual formula on pair counts (Hubert &
Arabie), equal to scikit-learn's on unweighted rows and to its value on the rows repeated by their counts (tested).
"""
from __future__ import annotations

import numpy as np


def _codes(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels as 0..k-1 (noise, -1, one cluster of its own, as the study and gpuclust's metrics count it)."""
    uniq, inv = np.unique(np.asarray(labels), return_inverse=True)
    return inv.ravel().astype(np.int64), len(uniq)


def _pairs(x: np.ndarray) -> np.ndarray:
    return x * (x - 1.0) / 2.0


def ari_weighted(a: np.ndarray, b: np.ndarray, W: np.ndarray) -> np.ndarray:
    """The ARI of partitions `a` and `b` of the same rows under each row weighting in W (weightings x rows, row
    counts): one value per weighting."""
    ca, ka = _codes(a)
    cb, kb = _codes(b)
    W = np.asarray(W, dtype=np.float64)
    # Only the occupied cells of the contingency table (at most one per row): a table of ka x kb cells would hold
    # (weightings x ka x kb) counts, gigabytes for two runs of 1,000 clusters.
    _, cells = np.unique(ca * kb + cb, return_inverse=True)
    n = W.sum(axis=1)
    both = _pairs(_weighted_counts(cells.ravel(), W)).sum(axis=1)
    in_a = _pairs(_weighted_counts(ca, W)).sum(axis=1)
    in_b = _pairs(_weighted_counts(cb, W)).sum(axis=1)
    total = _pairs(n)
    expected = np.divide(in_a * in_b, total, out=np.zeros_like(total), where=total > 0)
    top = (in_a + in_b) / 2.0
    denom = top - expected
    # Identical trivial partitions (one cluster each, or all singletons) have denom 0: 1.0, as scikit-learn says.
    return np.divide(both - expected, denom, out=np.ones_like(denom), where=denom != 0)


def _weighted_counts(codes: np.ndarray, W: np.ndarray) -> np.ndarray:
    """(weightings, groups): each group's total row weight under each weighting (codes 0..groups-1)."""
    from scipy import sparse

    m, groups = len(codes), int(codes.max()) + 1 if len(codes) else 0
    onehot = sparse.csr_matrix((np.ones(m), (np.arange(m), codes)), shape=(m, groups))
    return np.asarray(onehot.T @ W.T).T


def pair_ari(labels: list[np.ndarray], W: np.ndarray) -> np.ndarray:
    """(weightings, runs, runs): the ARI of every pair of `labels` (partitions of the same rows) under each row
    weighting in W; 1 on the diagonal."""
    n = len(labels)
    out = np.ones((len(W), n, n))
    for i in range(n):
        for j in range(i + 1, n):
            out[:, i, j] = out[:, j, i] = ari_weighted(labels[i], labels[j], W)
    return out
