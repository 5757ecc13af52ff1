"""`python -m gpuclust.sweep`: a grid of runs over one base configuration, with a results table that survives kills.

A sweep is the product of a few lists of settings (datasets x encoders x reducers x clusterers x parameters). Each
grid point is an ordinary run (`run_pipeline`) with its own run directory, so a sweep adds no second way to compute
anything; the embedding store and the reduction cache make the repeats cheap (one encoding per dataset x encoder,
one PCA/UMAP fit per reduction). The grid is ordered so that runs sharing a dataset, encoder and reduction are
adjacent.

The sweep directory holds `sweep.json` (the resolved runs, which a rerun must match to resume), `results.csv` and
`results.parquet` (one row per finished run, rewritten atomically after each run), `best.json` (the best run by AMI,
by the label-free `silhouette_umap_all` and `silhouette_umap`, and by --rank-by), `by_setting.csv` (each varied
setting's values by their mean over the rest of the grid) and `runs/NNNN-<slug>/`.
A rerun skips every run recorded `ok` whose directory has its metrics.json, so a killed sweep (even SIGKILL) resumes
where it was; runs are seeded, so the final table equals an uninterrupted sweep's.

Exit codes: 0 every run ok; 2 bad input before anything ran (one line on stderr), or some runs failed on their own
settings (recorded as `error` rows; the others ran); 1 some run failed with an internal error (`internal_error` rows,
traceback in the run's error.txt); 130 interrupted.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import itertools
import json
import logging
import math
import os
import re
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from .errors import OneLineParser, UserError, one_line

log = logging.getLogger("gpuclust.sweep")

SWEEP_FORMAT = 1
# What a sweep writes beside sweep.json and runs/ (all of it discarded by --force).
SWEEP_FILES = ("results.csv", "results.parquet", "best.json", "by_setting.csv", "report.html", "heatmap.png",
               "ranking.png", "silhouette_vs_ami.png")
# Grid axes from the outermost to the innermost (other top-level settings, e.g. device, go outside all of them), so
# consecutive runs share the stored embeddings and reduced spaces.
STAGES = ("data", "encode", "seed", "reduce", "cluster", "evaluate")
# A plain string entry in a whole-section axis names this field: `cluster: [kmeans, {method: hdbscan, ...}]`.
SECTION_NAME_FIELD = {"data": "spec", "encode": "spec", "reduce": "method", "cluster": "method"}
# Flags that make an axis: (grid key, grid keys the flag replaces).
AXIS_FLAGS = {
    "dataset": ("data.spec", ("data", "data.spec")),
    "encoder": ("encode.spec", ("encode", "encode.spec")),
    "reduce": ("reduce.method", ("reduce", "reduce.method")),
    "dims": ("reduce.dims", ("reduce.dims",)),
    "cluster": ("cluster.method", ("cluster", "cluster.method")),
    "k": ("cluster.k", ("cluster.k",)),
    "seed": ("seed", ("seed",)),
}
MAIN_METRICS = ("ami", "ari", "nmi", "silhouette", "silhouette_umap", "n_clusters", "noise_fraction", "n_rows",
                "n_skipped", "k_auto")
TIMINGS = ("data", "encode", "reduce", "umap_space", "cluster", "evaluate", "report", "total")
LOWER_IS_BETTER = {"davies_bouldin", "noise_fraction"}
RANKABLE = {"ami", "ari", "nmi", "homogeneity", "completeness", "v_measure", "fowlkes_mallows", "calinski_harabasz",
            "davies_bouldin", "n_clusters", "noise_fraction"}

EXAMPLE = """examples:
  python -m gpuclust.sweep --dataset digits --encoder pixels --reduce pca,umap --dims 10 \\
      --cluster kmeans,agglomerative,hdbscan --output sweeps/digits
  python -m gpuclust.sweep --config sweep.yaml --output sweeps/study    # rerun the same command to resume
