"""Agglomerative clustering: scikit-learn (CPU, every linkage) and cuML (GPU, single linkage)."""
from __future__ import annotations

from ...backend import Algorithm, Backend, register
from ...errors import UserError
from ..checks import check_metric, check_range

LINKAGES = ("ward", "average", "complete", "single")
_CUML_AGGLO_METRICS = {"euclidean", "l2", "l1", "cityblock", "manhattan", "cosine"}

# The share of free device memory cuML's full pairwise single linkage may take. Per pair of rows (cuVS's
# connectivities.cuh and single_linkage.cuh, RAFT's MST solver, as cuML 26.10 calls them): the graph's int32 column
# index and float32 distance (8 bytes), the solver's altered weights in float64 (8), its MST-edge flag (1), and the
# copy of every weight that alteration_max() sorts, with thrust's sort buffer (about 8): about 25 bytes, 26 with a
# margin. The edge count is a 32-bit int, so above 46,340 rows it overflows whatever the memory.
PAIRWISE_SHARE = 0.8
PAIRWISE_BYTES_PER_PAIR = 26
PAIRWISE_MAX_ROWS = 46_340  # floor(sqrt(2^31 - 1))


def _translate(params: dict, twin: str) -> dict:
    p = dict(params)
    p.setdefault("linkage", "ward")
    p.setdefault("metric", "euclidean")
    if twin == "gpu":
        p.pop("distance_threshold", None)  # only reaches the GPU twin when None (see _gap)
        # cuML's default connectivity ("knn") takes euclidean only; its full pairwise graph takes l1 and cosine
        # too (cuML's AgglomerativeClustering docstring). `_prepare` sends cosine single linkage as euclidean on
        # unit rows, so in a run only l1 needs the n^2 graph.
        if p["metric"] not in ("euclidean", "l2"):
            p["connectivity"] = "pairwise"
    return p


def _gap(p: dict) -> str | None:
    if p.get("linkage", "ward") != "single":
        return f"{p.get('linkage', 'ward')} linkage (cuML has single linkage only)"
    if p.get("distance_threshold") is not None:
        return "distance_threshold"
    if p.get("metric", "euclidean") not in _CUML_AGGLO_METRICS:
        return f"metric {p['metric']}"
    return None


def _check(p: dict) -> None:
    linkage = p.get("linkage", "ward")
    if linkage not in LINKAGES:
        raise UserError(f"--cluster-param linkage={linkage}: choose one of {', '.join(LINKAGES)}")
    check_metric(p)
    if linkage == "ward" and p.get("metric", "euclidean") not in ("euclidean", "l2"):
        raise UserError(f"ward linkage needs metric=euclidean (got {p['metric']}); use linkage=average for others")
    check_range(p, "distance_threshold", 0, float("inf"), "must be a number >= 0")


def _finds_k(p: dict) -> dict | None:
    """With a distance threshold the tree is cut there, and scikit-learn needs n_clusters=None said outright."""
    return {"n_clusters": None} if p.get("distance_threshold") is not None else None


def _size_gap(p: dict, n: int, backend: Backend) -> str | None:
    """Single linkage with l1 (which cuML's kNN graph does not take) builds the full pairwise graph, which must fit
    on the device; scikit-learn's MST needs memory linear in n."""
    if p.get("linkage") != "single":
        return None
    if p.get("metric") not in ("l1", "manhattan", "cityblock") or p.get("distance_threshold") is not None:
        return None  # euclidean: cuML's kNN graph; other metrics: the record's own gap names them
    if n > PAIRWISE_MAX_ROWS:
        return f"l1 single linkage of {n} rows (cuML's pairwise graph counts its n^2 edges in 32 bits)"
    from ...backend import device_free_bytes

    need, free = PAIRWISE_BYTES_PER_PAIR * n * n, device_free_bytes()
    if need <= PAIRWISE_SHARE * free:
        return None
    return (f"memory for l1 single linkage of {n} rows (cuML's pairwise graph needs {need / 2**30:.1f} GiB, "
            f"{free / 2**30:.1f} GiB free)")


def _prepare(backend: Backend, Z, p: dict) -> tuple:
    """Cosine single linkage runs as euclidean single linkage of unit rows (see cluster.unit_rows); a distance
    threshold applies in the study's normalised space unless threshold_normalize=false."""
    from .. import threshold_space, unit_rows

    p = dict(p)
    normalise = p.pop("threshold_normalize", True)
    if p.get("linkage") == "single" and p.get("metric") == "cosine" and p.get("distance_threshold") is None:
        return unit_rows(backend, Z), {**p, "metric": "euclidean"}, {"rows_l2_normalised": True}
    if p.get("distance_threshold") is not None and normalise:
        Z = threshold_space(backend, Z, p.get("metric", "euclidean"))
    return Z, p, {}


AGGLOMERATIVE = register(Algorithm(
    "agglomerative",
    "sklearn.cluster.AgglomerativeClustering",
    "cuml.cluster.AgglomerativeClustering",
    translate=_translate,
    gpu_params=frozenset({"n_clusters", "metric", "linkage", "distance_threshold"}),
    gpu_check=_gap,
    notes="cuML: single linkage only, no distance_threshold; other linkages run on the CPU twin",
    help="Agglomerative, --k clusters or distance_threshold=T; linkage ward/average/complete/single; sklearn / cuML "
         "(single linkage)",
    k_param="n_clusters",
    finds_k=_finds_k,
    check=_check,
    size_gap=_size_gap,
    prepare=_prepare,
))
