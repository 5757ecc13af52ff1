"""Exact k-nearest-neighbour graphs, in the layout UMAP takes as `precomputed_knn`.

faiss (GPU index when the installed faiss has GPUs and the run is on the GPU twin, else faiss-cpu) searches the rows
against themselves in blocks; without faiss, or for metrics other than euclidean, scikit-learn's brute force does.
Each row's own index is put in column 0 with distance 0 (duplicates may otherwise come first), and faiss's squared
L2 distances are square-rooted, as UMAP expects the metric's own distances.
"""
from __future__ import annotations

import logging

import numpy as np

from ..backend import Backend
from ..errors import UserError, require

log = logging.getLogger(__name__)

FAISS_INSTALL = "pip install faiss-cpu  (or faiss-gpu-cu12 for GPU indexes)"


def faiss_knn(X, k: int, backend: Backend, block: int = 65536) -> tuple:
    """(indices int64 (n, k), distances float32 (n, k)) on the backend's array module; column 0 is each row itself."""
    faiss = require("faiss", "--reduce-param knn=faiss", FAISS_INSTALL)
    n, d = X.shape
    _check_k(k, n)
    host = np.ascontiguousarray(backend.to_host(X), dtype=np.float32)
    index = faiss.IndexFlatL2(d)
    if backend.is_gpu and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
        log.info("knn: faiss GPU flat index")
    index.add(host)
    # k + 1: when duplicates tie with the row itself, the row may come second; one spare column absorbs that.
    kk = min(k + 1, n)
    dist = np.empty((n, kk), np.float32)
    idx = np.empty((n, kk), np.int64)
    for start in range(0, n, block):
        dist[start:start + block], idx[start:start + block] = index.search(host[start:start + block], kk)
    idx, dist = _self_first(idx, np.sqrt(np.maximum(dist, 0)), k)  # faiss L2 distances are squared
    xp = backend.xp
    return xp.asarray(idx), xp.asarray(dist)


def brute_knn(X, k: int, backend: Backend, metric: str = "euclidean") -> tuple:
    """`faiss_knn`'s result from scikit-learn's brute-force search (BLAS, any metric sklearn knows); for machines
    without faiss and for metrics other than euclidean. About 2.5x slower than faiss-cpu on euclidean rows."""
    from sklearn.neighbors import NearestNeighbors

    n = X.shape[0]
    _check_k(k, n)
    host = np.asarray(backend.to_host(X), dtype=np.float32)
    kk = min(k + 1, n)
    dist, idx = NearestNeighbors(n_neighbors=kk, algorithm="brute", metric=metric).fit(host).kneighbors(host)
    idx, dist = _self_first(idx.astype(np.int64), dist.astype(np.float32), k)
    xp = backend.xp
    return xp.asarray(idx), xp.asarray(dist)


# Metrics whose distances `ExactQueryIndex` recomputes directly (`_direct`), the same in any process.
DIRECT_METRICS = ("euclidean", "l2", "cosine", "manhattan", "l1", "cityblock", "chebyshev")


def _direct(metric: str, X, Y):
    """Distances between rows X (n, 1, d) and their candidates Y (n, c, d), float64, without BLAS: (n, c)."""
    if metric in ("euclidean", "l2"):
        diff = X - Y
        return np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
    if metric == "cosine":  # as scikit-learn: a zero row is at distance 1 from everything
        norms = np.sqrt(np.einsum("ijk,ijk->ij", X, X)) * np.sqrt(np.einsum("ijk,ijk->ij", Y, Y))
        cos = np.einsum("ijk,ijk->ij", np.broadcast_to(X, Y.shape), Y) / np.where(norms > 0, norms, 1.0)
        return np.clip(1.0 - cos, 0.0, 2.0)
    if metric == "chebyshev":
        return np.abs(X - Y).max(axis=2)
    return np.abs(X - Y).sum(axis=2)  # manhattan, l1, cityblock


