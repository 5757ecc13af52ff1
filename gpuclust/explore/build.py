"""What the explorer shows, gathered from a finished run: `from_run` (a run directory, or a sweep's best run) and
`from_result` (a `ClusterResult` in a notebook) each give a `MapData` and the thumbnail files of its rows.

From a run directory: labels.parquet (clusters, classes, paths, the curate stage's columns), map.parquet (the 2-D
map; computed now and written into the run for a run made before the map stage, from its embedding store), the
embeddings (for each row's nearest neighbours), the reduced space from the reduction cache (each row's silhouette,
when labels.parquet has none), and the dataset itself, opened again for the thumbnails.
"""
from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from .data import MapData

log = logging.getLogger("gpuclust")

DEFAULT_THUMBNAILS = 50_000  # rows given a thumbnail by the CLI (a seeded sample beyond; see docs/explore.md)
NOTEBOOK_THUMBNAILS = 2_000  # inline in a notebook's page, so kept small
DEFAULT_NEIGHBOURS = 10
CURATE_COLUMNS = ("outlier_score", "outlier", "duplicate_group", "duplicate_of", "silhouette_row")


@dataclass
class Gathered:
    """A MapData with the thumbnail file of each row that has one (dataset row -> path) and what was done."""

    data: MapData
    thumb_files: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


def resolve_run(path: str | Path) -> Path:
    """The run folder `path` names: a run directory as it is; a sweep directory's best run (best.json, by the
    sweep's ranking metric); a folder of runs (runs/) its newest run; anything else is returned as it is, for
    read_run to refuse."""
    d = Path(path).expanduser()
    if (d / "best.json").is_file() and not (d / "labels.parquet").is_file():
        try:
            doc = json.loads((d / "best.json").read_text())
            entry = doc["best"][doc["rank_by"]]
            if entry is None:
                raise UserError(f"{path}: a sweep with no finished run to open")
            run = Path(entry["run_dir"])
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{path}: a sweep directory whose best.json names no best run") from None
        run = run if run.is_absolute() or not (d / run).exists() else d / run  # sweeps write it relative
        log.info("explore: the sweep's best run by %s: %s", doc["rank_by"], run)
        return run
    if d.is_dir() and not (d / "labels.parquet").is_file():
        runs = [p.parent for p in d.glob("*/labels.parquet") if (p.parent / "metrics.json").is_file()]
        if runs:  # a folder of runs (runs/): its newest
            newest = max(runs, key=lambda p: ((p / "metrics.json").stat().st_mtime, p.name))
            print(f"explore: the newest run in {path}: {newest}", file=sys.stderr)
            return newest
    return d


def from_run(run: str | Path, *, thumbnails: int | None = DEFAULT_THUMBNAILS, neighbours: int = DEFAULT_NEIGHBOURS,
             progress: bool = False, thumb_cache: Path | None = None) -> Gathered:
    """The explorer's view of the run in folder `run` (or a sweep's best run). `thumbnails`: at most this many rows
    get one (a seeded sample that always holds the outliers and duplicates; None: all, 0: none); `neighbours`: the
    nearest rows listed per row (0: none)."""
    import pandas as pd

    from ..runinfo import read_run

    info = read_run(resolve_run(run))
    frame = pd.read_parquet(info.dir / "labels.parquet")
    notes: list[str] = []
    streamed = info.cfg.reduce.fit_sample is not None and len(frame) > info.cfg.reduce.fit_sample
    if streamed and neighbours > 0:
        notes.append("no neighbour lists: the run streamed its embeddings (--fit-sample); reading them whole could "
                     "exceed its memory")
        neighbours = 0
    X = _embeddings(info, notes) if neighbours > 0 or not (info.dir / "map.parquet").is_file() else None
    xy = run_map(info, frame, X, notes)
    data = MapData(
        rows=frame["row"].to_numpy(np.int64), x=xy[:, 0], y=xy[:, 1], cluster=frame["label_pred"].to_numpy(np.int64),
        label_true=_label_true(frame), classes=_classes(frame), paths=frame["path"].tolist() if frame.get("path") is not None
        and frame["path"].notna().any() else None,
        columns={c: frame[c].to_numpy() for c in CURATE_COLUMNS if c in frame and c != "silhouette_row"},
        title=f"gpuclust: {info.dir.resolve().name}", metrics=info.metrics)
    data.silhouette = _silhouette(info, frame, data.cluster, notes)
    if X is not None and neighbours > 0:
        data.neighbours, data.neighbour_sim = nearest(X, neighbours)
    files = _thumbnails(info, data, thumbnails, progress, thumb_cache, notes)
    data.thumbs = np.isin(data.rows, np.fromiter(files, np.int64, len(files)))
    return Gathered(data, files, notes)


