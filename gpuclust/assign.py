"""`python -m gpuclust.assign RUN NEW_DATA`: new images placed into a finished run, which is left as it was.

The new images are encoded with the run's own encoder settings through the embedding store (rows it already holds
are not encoded again), placed into the run's reduced space and its clusters (gpuclust/curate/placement.py says how
for each reducer and clusterer), and compared with the run's rows: a new row whose embedding has a cosine similarity
of at least the threshold (--duplicates, default the run's own --duplicates or 0.9) with a run row duplicates it.
The result goes beside the run, `<run>-assign-<name>/` (or --output DIR): assigned.parquet (row, path, label_true
when the new data has labels, label_pred, distance, duplicate_of_row (-1: none), duplicate_similarity), metrics.json
and report.html (a strip of new images per cluster they joined, and the duplicates).

From Python: `gpuclust.assign(run, data)` -> `Assignment` (`to_frame()`, `metrics`, `save()`).

Exit codes: 0 success; 2 bad input (one line on stderr): a folder that is not a run, unreadable new data, encoder
settings other than the run's, images for a run of precomputed embeddings or embeddings for a run of images, a run
whose reduced space cannot be rebuilt (made before its space was stored, or streamed with --fit-sample); 1 internal.
"""
from __future__ import annotations

import argparse
import dataclasses
import html
import logging
import re
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import OneLineParser, UserError, one_line
from .runinfo import RunInfo, read_run, run_embeddings, stored_space

log = logging.getLogger("gpuclust")

DEFAULT_THRESHOLD = 0.9
OUTPUT_FILES = ("assigned.parquet", "metrics.json", "report.html", "skipped.csv", "curate")


@dataclass
class Assignment:
    """New images placed into a run. `frame`: assigned.parquet's columns, one row per placed image; `metrics`: as
    metrics.json; `output`: the folder once saved. Nothing is written until `save`."""

    run: Path
    data_spec: str
    frame: Any
    metrics: dict
    dataset: Any = None
    skipped: list = field(default_factory=list)
    output: Path | None = None

    def to_frame(self):
        """assigned.parquet's table as a pandas DataFrame."""
        return self.frame.copy()

    def save(self, output: str | Path | None = None) -> Path:
        """Write assigned.parquet, metrics.json, report.html (and skipped.csv) into `output`, by default
        `<run>-assign-<name>` beside the run; an earlier assign's folder is replaced. Returns the folder."""
        out = check_output(self.run, output, self.data_spec)
        write_assignment(out, self)
        self.output = out
        return out


def check_run(info: RunInfo, data: Any, encoder: str | None) -> None:
    """What assign refuses before any work: a streamed run, another encoder, data of the other kind."""
    cfg = info.cfg
    if cfg.reduce.fit_sample is not None and len(info.labels) > cfg.reduce.fit_sample:
        raise UserError("the run streamed its embeddings (--fit-sample); assign reads a run's embeddings whole: "
                        "rerun without --fit-sample to assign into it")
    if encoder is not None and encoder != cfg.encode.spec:
        raise UserError(f"--encoder {encoder}: the run encoded with {cfg.encode.spec}; new images must be encoded "
                        "the same way (leave --encoder out)")
    new_embeddings = isinstance(data, str) and data.partition(":")[0] == "embeddings"
    if info.precomputed and not new_embeddings:
        raise UserError("the run clustered precomputed embeddings (no encoder to run): give the new rows as "
                        "embeddings:PATH, computed the same way")
    if new_embeddings and not info.precomputed:
        raise UserError(f"{data}: the run encoded images with {cfg.encode.spec}; give images, so that they are "
                        "encoded with the run's own settings")


def as_new_data(data: Any) -> Any:
    """NEW_DATA as a dataset spec, a list of paths or a Path: an existing .npy file is embeddings:, a .csv/.parquet
    file a list, any other existing file or folder images; a string that is neither a spec nor a path is refused."""
    from .data import DATASETS

    if isinstance(data, (list, tuple)):
        return list(data)
    text = str(data)
    if isinstance(data, str) and text.partition(":")[0] in DATASETS:
        return text
    path = Path(text).expanduser()
    if not path.exists():
        raise UserError(f"{text}: no such file or folder, and not a dataset spec (imagefolder:PATH, csv:PATH, ...)")
    kind = {".npy": "embeddings", ".csv": "csv", ".parquet": "parquet"}.get(path.suffix.lower())
    return f"{kind}:{path}" if kind and path.is_file() else path


