"""The cluster stage: reduced embeddings -> labels. Noise (HDBSCAN, DBSCAN, an exemplar-less AP) is labelled -1.

Each clusterer's twins live in the backend's table; this module says which need a number of clusters, which take a
seed, checks parameters the same way for both twins, and applies the study's normalisation for distance thresholds.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Callable

from ..backend import Backend, make_estimator
from ..errors import UserError

log = logging.getLogger(__name__)

LINKAGES = ("ward", "average", "complete", "single")
METRICS = ("euclidean", "l1", "manhattan", "cityblock", "chebyshev", "cosine", "l2")


def _check_range(params: dict, key: str, lo: float, hi: float, text: str) -> None:
    if key in params and params[key] is not None:
        v = params[key]
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise UserError(f"--cluster-param {key}={v}: not a number ({text[0].lower() + text[1:]})")
        if not lo <= v < hi:
            raise UserError(f"--cluster-param {key}={v}: {text}")


def _check_metric(params: dict) -> None:
    if params.get("metric", "euclidean") not in METRICS:
        raise UserError(f"--cluster-param metric={params['metric']}: choose one of {', '.join(METRICS)}")


def _check_kmeans(p: dict) -> None:
    _check_range(p, "n_init", 1, float("inf"), "must be at least 1")
    _check_range(p, "max_iter", 1, float("inf"), "must be at least 1")


def _check_faiss_kmeans(p: dict) -> None:  # `init` is checked by FaissKMeans itself, against the installed faiss
    for key in ("n_init", "max_iter", "max_points_per_centroid"):  # faiss takes C ints and has no tolerance
        _check_range(p, key, 1, 2**31, "must be a whole number from 1 to 2^31-1")
        if key in p and p[key] is not None and p[key] != int(p[key]):
            raise UserError(f"--cluster-param {key}={p[key]}: must be a whole number")
    if "gpu" in p:
        raise UserError("--cluster-param gpu: the run's --device decides where faiss_kmeans runs")


def _check_hdbscan(p: dict) -> None:
    _check_range(p, "min_cluster_size", 2, float("inf"), "must be at least 2")
    _check_range(p, "min_samples", 1, float("inf"), "must be at least 1")
    _check_metric(p)
    if p.get("cluster_selection_method", "eom") not in ("eom", "leaf"):
        raise UserError(f"--cluster-param cluster_selection_method={p['cluster_selection_method']}: eom or leaf")


def _check_agglomerative(p: dict) -> None:
    linkage = p.get("linkage", "ward")
    if linkage not in LINKAGES:
        raise UserError(f"--cluster-param linkage={linkage}: choose one of {', '.join(LINKAGES)}")
    _check_metric(p)
    if linkage == "ward" and p.get("metric", "euclidean") not in ("euclidean", "l2"):
        raise UserError(f"ward linkage needs metric=euclidean (got {p['metric']}); use linkage=average for others")
    _check_range(p, "distance_threshold", 0, float("inf"), "must be a number >= 0")


def _check_affinity(p: dict) -> None:
    _check_range(p, "damping", 0.5, 1.0, "must be in [0.5, 1)")
    _check_range(p, "max_iter", 1, float("inf"), "must be at least 1")
    _check_range(p, "convergence_iter", 1, float("inf"), "must be at least 1")


def _check_spectral(p: dict) -> None:
    _check_range(p, "n_neighbors", 1, float("inf"), "must be at least 1")
    if p.get("assign_labels", "kmeans") not in ("kmeans", "discretize", "cluster_qr"):
        raise UserError(f"--cluster-param assign_labels={p['assign_labels']}: kmeans, discretize or cluster_qr")


def _check_dbscan(p: dict) -> None:
    _check_range(p, "eps", 1e-300, float("inf"), "must be > 0")
    _check_range(p, "min_samples", 1, float("inf"), "must be at least 1")
    _check_metric(p)


@dataclass(frozen=True)
class Clusterer:
    help: str
    needs_k: bool  # takes n_clusters (agglomerative only without distance_threshold)
    seeded: bool  # takes random_state
    check: Callable[[dict], None]


CLUSTERERS: dict[str, Clusterer] = {
    "kmeans": Clusterer("KMeans, --k clusters (default: number of classes); sklearn / cuML", True, True,
                        _check_kmeans),
    "faiss_kmeans": Clusterer("k-means by faiss for millions of rows: trained on max_points_per_centroid=256 "
                              "rows per cluster, every row then assigned; max_iter=25, init=k-means++; faiss-cpu / "
                              "faiss GPU build", True, True, _check_faiss_kmeans),
    "hdbscan": Clusterer("HDBSCAN, finds k; noise -1; sklearn / cuML (euclidean)", False, False, _check_hdbscan),
    "agglomerative": Clusterer("Agglomerative, --k clusters or distance_threshold=T; linkage ward/average/complete/"
                               "single; sklearn / cuML (single linkage)", True, False, _check_agglomerative),
    "affinity": Clusterer("Affinity Propagation (damping, preference, ...); sklearn / CuPy (ours)", False, True,
                          _check_affinity),
    "spectral": Clusterer("Spectral, nearest-neighbour affinity, --k clusters; sklearn / cuML", True, True,
                          _check_spectral),
    "dbscan": Clusterer("DBSCAN (eps, min_samples, metric); noise -1; sklearn / cuML (euclidean, cosine)", False,
                        False, _check_dbscan),
}


def threshold_space(backend: Backend, Z, metric: str = "euclidean"):
    """The study's normalisation for distance thresholds: a spherical z-score (centre, then divide by the mean
    per-dimension standard deviation) and a dimension correction (sqrt(d) for euclidean, d for l1), so one threshold
    carries across datasets and reduced sizes."""
    from ..reduce import normalize

    Z = normalize(backend, Z, "spherical")
    d = Z.shape[1]
    if metric in ("euclidean", "l2"):
        Z = Z / d**0.5
    elif metric in ("l1", "manhattan", "cityblock"):
        Z = Z / d
    return Z


def _resolve_k(method: str, k: int | None, params: dict, n: int, n_classes: int | None) -> dict:
    """n_clusters for the clusterers that take one; {} for the others."""
    spec = CLUSTERERS[method]
    if not spec.needs_k or (method == "agglomerative" and params.get("distance_threshold") is not None):
        if k is not None:
            log.warning("%s finds the number of clusters itself; --k %s is ignored", method, k)
        if method == "agglomerative":
            return {"n_clusters": None}
        return {}
    k = k if k is not None else params.pop("n_clusters", n_classes)
    if k is None:
        raise UserError(f"{method} needs --k N: the dataset has no labels to take the number of classes from")
    if not 1 <= k <= n:
        raise UserError(f"--k {k}: must be between 1 and the number of images ({n})")
    return {"n_clusters": int(k)}


AUTO_K_SAMPLE = 5_000  # rows scored per candidate k (a seeded sample beyond this; the same rows for every k)


def choose_k(Z, Z_score, method: str, params: dict, backend: Backend, seed: int = 0,
             k_range: tuple[int, int] = (2, 30)) -> tuple[int, dict]:
    """`--k auto`: the k in `k_range` whose clustering of Z has the highest silhouette in `Z_score` (the study's
    label-free proxy: the UMAP space). Returns (k, {k: silhouette})."""
    from ..evaluate.silhouette import silhouette_score

    if not CLUSTERERS[method].needs_k:
        raise UserError(f"--k auto: {method} finds the number of clusters itself; drop --k")
    lo, hi = int(k_range[0]), min(int(k_range[1]), Z.shape[0] - 1)
    if not 2 <= lo <= hi:
        raise UserError(f"--k-range {k_range[0]}:{k_range[1]}: need 2 <= min <= max < number of images")
    if hi < int(k_range[1]):
        log.warning("--k-range %d:%d: %d images allow k up to %d; trying %d:%d", lo, int(k_range[1]), Z.shape[0], hi,
                    lo, hi)
    scores = {}
    for k in range(lo, hi + 1):
        labels, _, _ = cluster(Z, method, k, params, backend, seed)
        s = silhouette_score(backend, Z_score, labels, "euclidean", AUTO_K_SAMPLE, AUTO_K_SAMPLE, seed)["value"]
        scores[k] = s if s is not None else float("-inf")
        log.info("k auto: k=%d silhouette %.4f", k, scores[k])
    best = max(scores, key=lambda k: (scores[k], -k))
    return best, scores


def cluster(Z, method: str, k: int | None, params: dict, backend: Backend, seed: int = 0,
            n_classes: int | None = None):
    """Returns (labels as an xp int64 array, twin that ran, resolved parameters)."""
    if method not in CLUSTERERS:
        raise UserError(f"unknown clusterer {method!r}; known: {', '.join(CLUSTERERS)}")
    spec = CLUSTERERS[method]
    n = Z.shape[0]
    if n < 2:
        raise UserError(f"{method} needs at least 2 images")
    params = dict(params)
    spec.check(params)
    p = {**_resolve_k(method, k, params, n, n_classes), **params}
    if spec.seeded:
        p.setdefault("random_state", seed)
    normalize_threshold = p.pop("threshold_normalize", True) if method == "agglomerative" else True
    single_cosine = (method == "agglomerative" and p.get("linkage") == "single" and p.get("metric") == "cosine"
                     and p.get("distance_threshold") is None)  # (a threshold is in cosine units: left as asked)
    if single_cosine:
        Z, p = unit_rows(backend, Z), {**p, "metric": "euclidean"}
    elif method == "agglomerative" and p.get("distance_threshold") is not None:
        if normalize_threshold:
            Z = threshold_space(backend, Z, p.get("metric", "euclidean"))
    elif method == "dbscan":
        Z = Z.copy()  # cuML's cosine DBSCAN rewrites its input in place; Z may share memory with torch's tensor
    est = make_estimator(method, backend, gpu_gap=_size_gap(method, p, n, backend), **p)
    if method != "spectral":
        labels = est.call("fit_predict", backend, Z)
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            labels = est.call("fit_predict", backend, Z)
        _pass_on(caught, est.params)
    resolved = {**est.params, "rows_l2_normalised": True} if single_cosine else est.params
    return backend.xp.asarray(labels).astype(backend.xp.int64), est.twin, resolved


# The share of free device memory cuML's full pairwise single linkage may take. Per pair of rows (cuVS's
# connectivities.cuh and single_linkage.cuh, RAFT's MST solver, as cuML 26.10 calls them): the graph's int32 column
# index and float32 distance (8 bytes), the solver's altered weights in float64 (8), its MST-edge flag (1), and the
# copy of every weight that alteration_max() sorts, with thrust's sort buffer (about 8): about 25 bytes, 26 with a
# margin. The edge count is a 32-bit int, so above 46,340 rows it overflows whatever the memory.
PAIRWISE_SHARE = 0.8
PAIRWISE_BYTES_PER_PAIR = 26
PAIRWISE_MAX_ROWS = 46_340  # floor(sqrt(2^31 - 1))


def _size_gap(method: str, p: dict, n: int, backend: Backend) -> str | None:
    """A GPU limit that depends on the data: single linkage with l1 (which cuML's kNN graph does not take) builds the
    full pairwise graph, which must fit on the device; scikit-learn's MST needs memory linear in n."""
    if not backend.is_gpu or method != "agglomerative" or p.get("linkage") != "single":
        return None
    if p.get("metric") not in ("l1", "manhattan", "cityblock") or p.get("distance_threshold") is not None:
        return None  # euclidean: cuML's kNN graph; other metrics: the table's own gap names them
    if n > PAIRWISE_MAX_ROWS:
        return f"l1 single linkage of {n} rows (cuML's pairwise graph counts its n^2 edges in 32 bits)"
    from ..backend import device_free_bytes

    need, free = PAIRWISE_BYTES_PER_PAIR * n * n, device_free_bytes()
    if need <= PAIRWISE_SHARE * free:
        return None
    return (f"memory for l1 single linkage of {n} rows (cuML's pairwise graph needs {need / 2**30:.1f} GiB, "
            f"{free / 2**30:.1f} GiB free)")


def unit_rows(backend: Backend, Z):
    """Rows scaled to unit length (a zero row stays zero). Single linkage depends only on the order of the pairwise
    distances, and between unit rows the euclidean distance sqrt(2 - 2 cos) orders pairs exactly as the cosine
    distance does: so cosine single linkage is euclidean single linkage of these rows. That route needs memory
    linear in the rows on both twins (scikit-learn's MST; cuML's kNN connectivity), where cosine itself takes
    scipy's condensed distance matrix (n^2 / 2 doubles) on the CPU and cuML's full pairwise graph on the GPU."""
    xp = backend.xp
    norms = xp.linalg.norm(Z, axis=1, keepdims=True)
    return Z / xp.where(norms > 0, norms, 1)


def _pass_on(caught, params: dict) -> None:
    """Spectral's warnings, passed on as they came, except scikit-learn's disconnected-graph warning, which becomes
    a log line that says what it means and what to change. (On digits' UMAP space the 10-neighbour graph is in 16
    pieces and scores AMI 0.67; with 20 neighbours it is in 10 and scores 0.87.)"""
    for w in caught:
        if "not fully connected" in str(w.message):
            n = int(params.get("n_neighbors", 10))
            log.warning("spectral: the %d-neighbour graph of the rows falls apart into pieces, so the clusters depend "
                        "on small numerical differences; more neighbours join it (--cluster-param n_neighbors=%d)",
                        n, max(30, 2 * n))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
