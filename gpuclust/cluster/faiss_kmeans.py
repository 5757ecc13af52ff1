"""k-means by faiss, behind scikit-learn's estimator interface, for millions of rows and thousands of clusters.

faiss trains on a seeded sample of at most `max_points_per_centroid` rows per cluster (256 by default, faiss's own)
and then assigns every row to its nearest centroid with one exact search, so its cost grows with k x 256 rows of
training plus one pass over the data, where scikit-learn's KMeans iterates over every row. faiss has no
estimator with `fit_predict`, `labels_`, `cluster_centers_`, hence this small wrapper; the algorithm is faiss's.

The GPU twin is the same class with `gpu=True`, which needs a faiss build with GPUs (PyPI's faiss GPU wheels are
CUDA 12 builds); the backend table runs the CPU twin when the installed faiss has none.
"""
from __future__ import annotations

import numpy as np

from ..errors import UserError, require

FAISS_INSTALL = "pip install faiss-cpu  (or faiss-gpu-cu12 for GPU k-means)"
INITS = {"k-means++": "ClusteringInitMethod_KMEANS_PLUS_PLUS", "random": "ClusteringInitMethod_RANDOM",
         "afk-mc2": "ClusteringInitMethod_AFK_MC2"}


def faiss_gpus() -> int:
    """GPUs the installed faiss can use (0 without faiss or without a GPU build)."""
    try:
        import faiss
    except ImportError:
        return 0
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


class FaissKMeans:
    """k-means (Lloyd's) from faiss: `n_clusters`, `n_init` (faiss `nredo`, best objective kept), `max_iter` (faiss
    `niter`, a fixed count: faiss has no tolerance), `random_state`, `init` (k-means++, the default where faiss
    has it; random; afk-mc2), `max_points_per_centroid` (training sample per cluster), `spherical` (unit-length
    centroids, for cosine)."""

    def __init__(self, n_clusters: int = 8, n_init: int = 1, max_iter: int = 25, random_state: int | None = None,
                 init: str | None = None, max_points_per_centroid: int = 256, spherical: bool = False,
                 gpu: bool = False):
        self.n_clusters, self.n_init, self.max_iter, self.random_state = n_clusters, n_init, max_iter, random_state
        self.init, self.max_points_per_centroid, self.spherical, self.gpu = (
            init, max_points_per_centroid, spherical, gpu)

    def fit(self, X, y=None):
        """Train on X (NumPy or CuPy, copied to host float32) and set cluster_centers_, labels_, inertia_ (squared
        euclidean), n_iter_ and training_rows_; returns self. MissingDependency without faiss; UserError unless
        1 <= n_clusters <= rows."""
        faiss = require("faiss", "--cluster faiss_kmeans", FAISS_INSTALL)
        X = _host_rows(X)
        n, d = X.shape
        init_kw = _init_method(faiss, self.init)
        if not 1 <= self.n_clusters <= n:
            raise UserError(f"faiss_kmeans: {self.n_clusters} clusters need 1 to {n} rows")
        seed = 1234 if self.random_state is None else int(self.random_state) % (2**31)
        km = faiss.Kmeans(d, int(self.n_clusters), niter=int(self.max_iter), nredo=int(self.n_init), seed=seed,
                          max_points_per_centroid=int(self.max_points_per_centroid),
                          min_points_per_centroid=1,  # faiss only prints a warning below its 39; our checks are above
                          spherical=bool(self.spherical), gpu=bool(self.gpu), verbose=False, **init_kw)
        km.train(X)
        self.cluster_centers_ = np.asarray(km.centroids, dtype=np.float32)
        self._index = km.index
        dist, labels = km.index.search(X, 1)
        self.labels_ = labels[:, 0].astype(np.int64)
        if self.spherical:  # the search returned inner products with unit-length centroids
            dist = (X * X).sum(axis=1, keepdims=True) - 2 * dist + 1
        self.inertia_ = float(dist.sum())  # squared euclidean distances to the centroids, as sklearn's
        self.n_iter_ = int(self.max_iter)
        self.training_rows_ = min(n, int(self.max_points_per_centroid) * int(self.n_clusters))
        return self

    def predict(self, X):
        """The nearest centroid of each row of X, as host int64 labels (after `fit`)."""
        return self._index.search(_host_rows(X), 1)[1][:, 0].astype(np.int64)

    def fit_predict(self, X, y=None):
        """`fit(X)` and return its labels_ (host int64)."""
        return self.fit(X).labels_

    def __getstate__(self):  # a faiss index does not pickle; the centroids rebuild it
        return {k: v for k, v in self.__dict__.items() if k != "_index"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        if "cluster_centers_" in state:
            import faiss

            C = self.cluster_centers_
            self._index = faiss.IndexFlatIP(C.shape[1]) if self.spherical else faiss.IndexFlatL2(C.shape[1])
            self._index.add(C)


def _init_method(faiss, init: str | None) -> dict:
    """faiss's `init_method` keyword for `init`. faiss added k-means++ and AFK-MC2 seeding late in 2025; with an
    older faiss the default (None: k-means++ where available) falls back to its random seeding, and asking for
    the others by name is an error naming the upgrade."""
    if init is not None and init not in INITS:
        raise UserError(f"--cluster-param init={init}: choose one of {', '.join(INITS)}")
    have = hasattr(faiss, INITS["k-means++"])
    if init is None:
        return {"init_method": getattr(faiss, INITS["k-means++"])} if have else {}
    if not have:
        if init == "random":
            return {}
        raise UserError(f"--cluster-param init={init} needs a faiss with k-means++ seeding (this one is "
                        f"{getattr(faiss, '__version__', '?')}): pip install -U faiss-cpu, or init=random")
    return {"init_method": getattr(faiss, INITS[init])}


def _host_rows(X) -> np.ndarray:
    if hasattr(X, "__cuda_array_interface__"):  # CuPy: faiss's Python API takes host arrays (GPU indexes copy in)
        X = X.get()
    return np.ascontiguousarray(X, dtype=np.float32)
