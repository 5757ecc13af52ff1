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