def has_faiss() -> bool:
    """Whether faiss imports (this imports it)."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def exact_knn(X, k: int, backend: Backend, metric: str = "euclidean") -> tuple:
    """(indices, distances, what searched): faiss for euclidean rows when it is installed, else scikit-learn."""
    if metric in ("euclidean", "l2") and has_faiss():
        return (*faiss_knn(X, k, backend), "faiss")
    return (*brute_knn(X, k, backend, metric), "sklearn brute force")


def _check_k(k: int, n: int) -> None:
    if not 1 <= k <= n:
        raise UserError(f"knn: k = {k} neighbours needs 1 <= k <= {n} rows")


def _self_first(idx, dist, k: int) -> tuple:
    """Each row's own index in column 0 with distance 0, its other neighbours after it in order, k columns.

    An exact search returns the row itself first unless an exact duplicate ties with it; UMAP (both libraries)
    needs the row itself in column 0.
    """
    n, kk = idx.shape
    rows = np.arange(n)
    for r in np.flatnonzero(idx[:, 0] != rows):  # rows whose own index is absent or not first
        others = idx[r] != r
        idx[r] = np.concatenate([[r], idx[r, others]])[:kk]
        dist[r] = np.concatenate([[0.0], dist[r, others]])[:kk]
    dist[:, 0] = 0.0
    return np.ascontiguousarray(idx[:, :k]), np.ascontiguousarray(dist[:, :k], dtype=np.float32)


class ExactQueryIndex:
    """Exact neighbours for umap-learn's `transform`, in place of its pynndescent search index.

    umap-learn places a new row from its neighbours among the fitted rows, found by pynndescent's approximate query.
    On 768-d blobs (100 classes, 8,000 fitted rows) that query returned neighbours of the row's own class only 67% of
    the time where the exact neighbours were 100% pure, and the transformed rows landed in the wrong cluster as often.
    umap-learn has no option for exact transform neighbours, so this object stands in for the index: the same
    `query(X, k, epsilon)` call, answered by a faiss flat index for euclidean rows when faiss is installed, else by
    scikit-learn's brute force. 20,000 queries against 20,000 x 768 rows, k = 30, on this project's 2 cores: faiss
    8.4 s where scikit-learn took 35.8 s, and 11.5 s with the direct distances of `_exact_distances`.
    """

    _angular_trees = False  # read by umap-learn to choose its epsilon, which an exact search ignores

    def __init__(self, data, metric: str = "euclidean"):
        self.data, self.metric, self._search = data, metric, None

    def query(self, X, k: int, epsilon: float | None = None):
        """(int32 indices into the fitted rows, float32 distances) of each row of X's k exact nearest neighbours,
        nearest first; `epsilon` is ignored. The search is built on the first call."""
        if self._search is None:
            self._search = self._build()
        idx, dist = self._search(np.asarray(X, dtype=np.float32), k)
        return idx.astype(np.int32), dist.astype(np.float32)

    def _build(self):
        if self.metric in ("euclidean", "l2") and has_faiss():
            import faiss

            index = faiss.IndexFlatL2(self.data.shape[1])
            index.add(np.ascontiguousarray(self.data, dtype=np.float32))
            return lambda X, k: self._exact_distances(X, index.search(np.ascontiguousarray(X), self._spare(k))[1], k)
        from sklearn.neighbors import NearestNeighbors

        nn = NearestNeighbors(algorithm="brute", metric=self.metric).fit(self.data)
        if self.metric in DIRECT_METRICS:
            return lambda X, k: self._exact_distances(X, nn.kneighbors(X, n_neighbors=self._spare(k),
                                                                       return_distance=False), k)
        return lambda X, k: nn.kneighbors(X, n_neighbors=k)[::-1]

    def _spare(self, k: int) -> int:
        return min(k + 4, len(self.data))

    def _exact_distances(self, X, idx, k: int, block: int = 256):
        """(idx, distances) of the k nearest among the candidates `idx` (a few more than k, so that the k-th is
        decided by the direct distance too), each candidate's distance computed again, directly (`_direct`), and
        sorted by it (then by index). faiss and scikit-learn compute |x|^2 + |y|^2 - 2 x.y (and cosines) with BLAS,
        whose last bits depend on its blocking and thread count: 7.6e-6 apart between 1 and 2 threads on 3,072-d
        rows. Dask workers run one thread, the main process several, and UMAP's transform draws its random numbers
        in sequence over all rows, so one changed bit moved ~7% of a chunk's rows. The direct distance is the same
        in any process."""
        dist = np.empty(idx.shape, np.float64)
        for a in range(0, len(X), block):
            dist[a:a + block] = _direct(self.metric, X[a:a + block, None, :].astype(np.float64),
                                        self.data[idx[a:a + block]].astype(np.float64))
        order = np.lexsort((idx, dist), axis=-1)[:, :k]
        return np.take_along_axis(idx, order, axis=1), np.take_along_axis(dist, order, axis=1)

    def __getstate__(self):  # shipped to Dask workers inside the model: the data, not the built search
        return {**self.__dict__, "_search": None}