"""


# ---------------------------------------------------------------------------------------------------------- grid


def _split(values: list[str] | None, flag: str, conv=str, commas: bool = True) -> list | None:
    """Repeated flags, each optionally comma-separated, as one list of converted values."""
    if values is None:
        return None
    out = []
    for v in values:
        for part in (v.split(",") if commas else [v]):
            if not part.strip():  # `--reduce ""` or `pca,,umap`: a slip, not a request for the default
                raise UserError(f"--{flag} {v!r}: an empty value; give names separated by commas")
            try:
                out.append(conv(part.strip()))
            except argparse.ArgumentTypeError as exc:
                raise UserError(f"--{flag} {part}: {exc}") from None
    return out


def _at_least_1(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n}: at least 1")
    return n


def _check_key(key: str) -> None:
    """A grid key is a top-level setting, a section, `section.field`, or `section.params.NAME`."""
    from .config import RunConfig

    default = RunConfig()
    parts = key.split(".")
    top = [f.name for f in dataclasses.fields(RunConfig) if f.name != "output"]
    if parts[0] not in top:
        why = " (the sweep names run directories itself)" if parts[0] == "output" else ""
        raise UserError(f"unknown grid key {key!r}: it must start with one of {', '.join(top)}{why}")
    if len(parts) == 1:
        return
    section = getattr(default, parts[0])
    if not dataclasses.is_dataclass(section):
        raise UserError(f"unknown grid key {key!r}: {parts[0]} is a single setting")
    fields = [f.name for f in dataclasses.fields(section)]
    if parts[1] not in fields:
        raise UserError(f"unknown grid key {key!r}: {parts[0]} has {', '.join(fields)}")
    if len(parts) > 2 and (len(parts) > 3 or not isinstance(getattr(section, parts[1]), dict)):
        raise UserError(f"unknown grid key {key!r}: only {parts[0]}.params.NAME goes below a field")


def _apply(cfg, key: str, value):
    """`cfg` with one grid value set; a whole-section entry is merged like a YAML section."""
    from .config import merge

    parts = key.split(".")
    if len(parts) == 1:
        if dataclasses.is_dataclass(getattr(cfg, key)):
            if isinstance(value, str) and key in SECTION_NAME_FIELD:
                value = {SECTION_NAME_FIELD[key]: value}
            if not isinstance(value, dict):
                raise UserError(f"grid.{key}: entries are names or mappings of {key} settings, got {value!r}")
        return merge(cfg, {key: value}, where="grid")
    if len(parts) == 2:
        return merge(cfg, {parts[0]: {parts[1]: value}}, where="grid")
    params = {**getattr(getattr(cfg, parts[0]), parts[1]), parts[2]: value}
    return merge(cfg, {parts[0]: {parts[1]: params}}, where="grid")


def _axis_order(key: str) -> tuple[int, int]:
    head = key.split(".")[0]
    return (STAGES.index(head) if head in STAGES else -1, "." in key)  # a section entry before its dotted keys


def build_axes(grid: dict, args: argparse.Namespace) -> list[tuple[str, list]]:
    """The YAML grid with the axis flags laid over it (a flag replaces the entries for the same setting)."""
    from .run import _dims, _k_value

    if not isinstance(grid, dict):
        raise UserError("grid: expected a mapping of setting -> list of values")
    axes = dict(grid)
    convert = {"dims": _dims, "k": _k_value, "seed": _int}
    for flag, (key, replaces) in AXIS_FLAGS.items():
        # Dataset and encoder specs may hold commas (webdataset:shard-{a,b}.tar): those flags only repeat.
        values = _split(getattr(args, flag), flag, convert.get(flag, str), commas=flag not in ("dataset", "encoder"))
        if values:
            for k in replaces:
                axes.pop(k, None)
            axes[key] = values
    for key, values in axes.items():
        _check_key(str(key))
        if not isinstance(values, list) or not values:
            raise UserError(f"grid.{key}: expected a non-empty list of values, got {values!r}")
    return sorted(axes.items(), key=lambda kv: _axis_order(kv[0]))


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def base_config(data: dict, args: argparse.Namespace):
    from .config import RunConfig, merge

    if not isinstance(data, dict):
        raise UserError("base: expected a mapping of run settings (the schema of gpuclust.run --config)")
    if "output" in data:
        raise UserError("base.output: the sweep names run directories itself; use --output for the sweep directory")
    cfg = merge(RunConfig(), data, where="base")
    flags: dict = {}
    if args.limit is not None:
        flags.setdefault("data", {})["limit"] = args.limit
    if args.cache_dir is not None:
        flags.setdefault("encode", {})["cache_dir"] = args.cache_dir
    if args.device is not None:
        flags["device"] = args.device
    return merge(cfg, flags, where="flags")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))  # an empty mapping (no params) adds no column
        elif k != "output":
            out[f"{prefix}{k}"] = v
    return out


def _short(spec: str) -> str:
    return spec.rstrip("/").split("/")[-1]


@dataclass
class Run:
    index: int  # 1-based position in the grid
    cfg: object  # RunConfig with output = the run directory relative to the sweep directory
    flat: dict  # dotted settings -> value

    @property
    def id(self) -> str:
        return f"{self.index:04d}"

    @property
    def dir(self) -> str:
        return self.cfg.output

    def main_parts(self) -> list[str]:
        r = self.cfg.reduce
        red = f"{r.method}{r.dims}" if r.method in ("pca", "umap") else r.method
        return [_short(self.cfg.data.spec), _short(self.cfg.encode.spec), red, self.cfg.cluster.method]

    def label(self, varied: list[str]) -> str:
        """The log line's name for this run: dataset encoder reduction clusterer, then any other varied setting."""
        shown = {"data.spec", "encode.spec", "reduce.method", "reduce.dims", "cluster.method"}
        extra = [f"{k.split('.')[-1]}={_cell(self.flat.get(k))}" for k in varied if k not in shown
                 and not (".params." in k and self.flat.get(k) is None)]  # a parameter this run's method lacks
        return " ".join(self.main_parts() + extra)


