"""Nearest neighbours by cosine similarity, in bounded memory, for the curate stage (duplicates, outliers, placing
new images): the k most similar rows of a base set for each query row.

Two searches, one interface (`NeighbourIndex`, and `top_k_cosine` for one search):

- exact: a block of queries at a time against every base row (a matrix product on the backend's device, then a
  partial sort), so memory stays at one block x base rows whatever the size. The GPU twin always searches exactly.
- faiss IVF (CPU twin, from IVF_MIN_ROWS rows): IndexIVFFlat with inner product over unit rows (so the score is the
  cosine), nlist = 4 sqrt(n) lists from a spherical k-means of a sample, NPROBE lists searched per query. Exact
  search costs n^2 d: on the 2-core CPU it took 8 s at 10,000 x 768 and 67 s at 30,000, where IVF took 4 s and 16 s.
  The index holds the n x d unit rows (float32, 3 GB at 1,000,000 x 768), added and searched a chunk at a time, so
  a streamed X (RowChunks) is never held a second time and nothing is n x n.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from ..errors import require

log = logging.getLogger(__name__)

# Query rows per block: a block's similarities (block x base rows, float32) stay under this many elements.
BLOCK_ELEMENTS = 1 << 25
# From this many base rows the CPU twin searches with faiss IVF instead of exactly (see the module docstring).
IVF_MIN_ROWS = 20_000
# Lists searched per query. benchmarks/bench_duplicates.py --speed measures the recall of the pairs at cosine >= 0.9
# against exact search: 16 lists kept at least 99.9% of them on planted copies at 100k and on real image
# embeddings (docs/curate.md), 4 lost up to a few percent.
NPROBE = 16
TRAIN_PER_LIST = 30  # k-means sample rows per list (faiss asks for 39; 30 costs a quarter less and trains as well)
SEARCH_ROWS = 16_384  # query rows per faiss search call
FAISS_INSTALL = "pip install faiss-cpu"


def unit_rows(backend, X) -> Any:
    """X's rows scaled to unit length (float32), so that a dot product is the cosine similarity; zero rows stay 0."""
    xp = backend.xp
    X = backend.asarray(X, dtype=xp.float32)
    norms = xp.linalg.norm(X, axis=1, keepdims=True)
    return X / xp.where(norms > 0, norms, 1)


def as_chunks(X):
    """X as RowChunks: a streamed X as it is, an array behind the same interface (no copy)."""
    from ..stream import ArrayRows, RowChunks

    return X if isinstance(X, RowChunks) else ArrayRows(X)


class NeighbourIndex:
    """The base rows X (an array on the backend, or RowChunks) prepared once for any number of searches: unit rows
    on the device for exact search, or a faiss IVF index on the CPU twin from `ivf_min_rows` rows."""

    def __init__(self, backend, X, ivf_min_rows: int | None = None, nprobe: int | None = None, seed: int = 0):
        self.backend, self.source = backend, as_chunks(X)
        self.n, self.dim = self.source.n_rows, self.source.dim
        limit = IVF_MIN_ROWS if ivf_min_rows is None else ivf_min_rows
        self.ivf = not backend.is_gpu and self.n >= max(limit, 2)
        if self.ivf:
            self.index = _ivf_index(self.source, self.n, self.dim, nprobe or NPROBE, seed)
        else:
            self.U = unit_rows(backend, self.source.load(backend))  # below ivf_min_rows rows (or on the GPU)

    def rows(self, positions) -> Any:
        """Unit rows of the base at sorted `positions` (read from the source, chunk by chunk when streamed)."""
        if not self.ivf:
            return self.U[self.backend.asarray(positions)]
        return unit_rows(self.backend, self.backend.to_host(self.source.take(np.asarray(positions))))

    def search(self, k: int, queries=None, positions=None) -> tuple[Any, Any]:
        """(indices, similarities), each (n_queries, k), most similar first. `queries`: unit rows of other rows;
        else the base rows at sorted `positions` (default all) query the base and are never their own neighbour.
        k is cut to the rows there are; IVF gives index -1 and similarity -inf where it found fewer than k."""
        self_query = queries is None
        k = max(0, min(k, self.n - 1 if self_query else self.n))
        if not self.ivf:
            if self_query and positions is None:
                return _exact(self.backend, self.U, k, self.U, 0)
            Q, own = (queries, None) if not self_query else (self.rows(positions), positions)
            return _exact(self.backend, self.U, k, Q, own)
        return _ivf_search(self, k, queries, positions)


def top_k_cosine(backend, base, k: int, queries=None) -> tuple[Any, Any]:
    """(indices, similarities), each (n_queries, k) on the backend's device, most similar first: for each query row
    the k base rows of highest cosine similarity. `base` and `queries` are unit rows (unit_rows); base may also be
    RowChunks. With queries=None the base rows query themselves and a row is never its own neighbour. k is cut to the
    rows there are. Exact below IVF_MIN_ROWS base rows (always on the GPU), faiss IVF above (NeighbourIndex)."""
    return NeighbourIndex(backend, base).search(k, queries)