def new_embeddings(info: RunInfo, data: Any, limit: int | None, device: str, progress: bool):
    """(X on the backend, rows, dataset, skipped, backend) of the new data, encoded as the run encoded."""
    from .backend import resolve_backend
    from .config import DataConfig
    from .pipeline import StageTimer, data_stage, encode_stage, precomputed_stage, report_skipped

    cfg = dataclasses.replace(info.cfg, data=DataConfig(spec=data if isinstance(data, str) else "paths", limit=limit),
                              device=device, gpus=1, workers=None, scheduler_address=None, output=None,
                              reduce=dataclasses.replace(info.cfg.reduce, fit_sample=None))  # held whole
    if not info.precomputed:  # the run's store folder: rows it already holds are copied, not encoded
        store = Path(info.config["resolved"]["store"])
        cfg = dataclasses.replace(cfg, encode=dataclasses.replace(cfg.encode, cache_dir=str(store.parent)))
    backend = resolve_backend(device)
    if isinstance(data, str):
        ds = data_stage(cfg, StageTimer(backend))
    else:
        from .images import paths_dataset

        try:
            ds = paths_dataset(data if isinstance(data, list) else [data])
        except UserError:
            raise UserError(f"{data}: holds no images") from None
        ds = ds if limit is None else ds.subset(limit)
    if info.precomputed:
        emb, enc = precomputed_stage(ds, cfg, backend)
    else:
        emb, enc = encode_stage(ds, cfg, backend, progress)
    if int(enc["dim"]) != int(info.config["resolved"]["dim"]):
        raise UserError(f"{getattr(ds, 'spec', data)}: {enc['dim']}-d rows, the run's are "
                        f"{info.config['resolved']['dim']}-d")
    report_skipped(emb.skipped, ds, None)
    return emb.X, emb.rows, ds, emb.skipped, backend


