"""Label-free selection: which of several finished clusterings of the same images to trust, and how sure that is.

A `Candidate` is one clustering: its labels, the space it is scored in (the UMAP space of the study's proxy) and,
for criteria that refit, how it was made. `pick` ranks candidates by a criterion (`CRITERIA`) and measures its
confidence by resampling the rows: the criterion of every candidate is computed again on RESAMPLES seeded
subsamples of FRACTION of the rows, and the confidence is the share of subsamples where the pick stays first
(`Pick.confidence`); below LOW_CONFIDENCE the pick says so (`Pick.low`). The sweep (best.json, its tables and
report) and `--k auto` use it. docs/selection.md has the study behind the default.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import UserError

RESAMPLES = 30  # subsamples of the rows for the confidence
FRACTION = 0.8  # share of the rows in each subsample
LOW_CONFIDENCE = 0.7  # a pick that stays first in fewer subsamples than this is reported as low confidence
SCORE_ROWS = 4000  # rows a criterion scores at most (a seeded sample beyond; the silhouette is n^2)


@dataclass
class Candidate:
    """One clustering of the rows: `id` (a run's name), `labels` (int, -1 noise), `space` (the rows in the space
    the criterion scores, host float32), and what made it (`method`, `params`, `k`) for criteria that refit."""

    id: str
    labels: np.ndarray
    space: np.ndarray
    method: str | None = None
    params: dict = field(default_factory=dict)
    k: int | None = None


@dataclass
class Pick:
    """The candidate a criterion ranks first: `id`, the `criterion`, every candidate's `scores` on all rows,
    `confidence` (the share of row subsamples where it stays first), `runner_up` and the `margin` to it (in units
    of the spread of that difference over the subsamples), and `low` when the confidence is below LOW_CONFIDENCE."""

    id: str
    criterion: str
    scores: dict
    confidence: float
    runner_up: str | None
    margin: float | None
    low: bool

    def to_dict(self) -> dict:
        """The pick as best.json holds it."""
        return {"run": self.id, "criterion": self.criterion, "value": self.scores[self.id],
                "confidence": round(self.confidence, 3), "low_confidence": self.low, "runner_up": self.runner_up,
                "margin": None if self.margin is None else round(self.margin, 3)}


def silhouette_all(c: Candidate, rows: np.ndarray) -> float:
    """The study's proxy over every row: the mean silhouette of the clustered rows in `c.space`, times the share
    of rows clustered (a noise row scores 0); -1 where undefined (fewer than 2 clusters)."""
    from ..backend import resolve_backend
    from ..evaluate.silhouette import silhouette_score

    labels = c.labels[rows]
    # the evaluate stage's silhouette of the clustered rows, as metrics.json's silhouette_umap_all takes it
    s = silhouette_score(resolve_backend("cpu"), c.space[rows], labels)["value"]
    return -1.0 if s is None else float(s) * float((labels >= 0).mean())


CRITERIA: dict[str, Callable[[Candidate, np.ndarray], float]] = {"silhouette_umap_all": silhouette_all}
DEFAULT = "silhouette_umap_all"


def _scores(candidates: list[Candidate], criterion: Callable, rows: np.ndarray) -> np.ndarray:
    return np.array([criterion(c, rows) for c in candidates], dtype=np.float64)


def pick(candidates: list[Candidate], criterion: str = DEFAULT, resamples: int = RESAMPLES, seed: int = 0,
         score_rows: int = SCORE_ROWS) -> Pick:
    """The candidate `criterion` ranks first, with its confidence over `resamples` subsamples of the rows (every
    candidate holds the same rows in the same order). Ties go to the earlier candidate."""
    if criterion not in CRITERIA:
        raise UserError(f"selection criterion {criterion!r}: one of {', '.join(CRITERIA)}")
    if not candidates:
        raise UserError("nothing to pick from: no finished run")
    n = len(candidates[0].labels)
    if any(len(c.labels) != n or len(c.space) != n for c in candidates):
        raise UserError("the candidates to pick from hold different rows")
    fn, rng = CRITERIA[criterion], np.random.default_rng(seed)
    base = np.sort(rng.choice(n, size=min(n, score_rows), replace=False))
    full = _scores(candidates, fn, base)
    order = np.argsort(-full, kind="stable")
    best = int(order[0])
    if len(candidates) == 1:
        return Pick(candidates[0].id, criterion, {candidates[0].id: float(full[0])}, 1.0, None, None, False)
    second = int(order[1])
    wins, diffs = 0, []
    m = max(2, int(round(FRACTION * len(base))))
    for _ in range(resamples):
        rows = np.sort(rng.choice(base, size=m, replace=False))
        s = _scores(candidates, fn, rows)
        wins += int(np.argmax(s) == best)  # argmax keeps the first of ties, as the full ranking does
        diffs.append(s[best] - s[second])
    spread = float(np.std(diffs))
    margin = float(full[best] - full[second]) / spread if spread > 0 else None
    confidence = wins / resamples if resamples else 1.0
    return Pick(candidates[best].id, criterion, {c.id: float(v) for c, v in zip(candidates, full)}, confidence,
                candidates[second].id, margin, confidence < LOW_CONFIDENCE)


__all__ = ["Candidate", "Pick", "pick", "CRITERIA", "DEFAULT", "LOW_CONFIDENCE", "silhouette_all"]