def _slug(parts: list[str]) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "-".join(parts)).strip("-")[:60] or "run"


def expand(base, axes: list[tuple[str, list]]) -> list[Run]:
    runs = []
    for i, combo in enumerate(itertools.product(*(values for _, values in axes)), 1):
        cfg = base
        for (key, _), value in zip(axes, combo):
            cfg = _apply(cfg, key, value)
        run = Run(i, cfg, {})
        run.cfg = dataclasses.replace(cfg, output=f"runs/{i:04d}-{_slug(run.main_parts())}")
        run.flat = _flatten(json.loads(json.dumps(run.cfg.to_dict(), default=str)))
        runs.append(run)
    return runs


def varied_keys(runs: list[Run]) -> list[str]:
    keys = list(dict.fromkeys(k for r in runs for k in r.flat))
    return [k for k in keys if len({json.dumps(r.flat.get(k), sort_keys=True) for r in runs}) > 1]


def check_run(cfg) -> None:
    """Everything about one grid point that can be known without its data (`check_config`)."""
    from .pipeline import check_config

    check_config(cfg)


def plan(args: argparse.Namespace) -> tuple[list[Run], list[tuple[str, list]]]:
    from .config import load_yaml

    doc = load_yaml(args.config) if args.config else {}
    unknown = sorted(set(doc) - {"base", "grid"})
    if unknown:
        raise UserError(f"--config {args.config}: unknown top-level key(s) {', '.join(unknown)}; a sweep file has "
                        "`base:` (run settings) and `grid:` (setting -> list of values)")
    base = base_config(doc.get("base") or {}, args)
    axes = build_axes(doc.get("grid") or {}, args)
    runs = expand(base, axes)
    varied = varied_keys(runs)
    for run in runs:
        try:
            check_run(run.cfg)
        except UserError as exc:
            raise UserError(f"grid point {run.index} of {len(runs)} ({run.label(varied)}): {exc}") from None
    return runs, axes


# ---------------------------------------------------------------------------------------------- sweep directory


def _normal(obj):
    return json.loads(json.dumps(obj, default=str))


def _resolved(entries: list) -> list:
    """Recorded runs re-read through today's RunConfig, so a setting added by an upgrade (with its default) does not
    make an old sweep look like another grid; a recorded key that no longer exists does."""
    from .config import RunConfig, merge

    out = []
    for e in entries:
        try:
            cfg = _normal(merge(RunConfig(), e["config"], where="sweep.json").to_dict())
        except (UserError, KeyError, TypeError):
            cfg = e.get("config") if isinstance(e, dict) else e
        out.append({"run": e.get("run") if isinstance(e, dict) else None, "config": cfg})
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
            recorded = _resolved(old.get("runs") or [])
            if recorded != doc["runs"]:
                raise UserError(f"--output {out} holds another sweep ({_first_difference(recorded, doc['runs'])}); "
                                "use a new --output, or --force to discard its results")
    from .store import atomic_write_json

    atomic_write_json(meta, doc)
    for tmp in out.glob(".*.tmp"):  # litter of a write killed mid-way; we hold the lock, so no writer owns it
        tmp.unlink(missing_ok=True)
    return lock


def _cell(v):
    return json.dumps(v, sort_keys=True) if isinstance(v, (list, tuple, dict)) else v


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
    top = ranked(rows, metric)
    if not top:
        return None
    r, run = top[0], runs[top[0]["run"]]
    cfg = {k: v for k, v in _normal(run.cfg.to_dict()).items() if k != "output"}
    return {"run": r["run"], "metric": metric, "value": r[metric], "name": run.label(varied), "run_dir": run.dir,
            "settings": {k: r.get(k) for k in varied},
            "metrics": {k: r[k] for k in MAIN_METRICS if r.get(k) is not None}, "config": cfg}


def best_doc(rows: list[dict], runs: dict[str, Run], varied: list[str], rank_by: str) -> dict:
    metrics = list(dict.fromkeys([rank_by, "ami", "silhouette_umap_all", "silhouette_umap"]))

    def pick(subset):
        return {m: best(subset, runs, varied, m) for m in metrics}

    doc = {"rank_by": rank_by, "runs": len(runs), "finished": len(rows),
           "ok": sum(r["status"] == "ok" for r in rows), "best": pick(rows)}
    datasets = list(dict.fromkeys(run.cfg.data.spec for run in runs.values()))
    if len(datasets) > 1:  # a metric's best across datasets mostly names the easiest dataset: also per dataset
        doc["per_dataset"] = {d: pick([r for r in rows if runs[r["run"]].cfg.data.spec == d]) for d in datasets}
    return doc


