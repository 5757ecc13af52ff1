"""Shared fixtures. `gpu`-marked tests are skipped where CuPy, cuML or a CUDA device is missing."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


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


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One embedding store for the whole session, so each real encoding happens once."""
    return tmp_path_factory.mktemp("store")


@pytest.fixture(params=["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def backend(request):
    from gpuclust.backend import resolve_backend

    return resolve_backend(request.param)


def run_cli(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m gpuclust.run ARGS` in a subprocess, as a user would call it."""
    return subprocess.run([sys.executable, "-m", "gpuclust.run", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


def write_digit_images(root: Path, n_per_class: int = 20, classes=(0, 1, 7), ext: str = ".png") -> np.ndarray:
    """Real images on disk: scikit-learn's 8x8 digits, upscaled, one folder per class. Returns the labels written."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    labels = []
    for c in classes:
        (root / f"class_{c}").mkdir(parents=True, exist_ok=True)
        idx = np.flatnonzero(d.target == c)[:n_per_class]
        for j, i in enumerate(idx):
            img = Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8)).resize((32, 32))
            img.save(root / f"class_{c}" / f"{j:03d}{ext}")
            labels.append(c)
    return np.array(labels)
