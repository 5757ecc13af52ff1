"""Helpers shared by the tests (importable from every test folder: pytest's pythonpath includes tests/)."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def store_lock(store: Path):
    """Held while a fixture fills the shared test store: parallel test workers (`-n 2`) wait for one another's
    encoding and then reuse it, rather than encoding the same images twice at once."""
    import fcntl

    with open(Path(store) / ".test-lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# One thread per numeric library. A run's labels can depend on the thread count (k-means and BLAS reduce in another
# order, and UMAP amplifies the rounding into another layout), and a test process may find OMP_NUM_THREADS set by an
# earlier test's library (dask's workers): tests that compare a CLI run with another computation pin both sides here.
ONE_THREAD = {v: "1" for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")}


@contextlib.contextmanager
def one_thread():
    """This process's numeric libraries (OpenMP, BLAS) on one thread for the block, as ONE_THREAD pins a CLI run."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


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


def write_digit_shard(path: Path, first: int, n: int) -> None:
    """A webdataset tar shard of real images: scikit-learn's digits `first` .. `first + n - 1` as PNG members
    (`sNNNN.png`) with their `.cls` labels."""
    import io
    import tarfile

    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    with tarfile.open(path, "w") as tar:
        for i in range(first, first + n):
            buf = io.BytesIO()
            Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8)).save(buf, format="PNG")
            for name, data in ((f"s{i:04d}.png", buf.getvalue()), (f"s{i:04d}.cls", str(int(d.target[i])).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
