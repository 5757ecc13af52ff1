"""The curate stage: what to do about the rows after clustering them. Near-duplicates (curate/duplicates.py) and
outliers (curate/outliers.py) are marked on the run's rows; new images are placed into a finished run by
`python -m gpuclust.assign` (gpuclust/assign.py).

Each part adds to one `Curation`: per-row columns for labels.parquet, whole tables written as their own files
(duplicates.parquet), metrics for metrics.json, and strips of images for report.html.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError
from ..progress import step


@dataclass
class Curation:
    """What the curate stage found. `columns`: name -> numpy array with one value per labelled row (in the run's row
    order); `tables`: file name -> pandas DataFrame, written beside labels.parquet; `metrics`: added to metrics.json;
    `strips`: (section title, [(caption, dataset rows to show)]) for report.html."""

    columns: dict = field(default_factory=dict)
    tables: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    strips: list = field(default_factory=list)


def check_settings(curate) -> None:
    """The curate stage's own settings (`curate:` in YAML, --duplicates, --outliers), checked before any work."""
    t, f = curate.duplicates, curate.outliers
    if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 1):
        raise UserError(f"--duplicates {t!r}: a cosine similarity threshold in (0, 1], e.g. 0.9")
    if f is not None and (isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1):
        raise UserError(f"--outliers {f!r}: a fraction of the rows in (0, 1), e.g. 0.01")


def curate_stage(curate, X: Any, Z: Any, labels: Any, rows, paths, backend, seed: int = 0) -> Curation:
    """Marks what `curate` (a CurateConfig) asks for. X: the encoder's embeddings (an array on the backend, or
    RowChunks for a streamed run); Z: the reduced rows the clusterer saw; labels: the clusters (-1 noise); rows: the
    dataset row of each; paths: the dataset's files (None for in-memory sets)."""
    cur = Curation()
    if curate.duplicates is not None:
        from .duplicates import duplicates_stage

        with step("near-duplicates"):
            duplicates_stage(cur, curate.duplicates, X, Z, labels, rows, paths, backend)
    if curate.outliers is not None:
        from .outliers import outliers_stage

        with step("outliers"):
            outliers_stage(cur, curate.outliers, X, Z, labels, rows, paths, backend, seed)
    return cur
