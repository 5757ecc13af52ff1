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


def test_warming_writes_the_layout_functions_to_numbas_cache(tmp_path):
    """`python -m gpuclust.reduce.jit` (setup.sh and the Docker image run it) fits the pipeline's UMAP on a few
    random rows, which compiles umap-learn's functions into numba's disk cache: here NUMBA_CACHE_DIR, so that the
    environment's own cache is left alone."""
    import os
    import subprocess
    import sys

    from helpers import ROOT

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "gpuclust.reduce.jit"], capture_output=True, text=True, timeout=300,
                       cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr
    assert "compiled functions" in r.stdout
    cached = {p.name.split("-")[0] for p in tmp_path.rglob("*.nbi")}  # module.function-line.pyXY.nbi
    assert any("optimize_layout_euclidean" in name for name in cached), cached
    assert len(cached) >= 3, cached
