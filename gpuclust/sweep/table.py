"""A sweep's directory and its tables: sweep.json (what a rerun must match), results.csv/.parquet, best.json,
by_setting.csv, report.html, and the tables printed at the end."""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import shutil
import sys
from pathlib import Path

from ..errors import UserError
from .grid import Run, _cell, _flatten, _normal

log = logging.getLogger("gpuclust.sweep")


SWEEP_FORMAT = 1


# What a sweep writes beside sweep.json and runs/ (all of it discarded by --force).
SWEEP_FILES = ("results.csv", "results.parquet", "best.json", "by_setting.csv", "report.html", "heatmap.png",
               "ranking.png", "silhouette_vs_ami.png")


MAIN_METRICS = ("ami", "ari", "nmi", "silhouette", "silhouette_umap", "n_clusters", "noise_fraction", "n_rows",
                "n_skipped", "k_auto", "k_auto_low_confidence")


TIMINGS = ("data", "encode", "reduce", "umap_space", "cluster", "evaluate", "report", "total")


LOWER_IS_BETTER = {"davies_bouldin", "noise_fraction"}


RANKABLE = {"ami", "ari", "nmi", "homogeneity", "completeness", "v_measure", "fowlkes_mallows", "calinski_harabasz",
            "davies_bouldin", "n_clusters", "noise_fraction"}


def _resolved(entries: list) -> list:
    """Recorded runs re-read through today's RunConfig, so a setting added by an upgrade (with its default) does not
    make an old sweep look like another grid; a recorded key that no longer exists does."""
    from ..config import RunConfig, merge

    out = []
    for e in entries:
        try:
            cfg = _normal(merge(RunConfig(), e["config"], where="sweep.json").to_dict())
        except (UserError, KeyError, TypeError):
            cfg = e.get("config") if isinstance(e, dict) else e
        out.append({"run": e.get("run") if isinstance(e, dict) else None, "config": cfg})
    return out


# Settings that change no number a run computes: a sweep resumes whichever they were (one begun when --num-workers
# defaulted to 0 resumes under auto).
NUMBERLESS = {"encode": ("num_workers",)}


def _identity(entries: list) -> list:
    """The recorded runs without the NUMBERLESS settings: what a rerun must match to resume."""
    out = []
    for e in entries:
        cfg = e.get("config") if isinstance(e, dict) else None
        if isinstance(cfg, dict):
            cfg = {k: {n: x for n, x in v.items() if n not in NUMBERLESS[k]} if k in NUMBERLESS and isinstance(v, dict)
                   else v for k, v in cfg.items()}
            e = {**e, "config": cfg}
        out.append(e)
    return out


def _first_difference(old: list, new: list) -> str:
    if len(old) != len(new):
        return f"{len(old)} runs there, {len(new)} now"
    for o, n in zip(old, new):
        fo, fn = _flatten(o.get("config", {})), _flatten(n["config"])
        for key in dict.fromkeys([*fo, *fn]):
            if fo.get(key) != fn.get(key):
                return f"run {n['run']}: {key} was {fo.get(key)!r}, now {fn.get(key)!r}"
    return "another layout"


