"""`MapData`: everything the explorer shows, one entry per row of the run (labels.parquet's order), on the host.

The explorer's pages (explore/page.py), its Embedding Atlas export (explore/atlas.py) and the report's map picture
all read this one record; `explore/build.py` fills it from a run directory or a `ClusterResult`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class MapData:
    """A run's rows on its 2-D map.

    rows: dataset row of each entry (int64). x, y: map coordinates (float32). cluster: predicted cluster (int64, -1
    noise). label_true: dataset class (int64) or None; classes: class names indexed by label_true, or None. paths:
    the file of each entry (list of str, same order) or None for in-memory sets. silhouette: each entry's silhouette
    in the clustered space (float32, NaN for noise or where not computed) or None. columns: the curate stage's
    per-row columns when the run has them (outlier_score float, outlier bool, duplicate_group int, duplicate_of int
    dataset row or -1). neighbours: (n, k) int32 positions into these arrays (not dataset rows) of each entry's
    nearest rows by cosine similarity in the encoder's space, -1 where fewer; neighbour_sim: their similarities
    (float32), or both None. thumbs: bool per entry, whether a thumbnail exists for it (at `thumbs/<row>.webp` in
    a site, see explore/thumbs.py). title: the page title; metrics: the run's metrics.json.
    """

    rows: np.ndarray
    x: np.ndarray
    y: np.ndarray
    cluster: np.ndarray
    label_true: np.ndarray | None = None
    classes: list | None = None
    paths: list | None = None
    silhouette: np.ndarray | None = None
    columns: dict = field(default_factory=dict)
    neighbours: np.ndarray | None = None
    neighbour_sim: np.ndarray | None = None
    thumbs: np.ndarray | None = None
    title: str = "gpuclust run"
    metrics: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(len(self.rows))

    def class_name(self, i: int) -> str | None:
        """The class name of entry i (its label number when the set has no names), or None without labels."""
        if self.label_true is None:
            return None
        t = int(self.label_true[i])
        return self.classes[t] if self.classes is not None and 0 <= t < len(self.classes) else str(t)

    def cluster_sizes(self) -> dict[int, int]:
        """Entries per cluster (-1: noise), largest first."""
        u, c = np.unique(self.cluster, return_counts=True)
        order = np.argsort(-c, kind="stable")
        return {int(u[i]): int(c[i]) for i in order}
