"""Exact k-nearest-neighbour graphs from faiss, in the layout UMAP takes as `precomputed_knn`.

faiss (GPU index when the installed faiss has GPUs and the run is on the GPU twin, else faiss-cpu) searches the rows
against themselves in blocks; each row's own index is put in column 0 with distance 0 (duplicates may otherwise
come first), and faiss's squared L2 distances are square-rooted, as UMAP expects euclidean distances.
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
    if not 1 <= k <= n:
        raise UserError(f"knn: k = {k} neighbours needs 1 <= k <= {n} rows")
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
    rows = np.arange(n)
    is_self = idx == rows[:, None]
    # Rows whose own index is absent or not first: move it to column 0 (distance 0) and keep the others in order.
    fix = ~is_self[:, 0]
    if fix.any():
        for r in np.flatnonzero(fix):
            others = [j for j in range(kk) if idx[r, j] != r]
            idx[r] = np.concatenate([[r], idx[r, others]])[:kk]
            dist[r] = np.concatenate([[0.0], dist[r, others]])[:kk]
    dist[:, 0] = 0.0
    idx, dist = idx[:, :k], np.sqrt(np.maximum(dist[:, :k], 0))
    xp = backend.xp
    return xp.asarray(idx), xp.asarray(dist)
