"""How sure `--k auto` is: prediction strength per candidate k, its own k, and whether it agrees with the silhouette's.

The selection study (docs/selection-study.md, "Results: `--k auto`") found no criterion that gets k right reliably;
the usable confidence was agreement. Prediction strength (Tibshirani & Walther) clusters two halves of the rows at k,
assigns each half's rows to the nearest centroid of the other half's clusters and asks how many of each cluster's
pairs that assignment keeps together. Its k is the largest with PS >= PS_THRESHOLD; when it and the silhouette's k
agree within AGREE_WITHIN (7 of the study's 32 cases, the silhouette's k right in 5 of them), the answer is trusted,
otherwise it is reported as low confidence.

Written against the backend's `xp` (numpy or cupy); each half is clustered by gpuclust's own `cluster()`, so the GPU
twin uses the cuML clusterers a run already uses. Cost is bounded: PS is computed on a seeded sample of at most
PS_ROWS rows (two halves of at most AUTO_K_SAMPLE), the same sample for every k.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..backend import Backend
from ..cluster import AUTO_K_SAMPLE, cluster

log = logging.getLogger(__name__)

PS_THRESHOLD = 0.8  # Tibshirani & Walther's threshold: the largest k whose prediction strength reaches it
AGREE_WITHIN = 0.2  # the silhouette's k and prediction strength's k agree when within 20% of the silhouette's k
PS_ROWS = 2 * AUTO_K_SAMPLE  # rows PS is computed on at most: two halves, each as many as the silhouette scores


def ps_halves(n: int, seed: int = 0, max_rows: int = PS_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Two sorted, disjoint halves of a seeded sample of at most `max_rows` of n row positions (host int64)."""
    perm = np.random.default_rng(seed).permutation(n)[:min(n, max_rows)]
    half = len(perm) // 2
    return np.sort(perm[:half]), np.sort(perm[half:2 * half])


def prediction_strength(Z, method: str, k: int, params: dict, backend: Backend, seed: int = 0,
                        halves: tuple[np.ndarray, np.ndarray] | None = None) -> float | None:
    """Prediction strength of `method` at k on the rows of Z: each half of a seeded split (`ps_halves`, or the
    `halves` given, the same for every k) clustered with gpuclust's `cluster()`; the other half's rows assigned to
    the nearest centroid of the first half's clusters; for each of the other half's own clusters with >= 2 rows the
    share of its pairs the assignment keeps together; the minimum over its clusters, averaged over both directions.
    None when a half has fewer than k rows."""
    xp = backend.xp
    halves = halves if halves is not None else ps_halves(Z.shape[0], seed)
    if min(len(h) for h in halves) < max(k, 2):
        return None
    parts = [xp.asarray(Z[xp.asarray(h)], dtype=xp.float64) for h in halves]
    labels = [cluster(P, method, k, params, backend, seed + 1 + i)[0] for i, P in enumerate(parts)]
    return float(np.mean([_ps_one(xp, parts[a], labels[a], parts[b], labels[b]) for a, b in ((0, 1), (1, 0))]))


def _ps_one(xp, Ztr, ltr, Zte, lte) -> float:
    """One direction: the test half's clusters scored by the train half's centroids (noise rows left out)."""
    ids = xp.unique(ltr[ltr >= 0])
    if len(ids) == 0:
        return 0.0
    onehot = (ltr[:, None] == ids[None, :]).astype(xp.float64)
    cents = (onehot.T @ Ztr) / onehot.sum(axis=0)[:, None]
    d2 = (cents * cents).sum(axis=1)[None, :] - 2.0 * (Zte @ cents.T)  # + |z|^2, the same for every centroid
    assign = xp.argmin(d2, axis=1)
    keep = lte >= 0
    own, inv = xp.unique(lte[keep], return_inverse=True)
    K = len(ids)
    C = xp.bincount(inv.ravel() * K + assign[keep], minlength=len(own) * K).reshape(len(own), K).astype(xp.float64)
    sizes = C.sum(axis=1)
    ok = sizes >= 2
    if not bool(ok.any()):
        return 1.0
    kept = (C * (C - 1)).sum(axis=1)[ok] / (sizes * (sizes - 1))[ok]
    return float(kept.min())


def k_by_prediction_strength(ps: dict[int, float | None]) -> int | None:
    """The largest k with PS >= PS_THRESHOLD; if none, the k with the highest PS (the smallest on ties); None when
    no k was measured."""
    measured = {k: v for k, v in ps.items() if v is not None}
    if not measured:
        return None
    strong = [k for k, v in measured.items() if v >= PS_THRESHOLD]
    return max(strong) if strong else max(measured, key=lambda k: (measured[k], -k))


def agree(k_silhouette: int, k_ps: int | None) -> bool:
    """Whether the two ks agree as the study counted it: |k_silhouette - k_ps| <= AGREE_WITHIN x k_silhouette (the
    definition that reproduces "they agreed in 7 of 32 cases, right in 5 (loss <= 0.014)" from the study's CSV;
    measured against k_ps instead it also gives 7 and 5, but with a loss up to 0.036)."""
    if k_ps is None:
        return False
    return abs(k_silhouette - k_ps) <= AGREE_WITHIN * k_silhouette + 1e-9


@dataclass
class KChoice:
    """`--k auto`'s answer: `k` (the silhouette's), `scores` ({k: silhouette}), `prediction_strength` ({k: PS, None
    where not measured}), `k_ps` (prediction strength's k) and `low_confidence` (the two ks do not agree). It
    unpacks as (k, scores), as `choose_k` returned before it said how sure it is."""

    k: int
    scores: dict[int, float]
    prediction_strength: dict[int, float | None]
    k_ps: int | None

    @property
    def low_confidence(self) -> bool:
        """True when the silhouette's k and prediction strength's k do not agree within AGREE_WITHIN."""
        return not agree(self.k, self.k_ps)

    def __iter__(self):
        return iter((self.k, self.scores))

    def record(self) -> dict:
        """What a run keeps in its resolved cluster parameters (and metrics.json takes k_auto, k_auto_ps and
        k_auto_low_confidence from)."""
        return {"k_auto": self.k, "k_auto_scores": self.scores, "k_auto_ps": self.k_ps,
                "k_auto_prediction_strength": self.prediction_strength, "k_auto_low_confidence": self.low_confidence}

    def warning(self) -> str | None:
        """One line for the log when the answer is low confidence, else None."""
        if not self.low_confidence:
            return None
        if self.k_ps is None:
            return (f"--k auto: low confidence: the silhouette chose k={self.k}; prediction strength could not be "
                    "measured (too few images); look at k_auto.png and try other ks with --k N")
        lo, hi = sorted((self.k, self.k_ps))
        return (f"--k auto: low confidence: the silhouette chose k={self.k}, prediction strength k={self.k_ps} (not "
                f"within {AGREE_WITHIN:.0%}); look at k_auto.png and try the ks between them (--k {lo} .. --k {hi})")


METRICS_KEYS = ("k_auto", "k_auto_ps", "k_auto_low_confidence")  # what metrics.json takes from KChoice.record()
