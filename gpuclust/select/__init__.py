"""Label-free selection: which of several finished clusterings of the same images to trust, and how sure that is.

The criterion is the one docs/selection-study.md chose by evidence (8 labelled sets x 3 encoders x 6 clusterers):

- Among the runs whose number of clusters is within BAND (20%) of the k that was asked for, the highest
  **silhouette x consensus**: the mean per-row silhouette in the run's UMAP space (noise rows 0: the study's
  `silhouette_umap_all`) times the run's mean ARI to the other runs (noise as one cluster). Runs outside the band
  rank after every run inside it. No k asked for (only clusterers that find k, or several ks): no band.
- With fewer than MIN_CONSENSUS_RUNS runs, agreement means little: the silhouette alone (at the asked k).
- The **confidence**: RESAMPLES bootstrap resamples of the rows, paired across runs (the silhouette as the mean of
  the stored per-row values over the resampled rows, the ARIs on the resampled rows). `Pick.confidence` is the share
  of resamples where the pick (or a run with the very same partition) stays first, `Pick.margin` its lead over the
  best run with another partition in units of that lead's bootstrap standard deviation; the pick is **low
  confidence** when the share is below MIN_SHARE or the margin below MIN_MARGIN.

Every run scores the same seeded sample of at most SAMPLE_ROWS rows (`selection_rows`), which a run directory keeps
as selection.parquet, so that a sweep picks from its runs' folders without loading any space again.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from .ari import pair_ari

SAMPLE_ROWS = 4000  # rows every run scores at most (the exact silhouette is quadratic in rows)
MIN_SHARED = 1000  # fewer scored rows shared by the runs than this: the pick says so in its notes
RESAMPLES = 50  # bootstrap resamples of the rows for the confidence
BAND = 0.2  # a run is "at the asked k" when its number of clusters is within 20% of it
MIN_CONSENSUS_RUNS = 4  # fewer runs than this: the silhouette alone
MIN_SHARE = 0.9  # below: low confidence (the pick is not first in 10% of resamples or more)
MIN_MARGIN = 2.0  # below: low confidence (the lead is within 2 bootstrap standard deviations)
_DEMOTE = 10.0  # subtracted from the score of runs outside the band (scores lie in [-1, 1])


def _row_order(rows: np.ndarray) -> np.ndarray:
    """A fixed pseudo-random key per dataset row id (Fibonacci hashing: the id times 2^64 / golden ratio, wrapping)."""
    return np.asarray(rows, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)


def sample_positions(rows, size: int = SAMPLE_ROWS) -> np.ndarray:
    """The sorted positions, among a run's dataset row ids `rows`, of the rows it scores: all of them up to `size`,
    else the `size` rows whose ids come first in one fixed pseudo-random order of ids. That order depends on the ids
    alone, not on the run's seed or sample, so runs over the same images score the same rows, and runs over
    different samples of one dataset (streamed runs score their fit sample) share as many as such samples allow."""
    rows = np.asarray(rows)
    if len(rows) <= size:
        return np.arange(len(rows))
    return np.sort(np.argsort(_row_order(rows), kind="stable")[:size])


def selection_rows(backend, space, labels, rows) -> dict:
    """What a run keeps for label-free selection (selection.parquet): the dataset `row` of each sampled row, its
    cluster `label_pred` and its `silhouette` in `space` (the run's UMAP space; NaN: noise). `space`, `labels` and
    `rows` hold the same rows in the same order."""
    from ..curate.outliers import row_silhouette  # the per-row silhouette the outliers and the explorer show

    labels, rows, space = np.asarray(backend.to_host(labels)), np.asarray(rows), backend.asarray(space)
    pos = sample_positions(rows)
    space = space[backend.xp.asarray(pos)] if len(pos) < len(labels) else space
    s = row_silhouette(backend, space, backend.xp.asarray(labels[pos]))  # None: undefined (fewer than 2 clusters)
    return {"row": rows[pos].astype(np.int64), "label_pred": labels[pos].astype(np.int64),
            "silhouette": np.full(len(pos), np.nan, np.float32) if s is None else s.astype(np.float32)}


@dataclass
class Candidate:
    """One clustering: `id` (a run's name), the dataset `rows` it scored, their `labels` (-1 noise) and per-row
    `silhouette` (NaN: noise), the run's `n_clusters` over all its rows (default: those in `labels`), and the `k`
    it was asked for (None when its clusterer finds the number itself, "auto" when the run chose it)."""

    id: str
    rows: np.ndarray
    labels: np.ndarray
    silhouette: np.ndarray
    n_clusters: int | None = None
    k: int | str | None = None

    def __post_init__(self):
        self.rows, self.labels = np.asarray(self.rows), np.asarray(self.labels)
        self.silhouette = np.asarray(self.silhouette, dtype=np.float64)
        if not len(self.rows) == len(self.labels) == len(self.silhouette):
            raise UserError(f"candidate {self.id}: rows, labels and silhouettes of different lengths")
        if self.n_clusters is None:
            self.n_clusters = int(len(np.unique(self.labels[self.labels >= 0])))

    @classmethod
    def from_space(cls, id: str, space, labels, rows=None, k: int | None = None, backend=None) -> "Candidate":
        """A candidate scored in `space` (e.g. a UMAP embedding), on the rows a run would keep; CuPy arrays are
        scored on the GPU twin unless `backend` says otherwise."""
        from ..backend import is_device_array, resolve_backend

        backend = backend or resolve_backend("gpu" if is_device_array(space) else "cpu")
        labels = np.asarray(backend.to_host(labels))
        sel = selection_rows(backend, space, labels, np.arange(len(labels)) if rows is None else rows)
        return cls(id, sel["row"], sel["label_pred"], sel["silhouette"],
                   int(len(np.unique(labels[labels >= 0]))), k)


@dataclass
class Pick:
    """The run the criterion ranks first and how sure that is. `scores`, `silhouette`, `consensus` and `in_band`:
    per run id (consensus None with fewer than MIN_CONSENSUS_RUNS runs); `k`: the asked k the band is drawn around
    (None: no band); `confidence`: the share of resamples where the pick stays first; `margin`: its lead over
    `runner_up` in bootstrap standard deviations; `low`: the confidence is low; `rows`: the rows compared."""

    id: str
    criterion: str
    k: int | None
    scores: dict
    silhouette: dict
    consensus: dict | None
    in_band: dict
    confidence: float
    margin: float | None
    runner_up: str | None
    low: bool
    rows: int
    notes: list = field(default_factory=list)

    def order(self) -> list[str]:
        """Run ids best first (runs outside the band after those inside; ties to the earlier run)."""
        ids = list(self.scores)
        return sorted(ids, key=lambda i: (not self.in_band[i], -self.scores[i], ids.index(i)))

    def to_dict(self) -> dict:
        """The pick as best.json holds it (per-run values under "runs", best first)."""
        def r(v):
            return None if v is None else round(float(v), 4)

        runs = [{"run": i, "score": r(self.scores[i]), "silhouette_umap_all": r(self.silhouette[i]),
                 "consensus": None if self.consensus is None else r(self.consensus[i]), "in_band": self.in_band[i]}
                for i in self.order()]
        margin = None if self.margin is None else (None if not np.isfinite(self.margin) else round(self.margin, 2))
        return {"run": self.id, "criterion": self.criterion, "k": self.k, "value": r(self.scores[self.id]),
                "confidence": round(self.confidence, 3), "margin": margin, "low_confidence": self.low,
                "runner_up": self.runner_up, "rows": self.rows, "notes": list(self.notes), "runs": runs}


def _align(candidates: list[Candidate]) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """(common dataset rows, each candidate's labels on them, (runs, rows) silhouettes with noise 0)."""
    common = candidates[0].rows
    for c in candidates[1:]:
        common = np.intersect1d(common, c.rows)
    if len(common) < 2:
        raise UserError("the runs to pick from share fewer than 2 scored rows: they clustered different images")
    labels, sil = [], []
    for c in candidates:
        idx = np.searchsorted(c.rows, common) if np.all(np.diff(c.rows) > 0) else _positions(c.rows, common)
        labels.append(c.labels[idx])
        sil.append(np.nan_to_num(c.silhouette[idx], nan=0.0))
    return common, labels, np.stack(sil)


def _positions(rows: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    where = {int(r): i for i, r in enumerate(rows)}
    return np.array([where[int(r)] for r in wanted], dtype=np.int64)


def asked_k(candidates: list[Candidate]) -> tuple[int | None, str | None]:
    """The k the runs were asked for, when they agree on one: (k, None), else (None, why there is no band). A run
    that chose k itself (k "auto") means the k is not known: no band either."""
    ks = sorted({c.k for c in candidates if isinstance(c.k, int)})
    if any(c.k == "auto" for c in candidates):
        asked = f" and others were asked for {', '.join(map(str, ks))}" if ks else ""
        return None, f"some runs chose k themselves (--k auto){asked}: no band"
    if len(ks) == 1:
        return ks[0], None
    if not ks:
        return None, "no run was asked for a number of clusters: no band"
    return None, f"the runs were asked for several numbers of clusters ({', '.join(map(str, ks))}): no band"


def pick(candidates: list[Candidate], k: int | None = None, resamples: int = RESAMPLES, seed: int = 0) -> Pick:
    """The candidate the criterion ranks first, with its confidence. `k`: the asked number of clusters the band is
    drawn around (default: the one the candidates were asked for, when they agree)."""
    if not candidates:
        raise UserError("nothing to pick from: no finished run")
    if len({c.id for c in candidates}) < len(candidates):
        raise UserError("the runs to pick from have repeated names")
    notes = []
    if k is None:
        k, why = asked_k(candidates)
        notes += [why] if why else []
    rows, labels, S = _align(candidates)
    n_runs, m = len(candidates), len(rows)
    use_consensus = n_runs >= MIN_CONSENSUS_RUNS
    if n_runs == 1:
        notes.append("one run: nothing to choose between")
    elif not use_consensus:
        notes.append(f"{n_runs} runs: too few to weigh agreement, the silhouette alone")
    if m < MIN_SHARED and m < max(len(c.rows) for c in candidates):
        notes.append(f"the runs share only {m} of the rows they scored (runs on other samples of the data, such as "
                     "streamed runs' fit samples): a weaker comparison")
    in_band = np.array([k is None or abs(c.n_clusters - k) <= BAND * k for c in candidates])
    if k is not None and not in_band.any():
        notes.append(f"no run found within 20% of {k} clusters")
    demote = np.where(in_band, 0.0, -_DEMOTE)
    ari_full = pair_ari(labels, np.ones((1, m)))[0]  # (runs, runs)
    sil = S.mean(axis=1)
    cons = _mean_to_others(ari_full) if use_consensus else None
    full = (sil * cons if use_consensus else sil) + demote
    best = int(np.argmax(full))  # the first of ties
    twins = ari_full[best] >= 1.0 - 1e-9
    others = np.flatnonzero(~twins)
    runner = int(others[np.argmax(full[others])]) if len(others) else None
    draws = _draws(labels, S, demote, use_consensus, resamples, seed)
    share = float(twins[np.argmax(draws, axis=1)].mean()) if len(draws) else 1.0
    if runner is not None and in_band[best] and not in_band[runner]:
        # The lead over a run outside the band is the demotion, not a measure of sureness: no margin.
        notes.append(f"no other partition within 20% of {k} clusters; the runner-up is outside it")
        margin = None
    else:
        margin = _margin(draws, best, runner)
    low = share < MIN_SHARE or (margin is not None and margin < MIN_MARGIN)
    ids = [c.id for c in candidates]
    return Pick(ids[best], "silhouette_x_consensus" if use_consensus else "silhouette_umap_all", k,
                dict(zip(ids, full - demote)), dict(zip(ids, sil)),
                None if cons is None else dict(zip(ids, cons)), dict(zip(ids, in_band.tolist())), share, margin,
                None if runner is None else ids[runner], bool(low), m, notes)


def _mean_to_others(ari: np.ndarray) -> np.ndarray:
    n = ari.shape[-1]
    return (ari.sum(axis=-1) - np.diagonal(ari, axis1=-2, axis2=-1)) / max(n - 1, 1)


def _draws(labels, S, demote, use_consensus: bool, resamples: int, seed: int) -> np.ndarray:
    """(resamples, runs) criterion values on paired bootstrap resamples of the rows (as row counts)."""
    m = S.shape[1]
    if resamples <= 0:
        return np.zeros((0, len(labels)))
    rng = np.random.default_rng(seed)
    W = np.stack([np.bincount(rng.integers(0, m, m), minlength=m) for _ in range(resamples)]).astype(np.float64)
    sil = W @ S.T / m  # (resamples, runs)
    if use_consensus:
        sil = sil * _mean_to_others(pair_ari(labels, W))
    return sil + demote[None, :]


def _margin(draws: np.ndarray, best: int, runner: int | None) -> float | None:
    """The pick's mean lead over the runner-up in bootstrap standard deviations (None without a runner-up)."""
    if runner is None or len(draws) < 2:
        return None
    diff = draws[:, best] - draws[:, runner]
    sd = float(diff.std(ddof=1))
    if sd == 0:
        return float("inf") if diff.mean() > 0 else 0.0
    return float(diff.mean() / sd)


__all__ = ["Candidate", "Pick", "pick", "asked_k", "selection_rows", "sample_positions",
           "SAMPLE_ROWS", "RESAMPLES", "BAND", "MIN_SHARE", "MIN_MARGIN", "MIN_CONSENSUS_RUNS"]
