"""Shared fixtures. `gpu`-marked tests are skipped where CuPy, cuML or a CUDA device is missing."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# As `import gpuclust` does, before any test module loads scikit-learn's or faiss's OpenMP runtime: two test workers on
# two cores would otherwise spin each other's OpenMP threads off the cores (docs/troubleshooting.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _gpu_ok() -> bool:
    try:
        from gpuclust.backend import gpu_available

        return gpu_available()[0]
    except Exception:
        return False


def _n_gpus() -> int:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount()
    except Exception:
        return 0


def pytest_collection_modifyitems(config, items):
    gpu = _gpu_ok()
    ngpu = _n_gpus() if gpu else 0
    for item in items:
        if "gpu" in item.keywords and not gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU with CuPy and cuML"))
        if "multigpu" in item.keywords and ngpu < 2:
            item.add_marker(pytest.mark.skip(reason="needs two or more GPUs"))


@pytest.fixture(scope="session", autouse=True)
def default_store(tmp_path_factory) -> Path:
    """Runs that name no --cache-dir (and the CLI subprocesses they start) write to a store of this session, not to
    the user's ~/.cache/gpuclust, and parallel test workers (`-n 2`) each have their own."""
    import os

    path = tmp_path_factory.mktemp("default-store")
    old = os.environ.get("GPUCLUST_CACHE")
    os.environ["GPUCLUST_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("GPUCLUST_CACHE", None)
    else:
        os.environ["GPUCLUST_CACHE"] = old


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One embedding store for the whole session, so each real encoding happens once; with `-n 2` the workers share
    it (fixtures that encode into it hold `helpers.store_lock`, so one worker encodes and the other reuses)."""
    import os

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # pytest-N/, above each worker's popen-gwK/
    path = base / "store"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(params=["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def backend(request):
    from gpuclust.backend import resolve_backend

    return resolve_backend(request.param)