def write_outputs(out: Path, rows_by_id: dict[str, dict], runs: dict[str, Run], varied: list[str],
                  rank_by: str) -> list[dict]:
    from .store import atomic_write_bytes, atomic_write_json

    rows = [rows_by_id[k] for k in sorted(rows_by_id)]
    cols = columns(rows, varied)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, cols, restval="", extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / "results.csv", buf.getvalue().encode())
    data = _parquet(rows, cols)
    if data is not None:
        atomic_write_bytes(out / "results.parquet", data)
    atomic_write_json(out / "best.json", best_doc(rows, runs, varied, rank_by))
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
    from .report.compare import by_setting

    return by_setting(ranked(rows, rank_by), varied, rank_by, rank_by in LOWER_IS_BETTER)


def write_report(out: Path, table: list[dict], runs: list[Run], varied: list[str], rank_by: str) -> Path:
    """report.html of the sweep directory: the ranked runs linked to their reports, silhouette against AMI, and the
    ranking as bars (written once the sweep ends: the plots cost a second or two)."""
    from .report.sweep_html import colour_keys, write_sweep_report

    return write_sweep_report(out, ranked(table, rank_by), [r for r in table if r["status"] != "ok"],
                              {r.id: r.label(varied) for r in runs}, {r.id: r.cfg.data.spec for r in runs},
                              colour_keys({r.id: r.flat for r in runs}, varied), rank_by, len(runs),
                              varied, rank_by in LOWER_IS_BETTER)


# ------------------------------------------------------------------------------------------------------- running


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _attempt(cfg) -> tuple[str, str, str]:
    """(status, error, detail) of one run of `cfg`; its failure is returned, never raised."""
    from . import pipeline

    try:
        pipeline.run_pipeline(cfg, progress=False)
        return "ok", "", ""
    except UserError as exc:
        return "error", _one_line(exc), str(exc)
    except Exception as exc:  # a bug or a broken environment: recorded, the sweep goes on, exit 1 at the end
        return "internal_error", f"{type(exc).__name__}: {_one_line(exc)}", traceback.format_exc()


def _write_error(run_dir: Path, detail: str) -> None:
    from .store import atomic_write_bytes

    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(run_dir / "error.txt", (detail.rstrip("\n") + "\n").encode())


def execute(run: Run, out: Path) -> tuple[str, str]:
    """Run one grid point in this process: (status, error). One bad point costs one row."""
    run_dir = out / run.dir
    shutil.rmtree(run_dir, ignore_errors=True)  # a killed attempt's files must not mix with this one's
    status, error, detail = _attempt(dataclasses.replace(run.cfg, output=str(run_dir)))
    if status != "ok":
        if status == "internal_error":
            log.error("run %s: %s", run.id, error)
        _write_error(run_dir, detail)
    return status, error


# ------------------------------------------------------------------------------------------------------ fan-out
#
# With --jobs/--gpus/--scheduler-address several grid points run at once, each in its own Python process (a child
# of this one, or of a Dask worker): a run's device memory, threads and any crash stay its own, and a GPU is
# pinned by CUDA_VISIBLE_DEVICES before the child imports CUDA. The child runs `_attempt` exactly as the sequential
# sweep does and reports through its exit code (0 ok, 2 error, 1 internal error) and error.txt.

EXIT_STATUS = {0: "ok", 2: "error", 1: "internal_error"}
CHILD_CODE = "import sys; from gpuclust.sweep import child_main; sys.exit(child_main(sys.argv[1:]))"
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")


def child_main(argv: list[str]) -> int:
    """Entry point of a fanned-out run: argv = [run config as JSON, run directory]."""
    from .config import RunConfig, merge

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("gpuclust").setLevel(logging.INFO)  # the run's stage log, kept in its log.txt
    config, run_dir = json.loads(argv[0]), Path(argv[1])
    cfg = dataclasses.replace(merge(RunConfig(), config, where="sweep run"), output=str(run_dir))
    status, error, detail = _attempt(cfg)
    if status != "ok":
        _write_error(run_dir, detail)
        print(f"gpuclust.sweep run: {status}: {error}", file=sys.stderr)
    return {v: k for k, v in EXIT_STATUS.items()}[status]