def _embeddings(info, notes: list) -> np.ndarray | None:
    """The run's embeddings in labels.parquet's order, or None (with a note) when its store is gone."""
    from ..runinfo import run_embeddings

    try:
        return run_embeddings(info)
    except UserError as exc:
        notes.append(f"no neighbour lists: {exc}")
        return None


def run_map(info, frame, X: np.ndarray | None, notes: list) -> np.ndarray:
    """The run's map.parquet as (rows, 2) float32 in labels.parquet's order; for a run made before the map stage
    (or with --map none) the map is computed from the run's embeddings on the CPU twin and written into the run."""
    import pandas as pd

    path = info.dir / "map.parquet"
    if path.is_file():
        m = pd.read_parquet(path)
        if np.array_equal(m["row"].to_numpy(), frame["row"].to_numpy()):
            return m[["x", "y"]].to_numpy(np.float32)
        notes.append("map.parquet did not match labels.parquet: the map was computed again")
    if X is None:
        raise UserError(f"{info.dir}: the run has no map.parquet and its embeddings are gone; rerun it (its "
                        "stored embeddings, if any, are reused) to get its map")
    from ..backend import resolve_backend
    from ..report import write_map
    from .layout import map_2d, map_params

    log.info("explore: computing the run's 2-D map (a run made before the map stage, or with --map none)")
    store = (info.config.get("resolved") or {}).get("store")
    xy, _ = map_2d(X, map_params(info.config["reduce"]), resolve_backend("cpu"), info.cfg.seed, store)
    write_map(path, frame["row"].to_numpy(), xy)
    notes.append("map.parquet computed and written into the run")
    return xy


def _label_true(frame) -> np.ndarray | None:
    """labels.parquet's label_true as int64 (-1 for a row without one), or None for an unlabelled run (the column
    is there, all null)."""
    if "label_true" not in frame or frame["label_true"].isna().all():
        return None
    return frame["label_true"].fillna(-1).to_numpy(np.int64)


def _classes(frame) -> list | None:
    if _label_true(frame) is None or "class_true" not in frame:
        return None
    pairs = frame[["label_true", "class_true"]].drop_duplicates().dropna()
    if pairs.empty:
        return None
    names = [str(t) for t in range(int(pairs["label_true"].max()) + 1)]
    for t, c in pairs.itertuples(index=False):
        names[int(t)] = str(c)
    return names


def _silhouette(info, frame, labels: np.ndarray, notes: list) -> np.ndarray | None:
    """Each row's silhouette: labels.parquet's silhouette_row, else from the run's stored reduced space."""
    if "silhouette_row" in frame:
        return frame["silhouette_row"].to_numpy(np.float32)
    from ..runinfo import stored_space
    from ..backend import resolve_backend
    from ..curate.outliers import row_silhouette

    Z = stored_space(info)
    if Z is None or len(Z) != len(labels):
        notes.append("no per-row silhouette: the run's reduced space is not in its store")
        return None
    s = row_silhouette(resolve_backend("cpu"), np.asarray(Z, np.float32), labels)
    return None if s is None else s.astype(np.float32)


