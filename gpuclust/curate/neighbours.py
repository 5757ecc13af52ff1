"""Nearest neighbours by cosine similarity, in bounded memory, for the curate stage (duplicates, outliers, placing
new images): the k most similar rows of a base set for each query row.

This first version searches exactly, a block of queries at a time against every base row (a matrix product on the
backend's device, then a partial sort), so memory stays at one block x base rows whatever the size.
"""
from __future__ import annotations

from typing import Any

# Query rows per block: a block's similarities (block x base rows, float32) stay under this many elements.
BLOCK_ELEMENTS = 1 << 25


def unit_rows(backend, X) -> Any:
    """X's rows scaled to unit length (float32), so that a dot product is the cosine similarity; zero rows stay 0."""
    xp = backend.xp
    X = backend.asarray(X, dtype=xp.float32)
    norms = xp.linalg.norm(X, axis=1, keepdims=True)
    return X / xp.where(norms > 0, norms, 1)


def top_k_cosine(backend, base, k: int, queries=None) -> tuple[Any, Any]:
    """(indices, similarities), each (n_queries, k) on the backend's device, most similar first: for each query row
    the k base rows of highest cosine similarity. `base` and `queries` are unit rows (unit_rows). With queries=None
    the base rows query themselves and a row is never its own neighbour. k is cut to the rows there are."""
    xp = backend.xp
    self_query = queries is None
    Q = base if self_query else queries
    n = base.shape[0]
    k = max(0, min(k, n - 1 if self_query else n))
    idx = xp.empty((Q.shape[0], k), dtype=xp.int64)
    sim = xp.empty((Q.shape[0], k), dtype=xp.float32)
    block = max(1, BLOCK_ELEMENTS // max(n, 1))
    for start in range(0, Q.shape[0], block):
        S = Q[start:start + block] @ base.T
        if self_query:
            rows = xp.arange(S.shape[0])
            S[rows, start + rows] = -xp.inf
        top = xp.argpartition(-S, k - 1, axis=1)[:, :k] if 0 < k < n else xp.argsort(-S, axis=1)[:, :k]
        vals = xp.take_along_axis(S, top, axis=1)
        order = xp.argsort(-vals, axis=1)
        idx[start:start + block] = xp.take_along_axis(top, order, axis=1)
        sim[start:start + block] = xp.take_along_axis(vals, order, axis=1)
    return idx, sim