def _die_with_parent() -> None:
    """In a child between fork and exec: end when the sweep process ends, even by SIGKILL (Linux)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _child_command(run: Run, run_dir: Path) -> list[str]:
    config = {k: v for k, v in _normal(run.cfg.to_dict()).items() if k != "output"}
    return [sys.executable, "-c", CHILD_CODE, json.dumps(config), str(run_dir)]


def _package_path_env(env: dict) -> dict:
    """The child imports this same gpuclust, wherever the parent found it."""
    here = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH", "")) if p)
    return env


def _spawn(cmd: list[str], run_dir: Path, env: dict):
    import subprocess

    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "log.txt", "wb") as log_file:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)


def _dask_run(cmd: list[str], run_dir: str) -> int:
    """A Dask task: one grid point in a child of the worker (which holds the worker's GPU in its environment). The
    worker's own Python runs it: on another machine the client's interpreter path may not exist."""
    proc = _spawn([sys.executable, *cmd[1:]], Path(run_dir), _package_path_env(dict(os.environ)))
    return proc.wait()


def _outcome(run_dir: Path, code: int) -> tuple[str, str]:
    """(status, error) of a finished child from its exit code and error.txt."""
    status = EXIT_STATUS.get(code, "internal_error")
    if status == "ok":
        return status, ""
    err = run_dir / "error.txt"
    if status != "internal_error" or code == 1:
        if err.is_file():
            text = err.read_text(errors="replace").strip()
            return status, text.splitlines()[0] if status == "error" else _last_line(text)
    import signal

    why = (f"the run's process was killed by {signal.Signals(-code).name}" if code < 0
           else f"the run's process exited with code {code}")
    log_file = run_dir / "log.txt"
    tail = log_file.read_text(errors="replace")[-4000:] if log_file.is_file() else ""
    _write_error(run_dir, f"{why}\n\nlast lines of log.txt:\n{tail}")
    return "internal_error", why + (" (out of memory?)" if code == -9 else "")


def _last_line(text: str) -> str:
    """An internal error's summary: the traceback's last line (`Type: message`)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "internal error"


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries (without importing torch or CuPy when the
    variable says it)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import cupy

        return [str(i) for i in range(cupy.cuda.runtime.getDeviceCount())]
    except Exception:  # no CuPy, or no driver
        pass
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(ln for ln in out.splitlines() if ln.startswith("GPU "))]


class InProcess:
    """One run at a time in this process (the default)."""

    capacity = 1
    where = "this process"

    def __init__(self):
        self._done: list = []

    def start(self, run: Run, out: Path) -> None:
        self._done.append((run, execute(run, out)))

    def wait(self) -> list:
        done, self._done = self._done, []
        return done

    def stop(self) -> None:
        pass


