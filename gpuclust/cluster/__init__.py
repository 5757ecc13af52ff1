"""The cluster stage: reduced embeddings -> labels. Noise (HDBSCAN, DBSCAN, an exemplar-less AP) is labelled -1.

Each clusterer is one record (gpuclust/cluster/algorithms/): both twins, how it takes k, whether it is seeded, its
checks (the same for both twins), its GPU limits and what its input needs first. `CLUSTERERS` is this stage's registry.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..backend import ALGORITHMS, Algorithm, Backend, make_estimator
from ..errors import UserError
from ..progress import step, track

if TYPE_CHECKING:
    from ..select.kauto import KChoice

log = logging.getLogger(__name__)


class _Registry(Mapping):
    """The clusterers among the twin records, by name, in registration order (read live: a record registered later,
    by a user's own module, appears too)."""

    def __getitem__(self, name: str) -> Algorithm:
        algo = ALGORITHMS[name]
        if algo.stage != "cluster":
            raise KeyError(name)
        return algo

    def __iter__(self):
        return (n for n, a in ALGORITHMS.items() if a.stage == "cluster")

    def __len__(self) -> int:
        return sum(1 for _ in self)


CLUSTERERS: Mapping[str, Algorithm] = _Registry()


def register_clusterer(algo: Algorithm) -> Algorithm:
    """Add a clusterer of your own to the registry: an `Algorithm` record naming its CPU class (and its GPU class,
    where one exists) by dotted path, `k_param` when it takes k, `seeded` when it takes random_state. It is then a
    name like the built-in ones, for gpuclust.Clusterer, cluster_images and in-process sweeps."""
    from ..backend import register

    if algo.stage != "cluster":
        raise ValueError(f"{algo.name}: a clusterer's record has stage='cluster' (got {algo.stage!r})")
    return register(algo)


def list_clusterers() -> list[str]:
    """The clusterers' names (each with a CPU twin, and a GPU twin where the record has one)."""
    return list(CLUSTERERS)


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


def _resolve_k(algo: Algorithm, k: int | None, params: dict, n: int, n_classes: int | None) -> dict:
    """The k keyword for the clusterers that take one ({} or the record's own for the others)."""
    if not algo.needs_k(params):
        if k is not None:
            log.warning("%s finds the number of clusters itself; --k %s is ignored", algo.name, k)
        return (algo.finds_k(params) or {}) if algo.finds_k else {}
    k = k if k is not None else params.pop(algo.k_param, n_classes)
    if k is None:
        raise UserError(f"{algo.name} needs --k N: the dataset has no labels to take the number of classes from")
    if not 1 <= k <= n:
        raise UserError(f"--k {k}: must be between 1 and the number of images ({n})")
    return {algo.k_param: int(k)}


AUTO_K_SAMPLE = 5_000  # rows scored per candidate k (a seeded sample beyond this; the same rows for every k)


def choose_k(Z, Z_score, method: str, params: dict, backend: Backend, seed: int = 0,
             k_range: tuple[int, int] = (2, 30)) -> KChoice:
    """`--k auto`: the k in `k_range` whose clustering of Z has the highest silhouette in `Z_score` (the study's
    label-free proxy: the UMAP space), with how sure that is: each k's prediction strength on Z (gpuclust.select.kauto,
    on a seeded sample of at most 2 x AUTO_K_SAMPLE rows) and whether its k agrees with the silhouette's. Returns a
    `KChoice`, which unpacks as (k, {k: silhouette}); a low-confidence answer logs one warning line."""
    from ..evaluate.silhouette import silhouette_score
    from ..select.kauto import KChoice, k_by_prediction_strength, prediction_strength, ps_halves

    if not CLUSTERERS[method].needs_k(params):
        raise UserError(f"--k auto: {method} finds the number of clusters itself; drop --k")
    lo, hi = int(k_range[0]), min(int(k_range[1]), Z.shape[0] - 1)
    if not 2 <= lo <= hi:
        raise UserError(f"--k-range {k_range[0]}:{k_range[1]}: need 2 <= min <= max < number of images")
    if hi < int(k_range[1]):
        log.warning("--k-range %d:%d: %d images allow k up to %d; trying %d:%d", lo, int(k_range[1]), Z.shape[0], hi,
                    lo, hi)
    scores, ps, halves = {}, {}, ps_halves(Z.shape[0], seed)
    for k in track(range(lo, hi + 1), "k auto", hi - lo + 1):
        labels, _, _ = cluster(Z, method, k, params, backend, seed)
        s = silhouette_score(backend, Z_score, labels, "euclidean", AUTO_K_SAMPLE, AUTO_K_SAMPLE, seed)["value"]
        scores[k] = s if s is not None else float("-inf")
        ps[k] = prediction_strength(Z, method, k, params, backend, seed, halves)
        log.info("k auto: k=%d silhouette %.4f prediction strength %s", k, scores[k],
                 "-" if ps[k] is None else f"{ps[k]:.3f}")
    best = max(scores, key=lambda k: (scores[k], -k))
    choice = KChoice(best, scores, ps, k_by_prediction_strength(ps))
    if choice.low_confidence:
        log.warning(choice.warning())
    return choice


def cluster(Z, method: str, k: int | None, params: dict, backend: Backend, seed: int = 0,
            n_classes: int | None = None):
    """Returns (labels as an xp int64 array, twin that ran, resolved parameters)."""
    if method not in CLUSTERERS:
        raise UserError(f"unknown clusterer {method!r}; known: {', '.join(CLUSTERERS)}")
    algo = CLUSTERERS[method]
    n = Z.shape[0]
    if n < 2:
        raise UserError(f"{method} needs at least 2 images")
    params = dict(params)
    algo.check(params)
    p = {**_resolve_k(algo, k, params, n, n_classes), **params}
    if algo.seeded:
        p.setdefault("random_state", seed)
    notes: dict = {}
    if algo.prepare is not None:
        Z, p, notes = algo.prepare(backend, Z, p)
    est = make_estimator(method, backend, gpu_gap=_size_gap(method, p, n, backend), **p)
    with warnings.catch_warnings(record=algo.on_warnings is not None) as caught, step(method):
        if caught is not None:
            warnings.simplefilter("always")
        labels = est.call("fit_predict", backend, Z)
    if caught is not None:
        algo.on_warnings(caught, est.params)
    return backend.xp.asarray(labels).astype(backend.xp.int64), est.twin, {**est.params, **notes}


def _size_gap(method: str, p: dict, n: int, backend: Backend) -> str | None:
    """A GPU limit of `method` that depends on the data (its record's `size_gap`); None on the CPU twin."""
    algo = CLUSTERERS[method]
    return algo.size_gap(p, n, backend) if backend.is_gpu and algo.size_gap else None


def unit_rows(backend: Backend, Z):
    """Rows scaled to unit length (a zero row stays zero). Single linkage depends only on the order of the pairwise
    distances, and between unit rows the euclidean distance sqrt(2 - 2 cos) orders pairs exactly as the cosine
    distance does: so cosine single linkage is euclidean single linkage of these rows. That route needs memory
    linear in the rows on both twins (scikit-learn's MST; cuML's kNN connectivity), where cosine itself takes
    scipy's condensed distance matrix (n^2 / 2 doubles) on the CPU and cuML's full pairwise graph on the GPU."""
    xp = backend.xp
    norms = xp.linalg.norm(Z, axis=1, keepdims=True)
    return Z / xp.where(norms > 0, norms, 1)