def open_sweep_dir(out: Path, runs: list[Run], axes, force: bool):
    """Create or reopen the sweep directory under an exclusive lock; a different grid is refused unless --force."""
    import fcntl

    if out.exists() and not out.is_dir():
        raise UserError(f"--output {out}: is a file")
    meta = out / "sweep.json"
    if out.is_dir() and not meta.is_file() and any(not p.name.startswith(".") for p in out.iterdir()):
        raise UserError(f"--output {out}: exists and is not a sweep directory (no sweep.json); choose a new or empty "
                        "directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = open(out / ".lock", "w")
    except OSError as exc:
        raise UserError(f"--output {out}: cannot write there ({exc.strerror or exc})") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise UserError(f"--output {out}: another sweep is running there") from None
    doc = {"format": SWEEP_FORMAT, "grid": _normal(dict(axes)),
           "runs": [{"run": r.id, "config": _normal(r.cfg.to_dict())} for r in runs]}
    if meta.is_file():
        try:
            old = json.loads(meta.read_text())
        except ValueError:
            raise UserError(f"{meta}: not valid JSON; use a new --output, or --force to start over") from None
        if force:
            for name in SWEEP_FILES:
                (out / name).unlink(missing_ok=True)
            shutil.rmtree(out / "runs", ignore_errors=True)
        else:
            recorded, now = _identity(_resolved(old.get("runs") or [])), _identity(doc["runs"])
            if recorded != now:
                raise UserError(f"--output {out} holds another sweep ({_first_difference(recorded, now)}); "
                                "use a new --output, or --force to discard its results")
    from ..store import atomic_write_json

    atomic_write_json(meta, doc)
    for tmp in out.glob(".*.tmp"):  # litter of a write killed mid-way; we hold the lock, so no writer owns it
        tmp.unlink(missing_ok=True)
    return lock


def make_row(run: Run, varied: list[str], status: str, error: str = "", run_dir: Path | None = None) -> dict:
    """One table row; an ok run's metrics and timings are read back from its run directory, the source of truth."""
    row = {"run": run.id, "status": status, **{k: _cell(run.flat.get(k)) for k in varied}}
    if status == "ok":
        metrics = json.loads((run_dir / "metrics.json").read_text())
        timings = json.loads((run_dir / "timings.json").read_text())
        row.update({k: v for k, v in metrics.items() if v is None or isinstance(v, (int, float, str))})
        row["twins"] = ",".join(f"{s}={t}" for s, t in metrics.get("twins", {}).items())
        row.update({f"{s}_s": timings[s] for s in TIMINGS if s in timings})
        row.update({k: timings.get(k) for k in ("rows_encoded", "rows_reused", "images_per_s")})
    row.update({"error": error, "run_dir": run.dir})
    return row


def columns(rows: list[dict], varied: list[str]) -> list[str]:
    """results.csv's columns: run, status, varied settings, metrics (main ones first), timings, error, run_dir."""
    present = list(dict.fromkeys(k for r in rows for k in r))
    timing = [f"{s}_s" for s in TIMINGS] + ["rows_encoded", "rows_reused", "images_per_s"]
    fixed = {"run", "status", "error", "run_dir", "twins", *varied, *timing}
    metrics = [m for m in MAIN_METRICS if m in present] + sorted(k for k in present
                                                                 if k not in fixed and k not in MAIN_METRICS)
    return (["run", "status", *varied, *metrics, *[t for t in timing if t in present],
             *(["twins"] if "twins" in present else []), "error", "run_dir"])


def _parquet(rows: list[dict], cols: list[str]) -> bytes | None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return None
    arrays = {}
    for c in cols:
        values = [r.get(c) for r in rows]
        try:
            arrays[c] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # a setting that is a number in one run and "auto" in another
            arrays[c] = pa.array([None if v is None else str(v) for v in values], pa.string())
    buf = pa.BufferOutputStream()
    pq.write_table(pa.table(arrays), buf)
    return buf.getvalue().to_pybytes()


def _score(row: dict, metric: str) -> float | None:
    v = row.get(metric)
    if row.get("status") != "ok" or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return -v if metric in LOWER_IS_BETTER else v


def default_rank(rows) -> str:
    """AMI when the data has labels; else the UMAP-space silhouette over every row with noise scored 0, so that a
    run leaving most rows as noise cannot win on the few it clusters."""
    return "ami" if any(r.get("ami") is not None for r in rows) else "silhouette_umap_all"


def ranked(rows: list[dict], metric: str) -> list[dict]:
    """ok rows with the metric, best first (ties: the earlier run)."""
    scored = [r for r in rows if _score(r, metric) is not None]
    return sorted(scored, key=lambda r: (-_score(r, metric), r["run"]))


def best(rows: list[dict], runs: dict[str, Run], varied: list[str], metric: str) -> dict | None:
    """The best.json entry of the best ok run by `metric`, or None when no run has it."""
    top = ranked(rows, metric)
    if not top:
        return None
    r, run = top[0], runs[top[0]["run"]]
    cfg = {k: v for k, v in _normal(run.cfg.to_dict()).items() if k != "output"}
    return {"run": r["run"], "metric": metric, "value": r[metric], "name": run.label(varied), "run_dir": run.dir,
            "settings": {k: r.get(k) for k in varied},
            "metrics": {k: r[k] for k in MAIN_METRICS if r.get(k) is not None}, "config": cfg}


def best_doc(rows: list[dict], runs: dict[str, Run], varied: list[str], rank_by: str,
             picks: dict[str, dict | None] | None = None) -> dict:
    """best.json: the best run by `rank_by`, AMI and the label-free silhouettes (per dataset too), and the
    label-free pick with its confidence (`picks`: per dataset, from sweep/select.py; computed when the sweep ends).
    With one dataset the pick is `label_free`; with several, each dataset's is in `per_dataset`."""
    metrics = list(dict.fromkeys([rank_by, "ami", "silhouette_umap_all", "silhouette_umap"]))

    def pick(subset):
        return {m: best(subset, runs, varied, m) for m in metrics}

    picks = picks or {}
    doc = {"rank_by": rank_by, "runs": len(runs), "finished": len(rows),
           "ok": sum(r["status"] == "ok" for r in rows), "best": pick(rows)}
    datasets = list(dict.fromkeys(run.cfg.data.spec for run in runs.values()))
    doc["label_free"] = picks.get(datasets[0]) if len(datasets) == 1 else None
    if len(datasets) > 1:  # a metric's best across datasets mostly names the easiest dataset: also per dataset
        doc["per_dataset"] = {d: {**pick([r for r in rows if runs[r["run"]].cfg.data.spec == d]),
                                  "label_free": picks.get(d)} for d in datasets}
    return doc


def write_outputs(out: Path, rows_by_id: dict[str, dict], runs: dict[str, Run], varied: list[str],
                  rank_by: str, picks: dict[str, dict | None] | None = None) -> list[dict]:
    """results.csv, results.parquet, best.json and by_setting.csv, each written atomically; returns the rows.
    `picks` (the label-free picks, once the sweep ends) add each scored run's label_free_score and consensus."""
    from ..store import atomic_write_bytes, atomic_write_json

    rows = [rows_by_id[k] for k in sorted(rows_by_id)]
    for doc in (picks or {}).values():
        for entry in (doc or {}).get("runs", []):
            rows_by_id[entry["run"]].update(label_free_score=entry["score"], consensus=entry["consensus"])
    cols = columns(rows, varied)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, cols, restval="", extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / "results.csv", buf.getvalue().encode())
    data = _parquet(rows, cols)
    if data is not None:
        atomic_write_bytes(out / "results.parquet", data)
    atomic_write_json(out / "best.json", best_doc(rows, runs, varied, rank_by, picks))
    summary = settings_summary(rows, varied, rank_by)
    if summary:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, list(dict.fromkeys(k for s in summary for k in s)), lineterminator="\n")
        writer.writeheader()
        writer.writerows(summary)
        atomic_write_bytes(out / "by_setting.csv", buf.getvalue().encode())
    else:  # nothing to compare (yet): no table left from another ranking or an earlier grid
        (out / "by_setting.csv").unlink(missing_ok=True)
    return rows


