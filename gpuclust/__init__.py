"""gpuclust: zero-shot clustering of image datasets with pretrained encoders, on GPU (RAPIDS) or CPU.

    import gpuclust as gc
    labels = gc.Clusterer(reducer="umap", n_components=50, clusterer="kmeans", n_clusters=10).fit_predict(X)
    gc.score(y, labels)
    res = gc.cluster_images("imagefolder:~/photos", encoder="efficientnet_lite0")
    res.to_frame(); res.save("runs/photos")

Importing this package loads no torch, cupy, cuml or dask; each name below loads what it needs on first use.
"""
from __future__ import annotations

import importlib
import os

__version__ = "0.1.0"

# OpenMP threads (scikit-learn's KMeans, faiss) that wait for work sleep instead of spinning, unless the user chose
# otherwise: on a machine whose cores are also busy with other work (a test worker, a sweep's other runs, a notebook
# beside a job), spinning threads take the cores from the ones with work. Measured with benchmarks/bench_omp_wait.py
# on 2 cores: beside 2 busy processes, 29 small KMeans fits 9.75 -> 0.22 s and KMeans on 10,000 x 50 4.64 -> 0.19 s;
# beside 1, 1.8-2.1x; alone, no difference (faiss's kNN 1.0-1.1x throughout). It takes effect for OpenMP runtimes
# loaded after this import (the CLI imports gpuclust first) and in every process a run starts.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# public name -> the module that defines it (loaded on first access, so that `import gpuclust` stays light)
_EXPORTS = {
    "Clusterer": "gpuclust.estimator",
    "score": "gpuclust.evaluate.score",
    "outlier_scores": "gpuclust.curate.outliers",
    "cluster_images": "gpuclust.images",
    "embed": "gpuclust.images",
    "ClusterResult": "gpuclust.result",
    "load_dataset": "gpuclust.data",
    "list_datasets": "gpuclust.data",
    "list_clusterers": "gpuclust.cluster",
    "register_clusterer": "gpuclust.cluster",
    "Algorithm": "gpuclust.backend",
    "Encoder": "gpuclust.encode",
    "create_encoder": "gpuclust.encode",
    "list_encoders": "gpuclust.encode",
    "register_encoder": "gpuclust.encode",
    "RunConfig": "gpuclust.config",
    "run_pipeline": "gpuclust.pipeline",
    "assign": "gpuclust.assign",
    "UserError": "gpuclust.errors",
    "find_duplicates": "gpuclust.curate.duplicates",
}

__all__ = ["__version__", "sweep", "explore", *_EXPORTS]


def __getattr__(name: str):
    if name in ("sweep", "explore"):  # callable subpackages: gc.sweep(...) runs run_sweep, gc.explore(...) explore
        return importlib.import_module(f"gpuclust.{name}")
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'gpuclust' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
