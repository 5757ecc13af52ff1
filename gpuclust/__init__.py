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

__version__ = "0.1.0"

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