class LocalProcesses:
    """N runs at once, each a child process; with GPUs, child i % len(gpus) sees only its GPU."""

    def __init__(self, jobs: int, gpus: list[str]):
        self.capacity = jobs
        self.gpus = gpus
        self._procs: dict = {}  # run id -> (run, run_dir, Popen)
        self._slot_of: dict = {}
        threads = max(1, (os.cpu_count() or 1) // jobs)
        self._threads = str(threads)
        self.where = (f"{jobs} processes on GPU(s) {','.join(gpus)}" if gpus
                      else f"{jobs} processes, {threads} thread(s) each")

    def start(self, run: Run, out: Path) -> None:
        run_dir = out / run.dir
        shutil.rmtree(run_dir, ignore_errors=True)
        env = _package_path_env(dict(os.environ))
        for var in THREAD_VARS:  # N runs share the cores (a user's own setting wins)
            env.setdefault(var, self._threads)
        if self.gpus:
            slot = min(set(range(self.capacity)) - set(self._slot_of.values()))
            self._slot_of[run.id] = slot
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
        self._procs[run.id] = (run, run_dir, _spawn(_child_command(run, run_dir), run_dir, env))

    def wait(self) -> list:
        while True:
            done = [(rid, code) for rid, (_, _, p) in self._procs.items() if (code := p.poll()) is not None]
            if done:
                break
            time.sleep(0.2)
        out = []
        for rid, code in done:
            run, run_dir, _ = self._procs.pop(rid)
            self._slot_of.pop(rid, None)
            out.append((run, _outcome(run_dir, code)))
        return out

    def stop(self) -> None:
        for _, _, p in self._procs.values():
            p.kill()
        for _, _, p in self._procs.values():
            p.wait()


class DaskWorkers:
    """Runs on an existing Dask cluster: one at a time per worker thread, each in a child of its worker (dask-cuda
    workers hold one GPU each). The sweep directory must be on a filesystem every worker sees."""

    def __init__(self, address: str):
        from .distributed import connect

        self.client = connect(address)
        self.capacity = max(1, sum(self.client.nthreads().values()))
        self.where = f"{self.capacity} Dask worker thread(s) at {address}"
        self._futures: dict = {}

    def start(self, run: Run, out: Path) -> None:
        run_dir = (out / run.dir).resolve()
        shutil.rmtree(run_dir, ignore_errors=True)
        fut = self.client.submit(_dask_run, _child_command(run, run_dir), str(run_dir), pure=False,
                                 key=f"gpuclust-sweep-{run.id}-{time.time_ns()}")
        self._futures[fut] = (run, run_dir)

    def wait(self) -> list:
        from distributed import wait

        done, _ = wait(list(self._futures), return_when="FIRST_COMPLETED")
        out = []
        for fut in done:
            run, run_dir = self._futures.pop(fut)
            try:
                code = fut.result()
            except Exception as exc:  # the worker died or the task could not run there
                _write_error(run_dir, f"the Dask task failed: {type(exc).__name__}: {exc}")
                out.append((run, ("internal_error", f"Dask task failed: {type(exc).__name__}: {_one_line(exc)}")))
                continue
            out.append((run, _outcome(run_dir, code)))
        return out

    def stop(self) -> None:
        self.client.cancel(list(self._futures))
        self.client.close()


def check_fan_out(args: argparse.Namespace, runs: list[Run]) -> list[str]:
    """The fan-out flags checked against the grid and this machine before anything is written; returns the GPUs
    (CUDA_VISIBLE_DEVICES entries) that --gpus takes."""
    fanned = args.jobs is not None or args.gpus is not None or args.scheduler_address
    if fanned:
        for run in runs:
            c = run.cfg
            if c.gpus > 1 or c.workers or c.scheduler_address:
                raise UserError("a fanned-out sweep (--jobs/--gpus/--scheduler-address) runs each run on one GPU or "
                                "CPU process; remove gpus/workers/scheduler_address from the sweep's base settings")
    if args.scheduler_address and (args.jobs is not None or args.gpus is not None):
        raise UserError("--scheduler-address runs one run per Dask worker thread; drop --jobs/--gpus")
    gpus: list[str] = []
    if args.gpus is not None:
        if args.gpus < 1:
            raise UserError(f"--gpus {args.gpus}: at least 1")
        visible = visible_gpus()
        if len(visible) < args.gpus:
            raise UserError(f"--gpus {args.gpus}: {len(visible)} GPU(s) visible (check nvidia-smi and "
                            "CUDA_VISIBLE_DEVICES)")
        gpus = visible[:args.gpus]
    if args.jobs is not None and args.jobs < 1:
        raise UserError(f"--jobs {args.jobs}: at least 1")
    return gpus


def open_slots(args: argparse.Namespace, gpus: list[str]):
    """Where the runs go: this process (default), N local processes (--jobs N, --gpus N), or a Dask cluster."""
    if args.scheduler_address:
        return DaskWorkers(args.scheduler_address)
    if args.jobs is None and args.gpus is None:
        return InProcess()
    return LocalProcesses(args.jobs or len(gpus) or 1, gpus)


def _share_keys(run: Run) -> tuple[str, str, str]:
    """What a run shares with others through the store: its embeddings, their (seeded) UMAP space, its reduction.
    The seed picks the rows only for a stratified --limit draw; otherwise runs of every seed share the embeddings."""
    def pick(prefixes, seeded):
        return json.dumps({k: v for k, v in run.flat.items()
                           if k.startswith(prefixes) or k == "device" or (k == "seed" and seeded)},
                          sort_keys=True, default=str)

    data = run.cfg.data
    drawn = data.subsample == "stratified" and data.limit is not None
    return (pick(("data.", "encode."), drawn), pick(("data.", "encode."), True),
            pick(("data.", "encode.", "reduce."), True))


def next_ready(pending: list[Run], running: list[Run], shared: set[str]) -> Run | None:
    """The first pending run that would not compute, at the same time as a running one, something they share: the
    first run of a (dataset, encoder) encodes and every later one reuses the store; likewise for a reduction."""
    busy = {k for r in running for k in _share_keys(r) if k not in shared}
    return next((r for r in pending if not busy.intersection(_share_keys(r))), None)


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

    from .report.compare import PROXY

    proxy = rank_by != PROXY and any(f"mean_{PROXY}" in s for s in summary)
    table = Table(title=f"mean {rank_by} per setting, over every other setting")
    names = ["setting", "value", "runs", f"mean {rank_by}", "sd", "best run", *([f"mean {PROXY}"] if proxy else [])]
    for name in names:
        table.add_column(name, justify="left" if name in ("setting", "value") else "right", no_wrap=True)
    last = None
    for s in summary:
        table.add_row("" if s["setting"] == last else s["setting"], s["value"], str(s["runs"]),
                      _fmt(s[f"mean_{rank_by}"]), _fmt(s[f"sd_{rank_by}"]), s["best_run"],
                      *([_fmt(s.get(f"mean_{PROXY}"))] if proxy else []))
        last = s["setting"]
    return table


def get_args_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        name="gpuclust.sweep",
        prog="python -m gpuclust.sweep",
        description="Run a grid of gpuclust configurations (datasets x encoders x reducers x clusterers x "
                    "parameters) into one results table; rerun the same command to resume.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="YAML", help="a sweep file: `base:` (run settings, as gpuclust.run --config) "
                   "and `grid:` (setting -> list of values, e.g. cluster.method: [kmeans, hdbscan])")
    p.add_argument("--dataset", action="append", metavar="SPEC", help="dataset axis (repeatable)")
    p.add_argument("--encoder", action="append", metavar="SPEC", help="encoder axis (repeatable)")
    p.add_argument("--reduce", action="append", metavar="NAME[,NAME]", help="reducer axis: none, zscore, pca, umap")
    p.add_argument("--dims", action="append", metavar="N[,N]", help="reduced dimensions axis")
    p.add_argument("--cluster", action="append", metavar="NAME[,NAME]", help="clusterer axis")
    p.add_argument("--k", action="append", metavar="N[,N]", help="number-of-clusters axis (N or auto)")
    p.add_argument("--seed", action="append", metavar="N[,N]", help="seed axis")
    p.add_argument("--limit", type=int, metavar="N", help="use N images of every dataset")
    p.add_argument("--cache-dir", metavar="DIR", help="embedding store (default $GPUCLUST_CACHE or ~/.cache/gpuclust)")
    p.add_argument("--device", choices=["auto", "cpu", "gpu"], help="twin to run (default auto)")
    p.add_argument("--jobs", type=int, metavar="N", help="runs at once, each in its own process (default 1, or one "
                   "per GPU with --gpus); the cores are shared among them")
    p.add_argument("--gpus", type=int, metavar="N", help="fan the runs out over N GPUs of this machine, each run on "
                   "one GPU (CUDA_VISIBLE_DEVICES); with --jobs, more than one run per GPU")
    p.add_argument("--scheduler-address", metavar="ADDR", help="run the grid on an existing Dask cluster, one run "
                   "per worker thread (dask-cuda workers: one per GPU); the sweep directory and --cache-dir must be "
                   "on a filesystem every worker sees")
    p.add_argument("--output", metavar="DIR", help="sweep directory (default sweeps/<time>); the same DIR resumes")
    p.add_argument("--force", action="store_true", help="discard the results of another grid in --output")
    p.add_argument("--rank-by", default=None, metavar="METRIC",
                   help="metric to rank by (default ami with labels, else silhouette_umap_all)")
    p.add_argument("--top", type=_at_least_1, default=20, metavar="N", help="rows of the ranked table to print (20)")
    p.add_argument("--dry-run", action="store_true", help="check the grid and list its runs; run nothing")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    p.add_argument("-v", "--verbose", action="store_true", help="also each run's stage log")
    return p


