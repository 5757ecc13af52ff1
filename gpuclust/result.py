"""`ClusterResult`: one run's labels, spaces, metrics and timings in memory; files only when asked (`save`).

`python -m gpuclust.run` and `gpuclust.cluster_images` both return one; the CLI saves it into its run directory,
a notebook looks at it (`to_frame`, `metrics`) and saves it when it wants the report.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class ClusterResult:
    """A finished run. Arrays live on the run's device; `labels`, `labels_true` and `embedding` give host copies.

    metrics: as metrics.json (ami, ari, nmi ... when labels exist; silhouettes, n_clusters, noise_fraction always).
    timings: seconds per stage, as timings.json. twins: which twin ran each stage. config: as config.json (without
    the versions and device, which `save` adds). rows: the dataset row of each labelled row (skipped images have
    none). output: the run directory once saved, else None.
    """

    metrics: dict
    timings: dict
    twins: dict
    config: dict
    rows: np.ndarray
    backend: Any
    labels_device: Any
    labels_true_device: Any = None
    embedding_device: Any = None
    dataset: Any = None
    skipped: list = field(default_factory=list)
    seed: int = 0
    gallery: int = 8
    output: Path | None = None
    curation: Any = None  # curate.Curation when the run marked duplicates or outliers
    map_xy: np.ndarray | None = None  # (rows, 2) float32: the run's 2-D map (explore/layout.py), None with --map none
    selection: dict | None = None  # selection.parquet's columns (gpuclust/select), None without a UMAP space

    @property
    def labels(self) -> np.ndarray:
        """The cluster of each row (-1: noise), as numpy."""
        return np.asarray(self.backend.to_host(self.labels_device))

    @property
    def labels_true(self) -> np.ndarray | None:
        """The dataset's label of each row (None without labels), as numpy."""
        t = self.labels_true_device
        return None if t is None else np.asarray(self.backend.to_host(t))

    @property
    def embedding(self) -> np.ndarray | None:
        """The reduced rows the clusterer saw, as numpy."""
        Z = self.embedding_device
        return None if Z is None else np.asarray(self.backend.to_host(Z))

    @property
    def n_skipped(self) -> int:
        """Images that could not be used (listed with the reason in skipped.csv)."""
        return len(self.skipped)

    @property
    def paths(self) -> list | None:
        """The dataset's file of each dataset row (None for in-memory sets such as the packaged ones)."""
        return getattr(self.dataset, "paths", None)

    @property
    def classes(self) -> list | None:
        """The dataset's class names, indexed by label_true (None without them)."""
        return getattr(self.dataset, "classes", None)

    def to_frame(self):
        """A pandas DataFrame with labels.parquet's columns: row, path, label_true, class_true, label_pred."""
        from .report import labels_table

        # Through the same typed table as the file, so a frame read back from labels.parquet equals this one.
        extra = self.curation.columns if self.curation is not None else None
        return labels_table(self.rows, self.paths, self.labels_true, self.labels, self.classes, extra).to_pandas()

    def explore(self, thumbnails: int | None = None, neighbours: int = 10):
        """This run's interactive map (gpuclust.explore.Explorer): a notebook shows it inline; `.save(dir)` writes
        it as a static site. `thumbnails`: rows given one (default 2,000, inline in the page); `neighbours`:
        nearest rows listed per row, in the clustered space."""
        from .explore import explore

        return explore(self, thumbnails=thumbnails, neighbours=neighbours)

    def save(self, path: str | Path | None = None, gallery: int | None = None) -> Path:
        """Write the run directory (config.json, metrics.json, labels.parquet, timings.json, report.html with its
        plots and gallery): the files `python -m gpuclust.run --output PATH` writes. None: runs/<time>-<names>.
        Returns the directory."""
        from .report import run_dir

        if gallery is not None:
            self.gallery = gallery
        cfg = self.config
        names = (cfg["data"]["spec"], self.config.get("resolved", {}).get("encoder", cfg["encode"]["spec"]),
                 cfg["reduce"]["method"], cfg["cluster"]["method"])
        with run_dir(None if path is None else str(path), *names) as (out, final):
            if self.skipped:
                from .report import write_skipped

                write_skipped(out / "skipped.csv", self.skipped, self.paths)
            self.write(out, final.resolve().name)
        self.output = final
        return final

    def write(self, out: Path, name: str, timer=None, t_start: float | None = None) -> None:
        """Write the run's files into `out` (a folder run_dir made); `timer` times the report as a stage."""
        from .report import write_run
        from .store import atomic_write_json

        ds = self.dataset
        images = ds.load if hasattr(ds, "load") and self.twins.get("encode") != "none" else None
        t0 = time.perf_counter()
        with timer("report") if timer is not None else nullcontext():
            write_run(out, backend=self.backend, config=self.config, metrics=self.metrics, timings=self.timings,
                      rows=self.rows, paths=self.paths, labels_true=self.labels_true_device,
                      labels_pred=self.labels_device, Z=self.embedding_device, classes=self.classes, seed=self.seed,
                      images=images, gallery=self.gallery, name=name, curation=self.curation,
                      map_xy=self.map_xy, selection=self.selection)
        self.timings["report"] = timer.seconds["report"] if timer is not None else round(time.perf_counter() - t0, 4)
        if t_start is not None:
            self.timings["total"] = round(time.perf_counter() - t_start, 4)
        atomic_write_json(out / "timings.json", self.timings)
