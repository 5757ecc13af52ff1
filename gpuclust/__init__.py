"""gpuclust: zero-shot clustering of image datasets with pretrained encoders, on GPU (RAPIDS) or CPU.

Importing this package loads no torch, cupy, cuml or dask; each stage imports what it needs when it runs.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "RunConfig", "run_pipeline"]


def __getattr__(name: str):
    # Lazy so that `import gpuclust` stays light.
    if name == "RunConfig":
        from .config import RunConfig

        return RunConfig
    if name == "run_pipeline":
        from .pipeline import run_pipeline

        return run_pipeline
    raise AttributeError(name)