def _exact(backend, base, k: int, Q, own) -> tuple[Any, Any]:
    """Exact search of Q against base. own: None (Q is not the base), 0 (Q is the base itself) or the base
    positions of Q's rows; a row's own position is never its neighbour."""
    xp = backend.xp
    n = base.shape[0]
    idx = xp.empty((Q.shape[0], k), dtype=xp.int64)
    sim = xp.empty((Q.shape[0], k), dtype=xp.float32)
    block = max(1, BLOCK_ELEMENTS // max(n, 1))
    for start in range(0, Q.shape[0], block):
        S = Q[start:start + block] @ base.T
        if own is not None:
            rows = xp.arange(S.shape[0])
            cols = start + rows if isinstance(own, int) else backend.asarray(own[start:start + block])
            S[rows, cols] = -xp.inf
        top = xp.argpartition(-S, k - 1, axis=1)[:, :k] if 0 < k < n else xp.argsort(-S, axis=1)[:, :k]
        vals = xp.take_along_axis(S, top, axis=1)
        order = xp.argsort(-vals, axis=1)
        idx[start:start + block] = xp.take_along_axis(top, order, axis=1)
        sim[start:start + block] = xp.take_along_axis(vals, order, axis=1)
    return idx, sim


def _unit_host(block) -> np.ndarray:
    """Host rows as contiguous float32 unit rows, as faiss takes them."""
    block = np.ascontiguousarray(np.asarray(block, dtype=np.float32))
    norms = np.linalg.norm(block, axis=1, keepdims=True)
    return np.ascontiguousarray(block / np.where(norms > 0, norms, 1))


def _host(block) -> np.ndarray:
    return block.get() if hasattr(block, "__cuda_array_interface__") else np.asarray(block)


def _ivf_index(source, n: int, dim: int, nprobe: int, seed: int):
    """An IndexIVFFlat (inner product) over the unit rows of `source`: lists from a spherical k-means of a seeded
    sample, rows added a chunk at a time."""
    faiss = require("faiss", f"near-neighbour search over {n:,} rows", FAISS_INSTALL)
    nlist = max(1, min(int(4 * math.sqrt(n)), n // 8))
    sample = np.sort(np.random.default_rng(seed).choice(n, min(n, nlist * TRAIN_PER_LIST), replace=False))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.spherical = True  # centroids on the unit sphere, like the rows (cosine lists)
    index.cp.seed = seed
    index.cp.min_points_per_centroid = 1  # no warning for a sample under 39 rows a list
    index.train(_unit_host(_host(source.take(sample))))
    for _, block in source.chunks():
        index.add(_unit_host(_host(block)))
    index.nprobe = min(nprobe, nlist)
    log.info("neighbours: faiss IVF over %d rows, %d lists, %d probed", n, nlist, index.nprobe)
    return index


def _ivf_search(nx: NeighbourIndex, k: int, queries, positions) -> tuple[Any, Any]:
    """Search the IVF index: external queries as given, else the base rows (all, or at `positions`) a chunk at a
    time with one extra neighbour, their own row dropped."""
    backend = nx.backend
    if queries is not None:
        D, I = _faiss_search(nx.index, _unit_host(backend.to_host(queries)), k)
        return backend.asarray(I), backend.asarray(D)
    if k == 0:
        m = nx.n if positions is None else len(positions)
        return backend.asarray(np.empty((m, 0), np.int64)), backend.asarray(np.empty((m, 0), np.float32))
    if positions is None:
        parts = [(np.arange(start, start + len(b)), _unit_host(_host(b))) for start, b in nx.source.chunks()]
    else:
        positions = np.asarray(positions, dtype=np.int64)
        parts = [(positions, _unit_host(backend.to_host(nx.rows(positions))))]
    idx, sim = [], []
    for own, Q in parts:
        D, I = _faiss_search(nx.index, Q, k + 1)
        keep = I != own[:, None]
        keep[keep.all(axis=1), -1] = False  # own row not found among them: drop the last instead
        idx.append(I[keep].reshape(len(own), k))
        sim.append(D[keep].reshape(len(own), k))
    return backend.asarray(np.concatenate(idx)), backend.asarray(np.concatenate(sim))


def _faiss_search(index, Q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """index.search in blocks of SEARCH_ROWS; missing results as index -1 and similarity -inf."""
    D = np.empty((len(Q), k), np.float32)
    I = np.empty((len(Q), k), np.int64)
    for s in range(0, len(Q), SEARCH_ROWS):
        D[s:s + SEARCH_ROWS], I[s:s + SEARCH_ROWS] = index.search(Q[s:s + SEARCH_ROWS], k)
    D[I < 0] = -np.inf
    return D, I