def copies_in_run(backend, X_run, X_new, rows_run, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(the run row each new row duplicates, -1 for none; its cosine similarity, NaN for none): the most similar
    run row when its similarity in the encoder's space is at least `threshold`."""
    from .curate.neighbours import top_k_cosine, unit_rows

    idx, sim = top_k_cosine(backend, unit_rows(backend, X_run), 1, queries=unit_rows(backend, X_new))
    idx, sim = np.asarray(backend.to_host(idx))[:, 0], np.asarray(backend.to_host(sim))[:, 0]
    dup = sim >= threshold
    return np.where(dup, rows_run[idx], -1), np.where(dup, sim, np.nan).astype(np.float32)


def assign(run: str | Path, data: Any, *, encoder: str | None = None, duplicates: float | None = None,
           limit: int | None = None, device: str = "auto", progress: bool = True) -> Assignment:
    """Place new images (a dataset spec, a folder, a list of image paths; embeddings:PATH for a run of precomputed
    embeddings) into the finished run in folder `run`, which is not changed. `encoder`: only checked against the
    run's; `duplicates`: the cosine threshold (default the run's --duplicates, else 0.9); `limit`: the first N new
    images. Returns an Assignment; `.save()` writes it beside the run."""
    from .curate import check_settings
    from .curate.placement import RULES, cluster_rule, place_clusters, rebuild_space
    from .config import CurateConfig

    info = read_run(run)
    data = as_new_data(data)
    threshold = duplicates if duplicates is not None else info.cfg.curate.duplicates or DEFAULT_THRESHOLD
    check_settings(CurateConfig(duplicates=threshold))
    check_run(info, data, encoder)
    X_run = run_embeddings(info)
    twin = (info.metrics.get("twins") or {}).get("reduce", "cpu")
    space = rebuild_space(X_run, info.config["reduce"], info.cfg.seed, twin, stored_space(info),
                          kept=not info.precomputed)
    X_new, rows, ds, skipped, backend = new_embeddings(info, data, limit, device, progress)
    Zq = space.place(np.asarray(backend.to_host(X_new), dtype=np.float32))
    labels_run = info.labels["label_pred"].to_numpy()
    method = info.cfg.cluster.method
    params = (info.config.get("resolved") or {}).get("cluster_params", {})
    labels, dist = place_clusters(space.Z, labels_run, method, params, Zq)
    dup_row, dup_sim = copies_in_run(backend, backend.asarray(X_run), X_new, info.labels["row"].to_numpy(),
                                       threshold)
    frame = assigned_frame(rows, ds, labels, dist, dup_row, dup_sim)
    metrics = assigned_metrics(frame, threshold, len(skipped))
    metrics.update(run=str(info.dir.resolve()), data=getattr(ds, "spec", str(data)), space=space.how,
                   cluster_rule=RULES[cluster_rule(method)])
    return Assignment(info.dir, getattr(ds, "spec", str(data)), frame, metrics, ds, skipped)


def assigned_frame(rows, ds, labels, dist, dup_row, dup_sim):
    """assigned.parquet's table: row, path, label_true (when the data has labels), label_pred, distance,
    duplicate_of_row, duplicate_similarity."""
    import pandas as pd

    rows = np.asarray(rows, dtype=np.int64)
    paths = getattr(ds, "paths", None)
    cols = {"row": rows, "path": [paths[r] for r in rows] if paths is not None else [None] * len(rows)}
    if getattr(ds, "labels", None) is not None:
        cols["label_true"] = np.asarray(ds.labels)[rows].astype(np.int64)
    cols.update(label_pred=np.asarray(labels, dtype=np.int64), distance=np.asarray(dist, dtype=np.float32),
                duplicate_of_row=np.asarray(dup_row, dtype=np.int64), duplicate_similarity=dup_sim)
    return pd.DataFrame(cols)


def assigned_metrics(frame, threshold: float, n_skipped: int) -> dict:
    """metrics.json: counts per cluster, noise, duplicates, and label metrics when the new data has labels."""
    counts = frame["label_pred"].value_counts().sort_index()
    metrics = {"n_rows": len(frame), "n_skipped": n_skipped, "n_noise": int((frame["label_pred"] < 0).sum()),
               "n_duplicates": int((frame["duplicate_of_row"] >= 0).sum()), "duplicate_threshold": float(threshold),
               "clusters": {str(int(c)): int(n) for c, n in counts.items() if c >= 0}}
    if "label_true" in frame and frame["label_true"].nunique() > 1:
        from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score

        metrics["ami"] = float(adjusted_mutual_info_score(frame["label_true"], frame["label_pred"]))
        metrics["ari"] = float(adjusted_rand_score(frame["label_true"], frame["label_pred"]))
    return metrics


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:60] or "data"


def check_output(run: Path, output: str | Path | None, data_spec: str) -> Path:
    """The folder an assignment goes into: `output`, else `<run>-assign-<name>` beside the run; refused inside the
    run, or when it holds files other than an earlier assignment's."""
    run = Path(run).resolve()
    if output is None:
        name = Path(data_spec.partition(":")[2]) if ":" in data_spec else Path(data_spec)
        name = name.stem if name.suffix.lower() in (".npy", ".csv", ".parquet") else name.name
        output = run.parent / f"{run.name}-assign-{_slug(name)}"
    out = Path(output).expanduser().resolve()
    if out == run or run in out.parents:
        raise UserError(f"--output {output}: inside the run; assign never writes into the run it reads")
    if out.exists() and (not out.is_dir() or any(p.name not in OUTPUT_FILES for p in out.iterdir())):
        raise UserError(f"--output {output}: exists and holds other files; choose a new or empty folder")
    return out


def write_assignment(out: Path, a: Assignment) -> None:
    """The assignment's files in `out` (made when needed)."""
    import shutil

    from .report import write_frame, write_skipped
    from .report.strips import write_strips
    from .store import atomic_write_bytes, atomic_write_json

    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "curate", ignore_errors=True)  # an earlier assignment's strips
    (out / "skipped.csv").unlink(missing_ok=True)
    write_frame(out / "assigned.parquet", a.frame)
    atomic_write_json(out / "metrics.json", a.metrics)
    if a.skipped:
        write_skipped(out / "skipped.csv", a.skipped, getattr(a.dataset, "paths", None))
    load = getattr(a.dataset, "load", None)
    strips = write_strips(out, report_sections(a.frame), load)
    atomic_write_bytes(out / "report.html", report_html(a, strips).encode())


