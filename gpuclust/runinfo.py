"""A finished run read back from its folder: config.json, metrics.json, labels.parquet, its embeddings (from the
embedding store it names, or the precomputed file it read) and its reduced space (from the reduction cache). Used by
`gpuclust.assign` (new images into a run) and `gpuclust.explore` (a run's map)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError


@dataclass
class RunInfo:
    """What is read of a finished run: its folder, config.json (raw and as a RunConfig), labels.parquet and
    metrics.json."""

    dir: Path
    config: dict
    cfg: Any
    labels: Any
    metrics: dict

    @property
    def precomputed(self) -> bool:
        """Whether the run read precomputed embeddings (embeddings:PATH) rather than encoding images."""
        return self.cfg.data.spec.partition(":")[0] == "embeddings"


def read_run(run: str | Path) -> RunInfo:
    """The finished run in folder `run`, or a one-line UserError saying why it is not one."""
    import pandas as pd

    from .config import RunConfig, merge

    d = Path(run).expanduser()
    missing = [f for f in ("config.json", "labels.parquet", "metrics.json") if not (d / f).is_file()]
    if not d.is_dir() or missing:
        raise UserError(f"{run}: not a gpuclust run directory (no {', '.join(missing) or 'folder'})")
    try:
        config = json.loads((d / "config.json").read_text())
        metrics = json.loads((d / "metrics.json").read_text())
        labels = pd.read_parquet(d / "labels.parquet", columns=["row", "label_pred"])
        sections = {f.name for f in dataclasses.fields(RunConfig)} - {"device"}
        cfg = merge(RunConfig(), {k: v for k, v in config.items() if k in sections}, "config.json")
    except (OSError, ValueError, KeyError, UserError) as exc:
        raise UserError(f"{run}: cannot read its config.json, metrics.json and labels.parquet "
                        f"({type(exc).__name__})") from None
    return RunInfo(d, config, cfg, labels, metrics)


def run_embeddings(info: RunInfo) -> np.ndarray:
    """The run's embeddings (host, float32) in labels.parquet's row order: from its embedding store, or from the
    precomputed file it read; UserError when they are gone or do not match the run."""
    rows_run = info.labels["row"].to_numpy()
    if info.precomputed:
        from .data.embeddings import embedding_source

        src = embedding_source(info.cfg.data.spec, info.cfg.data.limit, info.cfg.data.subsample)
        X, rows = np.asarray(src.matrix.load(_cpu())), np.arange(src.matrix.n_rows)
    else:
        X, rows = _stored_rows(Path((info.config.get("resolved") or {}).get("store") or ""))
    if len(rows) != len(rows_run) or not np.array_equal(rows, rows_run):
        raise UserError(f"{info.dir}: the run's embeddings no longer match its labels.parquet ({len(rows)} rows, "
                        f"the run has {len(rows_run)}); rerun the run")
    return X


def _stored_rows(store: Path) -> tuple[np.ndarray, np.ndarray]:
    if not (store / "complete.json").is_file():
        raise UserError(f"the run's embedding store {store or '(none recorded)'} is gone or incomplete; rerun the "
                        "run (it encodes again) and assign again")
    embs, rows = [], []
    for shard in sorted(store.glob("shard-*.npz")):
        with np.load(shard, allow_pickle=False) as z:
            embs.append(np.asarray(z["emb"], dtype=np.float32))
            rows.append(z["rows"])
    return np.concatenate(embs), np.concatenate(rows)


def _cpu():
    from .backend import resolve_backend

    return resolve_backend("cpu")


def stored_space(info: RunInfo) -> np.ndarray | None:
    """The run's reduced rows from the reduction cache beside its embeddings, or None. The key is the one
    pipeline.reduce_stage stores them under."""
    from .pipeline import space_key
    from .store import ReductionCache

    store = (info.config.get("resolved") or {}).get("store")
    if store is None or info.cfg.reduce.method not in ("pca", "umap"):
        return None
    backend = (info.config.get("device") or {}).get("backend", "cpu")
    key = space_key(info.cfg, backend == "gpu")
    rule = (info.config.get("resolved") or {}).get("umap_defaults")
    if "umap_defaults" in key:  # the run's own UMAP defaults, not today's
        if rule is None:  # (runs made before the rule existed stored their spaces without it)
            del key["umap_defaults"]
        else:
            key["umap_defaults"] = rule
    hit = ReductionCache(store).get({**key, "backend": backend})
    return None if hit is None else hit[0]