def settings_summary(rows: list[dict], varied: list[str], rank_by: str) -> list[dict]:
    """Each varied setting's values, ranked by their runs' mean `rank_by` over every other setting."""
    from ..report.compare import by_setting

    return by_setting(ranked(rows, rank_by), varied, rank_by, rank_by in LOWER_IS_BETTER)


def write_report(out: Path, table: list[dict], runs: list[Run], varied: list[str], rank_by: str,
                 picks: dict[str, dict | None] | None = None) -> Path:
    """report.html of the sweep directory: the label-free pick, the ranked runs linked to their reports, silhouette
    against AMI, and the ranking as bars (written once the sweep ends: the plots cost a second or two)."""
    from ..report.sweep_html import colour_keys, write_sweep_report

    return write_sweep_report(out, ranked(table, rank_by), [r for r in table if r["status"] != "ok"],
                              {r.id: r.label(varied) for r in runs}, {r.id: r.cfg.data.spec for r in runs},
                              colour_keys({r.id: r.flat for r in runs}, varied), rank_by, len(runs),
                              varied, rank_by in LOWER_IS_BETTER, picks or {},
                              sum(r["status"] == "ok" for r in table))


def rankable() -> set[str]:
    """Every metric a run's metrics.json can hold that ranks runs (the silhouettes per space and distance too)."""
    from ..evaluate.silhouette import METRICS

    silhouettes = {f"silhouette{space}{'' if m == 'euclidean' else '_' + m}"
                   for space in ("", "_umap", "_original") for m in METRICS}
    return (RANKABLE | {f"{m}_clustered" for m in RANKABLE if m not in ("calinski_harabasz", "davies_bouldin")}
            | silhouettes | {"silhouette_all", "silhouette_umap_all"})