def report_sections(frame, per_cluster: int = 8) -> list:
    """report.html's strips: a few new images of each cluster they joined (noise last), then the duplicates."""
    groups = []
    for c, part in sorted(frame.groupby("label_pred"), key=lambda g: (g[0] < 0, g[0])):
        name = "noise" if c < 0 else f"cluster {c}"
        groups.append((f"{name}: {len(part)} new image(s)", part["row"].to_numpy()[:per_cluster]))
    dups = frame[frame["duplicate_of_row"] >= 0]
    sections = [("New images by the cluster they joined", groups)]
    if len(dups):
        sections.append(("New images that duplicate a row of the run", [
            (f"new row {r} duplicates run row {d} (cosine {s:.3f})", [r])
            for r, d, s in dups[["row", "duplicate_of_row", "duplicate_similarity"]].head(20).itertuples(index=False)]))
    return sections


def report_html(a: Assignment, strips: str) -> str:
    """A short page: what was placed where, then the strips."""
    m = a.metrics
    facts = [("run", m["run"]), ("new data", m["data"]), ("images placed", m["n_rows"]),
             ("skipped", m["n_skipped"]), ("noise", m["n_noise"]),
             (f"duplicates (cosine >= {m['duplicate_threshold']})", m["n_duplicates"]),
             ("reduced space", m["space"]), ("clusters", m["cluster_rule"])]
    facts += [(k, f"{m[k]:.4f}") for k in ("ami", "ari") if k in m]
    table = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>gpuclust assign: {html.escape(a.data_spec)}"
            f"</title><style>body{{font-family:sans-serif}} th{{text-align:left;padding-right:1em}} img{{max-width:"
            f"100%}}</style></head><body><h1>New images into {html.escape(Path(m['run']).name)}</h1>"
            f"<table>{table}</table>{strips}</body></html>\n")


EXAMPLE = """example:
  python -m gpuclust.assign runs/photos imagefolder:~/new-photos
  python -m gpuclust.assign runs/photos ~/new-photos --duplicates 0.95 --output runs/photos-june"""


def get_args_parser() -> argparse.ArgumentParser:
    """The command's flags."""
    p = OneLineParser(prog="python -m gpuclust.assign", name="gpuclust.assign", description=__doc__.split("\n")[0],
                      epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="a run directory (the one gpuclust.run printed)")
    p.add_argument("data", metavar="NEW_DATA", help="the new images: a folder, an image file, a dataset spec "
                   "(imagefolder:PATH, csv:PATH, ...), or embeddings:PATH for a run of precomputed embeddings")
    p.add_argument("--output", metavar="DIR", help="where to write (default: <RUN>-assign-<name> beside the run)")
    p.add_argument("--duplicates", metavar="THRESHOLD", type=float,
                   help="cosine similarity at which a new image duplicates a run image (default: the run's "
                        "--duplicates, else 0.9)")
    p.add_argument("--encoder", metavar="SPEC", help="checked only: the run's encoder is always used")
    p.add_argument("--limit", metavar="N", type=int, help="the first N new images")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto", help="twin to encode on")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Assign and save for `argv` (default: sys.argv), printing a one-line summary; 0, or 2 after a one-line
    UserError on stderr."""
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.limit is not None and args.limit < 1:
            raise UserError(f"--limit {args.limit}: a positive integer")
        a = assign(args.run, args.data, encoder=args.encoder, duplicates=args.duplicates, limit=args.limit,
                   device=args.device, progress=not args.quiet)
        out = a.save(args.output)
    except UserError as exc:
        print(f"gpuclust.assign: error: {one_line(exc)}", file=sys.stderr)
        return 2
    m = a.metrics
    print(f"assigned {m['n_rows']:,} images into {len(m['clusters']):,} clusters ({m['n_noise']:,} noise, "
          f"{m['n_duplicates']:,} duplicates of run images) -> {out}")
    return 0


def cli() -> None:
    """Console-script entry point: `main()`'s return value as the exit status (raises SystemExit)."""
    raise SystemExit(main())


class _CallableModule(types.ModuleType):
    """`gpuclust.assign(...)` is the function whether the package attribute holds it or this module (importing the
    module sets the attribute to the module)."""

    def __call__(self, *args, **kwargs):
        return assign(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    raise SystemExit(main())
