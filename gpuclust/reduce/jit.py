"""umap-learn's compiled functions kept on disk between processes.

umap-learn compiles its numba functions afresh in every process (its decorators do not ask numba to cache): in a
profile of one run of the study's protocol on 2,000 x 1,280 embeddings on the 2-core machine, 11.5 s of the 16.6 s
UMAP fit was numba compiling, 5.6 s the 500 epochs themselves. Turning numba's own cache on for umap-learn's
module-level functions before the first fit (numba then writes the machine code beside umap-learn, or in its user
cache when that folder is read-only, and checks it against the source file's time stamp) took the fit of a fresh
process from 12.7 s to 6.2 s there, with an identical layout. Functions umap-learn builds inside a call (a new
dispatcher each time) stay uncached.
"""
from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)

_done = False


def cache_umap_learn() -> int:
    """Turn numba's disk cache on for umap-learn's compiled functions (once per process); returns how many."""
    global _done
    if _done:
        return 0
    _done = True
    try:
        from numba.core.registry import CPUDispatcher
        from umap import layouts, spectral, umap_, utils
    except ImportError:  # no umap-learn: the GPU-only install
        return 0
    count = 0
    for module in (umap_, layouts, utils, spectral):
        for obj in vars(module).values():
            if isinstance(obj, CPUDispatcher) and getattr(obj.py_func, "__module__", "").startswith("umap"):
                obj.enable_caching()
                count += 1
    log.debug("umap: numba's disk cache on for %d umap-learn functions", count)
    return count


def warm(rows: int = 400, seed: int = 0) -> tuple[int, float]:
    """Compile umap-learn's functions into numba's disk cache by fitting the pipeline's own UMAP (the same code path
    and dtypes as a run: faiss's exact graph, float32 rows) on `rows` random rows, to 50 and to 2 dimensions (the
    reduce and map stages), a few epochs each. setup.sh and the Docker image call it once, so that a new
    environment's first run does not pay the compile: 5.4 s of the default job's reduce stage in a fresh clone on
    the 2-core machine (19.7 s against 14.3 s), and a container started from the image would otherwise pay it on
    every start. Returns (functions cached, seconds)."""
    import numpy as np

    from ..backend import cpu_backend
    from . import umap

    start = time.perf_counter()
    count = cache_umap_learn()
    X = np.random.default_rng(seed).standard_normal((rows, 16)).astype(np.float32)
    for dims, params in ((50, {}), (2, {"min_dist": 0.1})):
        umap(X, dims, {**params, "n_epochs": 5}, cpu_backend(), seed)
    return count, time.perf_counter() - start


if __name__ == "__main__":
    try:
        import umap as _umap_learn  # noqa: F401
    except ImportError:
        print("jit: umap-learn is not installed; nothing to compile")
    else:
        n, seconds = warm()
        print(f"jit: umap-learn's compiled functions ({n} with numba's disk cache) ready in {seconds:.1f} s")