def effective_rank(asked: str | None, rows) -> str:
    """--rank-by when some finished run has that metric, else the default (AMI with labels, else the label-free
    silhouette): `--rank-by ami` on unlabelled data ranks by the silhouette instead of ranking nothing."""
    rows = list(rows)
    if asked and any(_score(r, asked) is not None for r in rows):
        return asked
    return default_rank(rows) if not asked or any(r.get("status") == "ok" for r in rows) else asked


def _fmt(v) -> str:
    if v is None or v == "":
        return "-"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _result_text(row: dict) -> str:
    if row["status"] != "ok":
        return f"{row['status']}: {row['error']}"
    parts = [f"{m} {_fmt(row.get(m))}" for m in ("ami", "silhouette_umap") if row.get(m) is not None]
    return " ".join(parts) or "ok"


def print_table(rows: list[dict], runs: dict[str, Run], varied: list[str], rank_by: str, top: int) -> None:
    """The console's tables: the top runs by `rank_by`, the per-setting means, and each failed run."""
    from rich.console import Console
    from rich.table import Table

    order = ranked(rows, rank_by)
    shown = [m for m in dict.fromkeys([rank_by, "ami", "silhouette_umap", "n_clusters", "noise_fraction"])
             if any(r.get(m) is not None for r in order)]
    table = Table(title=f"runs ranked by {rank_by}" + (f" (top {top} of {len(order)})" if len(order) > top else ""))
    for name in ["#", "run", "configuration", *shown, "total s"]:
        table.add_column(name, justify="left" if name == "configuration" else "right", no_wrap=True)
    for i, r in enumerate(order[:top], 1):
        table.add_row(str(i), r["run"], runs[r["run"]].label(varied), *(_fmt(r.get(m)) for m in shown),
                      f"{r['total_s']:.1f}" if isinstance(r.get("total_s"), (int, float)) else "-")
    # markup off: labels and errors are the user's text; a log file gets the whole table
    console = Console(width=None if sys.stdout.isatty() else 160, markup=False)
    console.print(table)
    summary = settings_summary(rows, varied, rank_by)
    if summary:
        console.print(settings_table(summary, rank_by))
    for r in rows:
        if r["status"] != "ok":
            console.print(f"run {r['run']} ({runs[r['run']].label(varied)}): {r['status']}: {r['error']}",
                          highlight=False)


def settings_table(summary: list[dict], rank_by: str):
    """The console's view of by_setting.csv: each varied setting's values, best mean first."""
    from rich.table import Table

    from ..report.compare import PROXY

    proxy = rank_by != PROXY and any(f"mean_{PROXY}" in s for s in summary)
    table = Table(title=f"mean {rank_by} per setting, over every other setting")
    names = ["setting", "value", "runs", f"mean {rank_by}", "sd", "best run",
             *([f"mean {PROXY}", "silhouette's pick"] if proxy else [])]
    for name in names:
        table.add_column(name, justify="left" if name in ("setting", "value") else "right", no_wrap=True)
    last = None
    for s in summary:
        table.add_row("" if s["setting"] == last else s["setting"], s["value"], str(s["runs"]),
                      _fmt(s[f"mean_{rank_by}"]), _fmt(s[f"sd_{rank_by}"]), s["best_run"],
                      *([_fmt(s.get(f"mean_{PROXY}")), "yes" if s.get("label_free_pick") else ""] if proxy else []))
        last = s["setting"]
    return table
