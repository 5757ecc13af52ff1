"""umap-learn's numba functions cached on disk (reduce/jit.py): caching on, the same layout."""
import numpy as np
import pytest

pytest.importorskip("umap")


def test_umap_learn_functions_cache_to_disk_and_the_layout_is_unchanged():
    from numba.core.caching import NullCache
    from umap import layouts

    from gpuclust.backend import cpu_backend
    from gpuclust.reduce import jit, umap

    X = np.random.default_rng(0).normal(size=(300, 16)).astype(np.float32)
    before, _ = umap(X, 5, {"n_epochs": 50}, cpu_backend(), 0)
    assert jit._done  # the first CPU fit turned it on
    assert not isinstance(layouts._nb_optimize_layout_euclidean_single_epoch._cache, NullCache)
    assert jit.cache_umap_learn() == 0  # once per process
    after, _ = umap(X, 5, {"n_epochs": 50}, cpu_backend(), 0)
    np.testing.assert_array_equal(before, after)