def rankable() -> set[str]:
    """Every metric a run's metrics.json can hold that ranks runs (the silhouettes per space and distance too)."""
    from .evaluate.silhouette import METRICS

    silhouettes = {f"silhouette{space}{'' if m == 'euclidean' else '_' + m}"
                   for space in ("", "_umap", "_original") for m in METRICS}
    return (RANKABLE | {f"{m}_clustered" for m in RANKABLE if m not in ("calinski_harabasz", "davies_bouldin")}
            | silhouettes | {"silhouette_all", "silhouette_umap_all"})


def _check_rank_by(metric: str | None) -> None:
    if metric is not None and metric not in rankable():
        raise UserError(f"--rank-by {metric}: not a metric of a run; choose one of ami, ari, nmi, "
                        "silhouette_umap_all, silhouette_umap, ... (the scalar keys of a run's metrics.json)")


def effective_rank(asked: str | None, rows) -> str:
    """--rank-by when some finished run has that metric, else the default (AMI with labels, else the label-free
    silhouette): `--rank-by ami` on unlabelled data ranks by the silhouette instead of ranking nothing."""
    rows = list(rows)
    if asked and any(_score(r, asked) is not None for r in rows):
        return asked
    return default_rank(rows) if not asked or any(r.get("status") == "ok" for r in rows) else asked


