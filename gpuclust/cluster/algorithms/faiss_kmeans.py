"""k-means by faiss for millions of rows (ours around faiss: gpuclust/cluster/faiss_kmeans.py)."""
from __future__ import annotations

from ...backend import Algorithm, register
from ...errors import UserError
from ..checks import check_range


def _translate(params: dict, twin: str) -> dict:
    return {**params, "gpu": twin == "gpu"}


def _gap(p: dict) -> str | None:
    from ..faiss_kmeans import faiss_gpus

    return None if faiss_gpus() > 0 else "a GPU build of faiss"


def _check(p: dict) -> None:  # `init` is checked by FaissKMeans itself, against the installed faiss
    for key in ("n_init", "max_iter", "max_points_per_centroid"):  # faiss takes C ints and has no tolerance
        check_range(p, key, 1, 2**31, "must be a whole number from 1 to 2^31-1")
        if key in p and p[key] is not None and p[key] != int(p[key]):
            raise UserError(f"--cluster-param {key}={p[key]}: must be a whole number")
    if "gpu" in p:
        raise UserError("--cluster-param gpu: the run's --device decides where faiss_kmeans runs")


FAISS_KMEANS = register(Algorithm(
    "faiss_kmeans",
    "gpuclust.cluster.faiss_kmeans.FaissKMeans",
    "gpuclust.cluster.faiss_kmeans.FaissKMeans",
    translate=_translate,
    gpu_check=_gap,
    notes="faiss k-means (sampled training, exact assignment); GPU twin with a GPU build of faiss",
    cpu_install="pip install faiss-cpu",
    help="k-means by faiss for millions of rows: trained on max_points_per_centroid=256 rows per cluster, every row "
         "then assigned; max_iter=25, init=k-means++; faiss-cpu / faiss GPU build",
    k_param="n_clusters",
    seeded=True,
    check=_check,
))