def nearest(X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions int32, cosine similarities float32), each (n, k): every row's k most similar other rows in the
    encoder's space (the curate stage's search: exact, or faiss IVF from 20,000 rows); -1 where fewer."""
    from ..backend import resolve_backend
    from ..curate.neighbours import top_k_cosine, unit_rows

    cpu = resolve_backend("cpu")
    idx, sim = top_k_cosine(cpu, unit_rows(cpu, X), k)
    sim = np.where(np.isfinite(sim), sim, np.nan)
    return np.asarray(idx, np.int32), np.asarray(sim, np.float32)


def _thumbnails(info, data: MapData, cap: int | None, progress: bool, root: Path | None, notes: list) -> dict:
    """dataset row -> thumbnail file for the sampled rows, or {} (with a note) without images to read."""
    if cap == 0 or info.precomputed:
        if info.precomputed:
            notes.append("no thumbnails: the run clustered precomputed embeddings")
        return {}
    try:
        ds = _dataset(info)
    except UserError as exc:
        notes.append(f"no thumbnails: the run's images cannot be opened again ({exc})")
        return {}
    return thumbnails_for(ds, data, cap, info.cfg.seed, progress, root)


def thumbnails_for(ds, data: MapData, cap: int | None, seed: int, progress: bool, root: Path | None) -> dict:
    """Thumbnails (from the cache, written where missing) of at most `cap` of data's rows: outliers and duplicates
    first, then a seeded sample."""
    from .thumbs import ThumbnailCache, sample_rows

    must = np.zeros(len(data), bool)
    for name in ("outlier", "duplicate_group"):
        col = data.columns.get(name)
        if col is not None:
            must |= np.asarray(col >= 0 if name == "duplicate_group" else col, bool)
    pos = sample_rows(len(data), cap, seed, must=np.flatnonzero(must))
    return ThumbnailCache(root).ensure(ds, data.rows[pos], progress=progress)


def _dataset(info) -> Any:
    """The run's dataset opened again, as the run opened it."""
    from ..data import load_dataset

    d = info.cfg.data
    return load_dataset(d.spec, d.limit, d.root, d.subsample, info.cfg.seed, False)


def from_result(res, *, thumbnails: int | None = NOTEBOOK_THUMBNAILS, neighbours: int = DEFAULT_NEIGHBOURS,
                progress: bool = False, thumb_cache: Path | None = None) -> Gathered:
    """The explorer's view of a ClusterResult in memory (a notebook's `res.explore()`). Its rows' neighbours are
    found in the clustered space (the result holds no embeddings); the map is the result's own (map_xy), else its
    clustered space's first two principal axes."""
    from ..report.html import project_2d

    labels = res.labels
    xy = res.map_xy if res.map_xy is not None else project_2d(np.asarray(res.embedding, np.float64))
    xy = np.asarray(xy, np.float32)
    rows = np.asarray(res.rows, np.int64)
    cur = res.curation.columns if res.curation is not None else {}
    paths = res.paths
    data = MapData(rows=rows, x=xy[:, 0], y=xy[:, 1], cluster=np.asarray(labels, np.int64),
                   label_true=None if res.labels_true is None else np.asarray(res.labels_true, np.int64),
                   classes=res.classes, paths=None if paths is None else [paths[r] for r in rows],
                   columns={c: np.asarray(cur[c]) for c in CURATE_COLUMNS if c in cur and c != "silhouette_row"},
                   silhouette=None if "silhouette_row" not in cur else np.asarray(cur["silhouette_row"], np.float32),
                   title="gpuclust: " + str(res.config.get("data", {}).get("spec", "run")), metrics=res.metrics)
    if neighbours > 0 and res.embedding is not None:
        data.neighbours, data.neighbour_sim = nearest(np.asarray(res.embedding, np.float32), neighbours)
    files = {}
    if res.dataset is not None and hasattr(res.dataset, "load") and thumbnails != 0:
        files = thumbnails_for(res.dataset, data, thumbnails, res.seed, progress, thumb_cache)
    data.thumbs = np.isin(rows, np.fromiter(files, np.int64, len(files)))
    return Gathered(data, files)