def sweep(args: argparse.Namespace) -> int:
    _check_rank_by(args.rank_by)
    runs, axes = plan(args)  # every grid point checked before anything is written
    gpus = check_fan_out(args, runs)
    varied = varied_keys(runs)
    say = (lambda *a: None) if args.quiet else (lambda text: print(text, flush=True))
    if args.dry_run:
        for run in runs:
            say(f"[{run.index}/{len(runs)}] {run.label(varied)}")
        return 0
    out = Path(args.output or Path("sweeps") / time.strftime("%Y%m%d-%H%M%S")).expanduser()
    slots = open_slots(args, gpus)  # a scheduler that does not answer is refused before the directory is made
    try:
        lock = open_sweep_dir(out, runs, axes, args.force)
    except BaseException:
        slots.stop()
        raise
    by_id = {r.id: r for r in runs}
    rows: dict[str, dict] = {}
    previous = {}
    if (out / "results.csv").is_file():
        with open(out / "results.csv", newline="") as f:
            previous = {r["run"]: r for r in csv.DictReader(f)}
    done = set()
    for run in runs:
        old = previous.get(run.id)
        if old and old.get("status") == "ok" and (out / run.dir / "metrics.json").is_file():
            rows[run.id] = make_row(run, varied, "ok", run_dir=out / run.dir)
            done.add(run.id)
        elif old and old.get("status") in ("error", "internal_error"):  # kept until redone below
            rows[run.id] = make_row(run, varied, old["status"], old.get("error", ""))
    say(f"sweep: {len(runs)} runs in {out}" + (f", {len(done)} done earlier" if done else "")
        + f" (rerun with --output {out} to resume)")
    t0 = time.perf_counter()
    if slots.capacity > 1:
        say(f"sweep: up to {slots.capacity} runs at once ({slots.where}); each run's log in its log.txt")
    pending = [run for run in runs if run.id not in done]
    for run in runs:
        if run.id in done:
            say(f"[{run.index}/{len(runs)}] {run.label(varied)}  done earlier: {_result_text(rows[run.id])}")
    running: dict[str, tuple[Run, float]] = {}
    shared = {k for run in runs if run.id in done for k in _share_keys(run)}
    try:
        while pending or running:
            while len(running) < slots.capacity:
                run = next_ready(pending, [r for r, _ in running.values()], shared)
                if run is None:
                    break
                pending.remove(run)
                running[run.id] = (run, time.perf_counter())
                slots.start(run, out)
            for run, (status, error) in slots.wait():
                _, t_run = running.pop(run.id)
                shared.update(_share_keys(run))
                rows[run.id] = make_row(run, varied, status, error, out / run.dir)
                write_outputs(out, rows, by_id, varied, effective_rank(args.rank_by, rows.values()))
                say(f"[{run.index}/{len(runs)}] {run.label(varied)}  {_result_text(rows[run.id])} "
                    f"({time.perf_counter() - t_run:.1f}s)")
    except KeyboardInterrupt:
        slots.stop()
        print(f"gpuclust.sweep: interrupted; {len(rows)} of {len(runs)} runs recorded in {out / 'results.csv'}; "
              "rerun the same command to resume", file=sys.stderr)
        return 130
    slots.stop()
    rank_by = effective_rank(args.rank_by, rows.values())
    if args.rank_by and rank_by != args.rank_by:
        say(f"sweep: no run has {args.rank_by}; ranked by {rank_by}")
    table = write_outputs(out, rows, by_id, varied, rank_by)
    write_report(out, table, runs, varied, rank_by)
    lock.close()
    counts = {s: sum(r["status"] == s for r in table) for s in ("ok", "error", "internal_error")}
    if not args.quiet:
        print_table(table, by_id, varied, rank_by, args.top)
        picks = best_doc(table, by_id, varied, rank_by)["best"]
        say(f"sweep: {counts['ok']} ok, {counts['error']} error, {counts['internal_error']} internal error of "
            f"{len(runs)} runs ({len(done)} done earlier) in {time.perf_counter() - t0:.1f}s; {out / 'results.csv'}, "
            f"{out / 'report.html'}")
        for metric, pick in picks.items():
            if pick:
                say(f"best by {metric}: run {pick['run']} ({pick['name']}) {pick['value']:.4f}")
    if counts["internal_error"]:
        print(f"gpuclust.sweep: error: {counts['internal_error']} run(s) failed with an internal error (tracebacks in "
              "their error.txt)", file=sys.stderr)
        return 1
    if counts["error"]:
        first = next(r for r in table if r["status"] == "error")
        print(f"gpuclust.sweep: error: {counts['error']} of {len(runs)} runs failed on their settings; first: run "
              f"{first['run']}: {first['error']}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)  # argparse itself exits 2 with a usage line on bad flags
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("gpuclust").setLevel(logging.INFO if args.verbose else logging.WARNING)
    try:
        return sweep(args)
    except UserError as exc:
        print(f"gpuclust.sweep: error: {one_line(exc)}", file=sys.stderr)
        return 2


def cli() -> None:
    raise SystemExit(main())


if __name__ == "__main__":
    raise SystemExit(main())
