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
import logging
import sys
import time
from pathlib import Path

from ..errors import OneLineParser, UserError, one_line
from .fanout import _outcome, _share_keys, check_fan_out, child_main, next_ready, open_slots, visible_gpus
from .grid import Run, _at_least_1, plan, varied_keys
from .table import (
    _result_text,
    best_doc,
    default_rank,
    effective_rank,
    make_row,
    open_sweep_dir,
    print_table,
    rankable,
    write_outputs,
    write_report,
)

__all__ = ["main", "cli", "get_args_parser", "sweep", "plan", "varied_keys", "best_doc", "default_rank",
           "check_fan_out", "open_slots", "next_ready", "visible_gpus", "child_main", "_outcome", "_share_keys"]

log = logging.getLogger("gpuclust.sweep")

EXAMPLE = """examples:
  python -m gpuclust.sweep --dataset digits --encoder pixels --reduce pca,umap --dims 10 \\
      --cluster kmeans,agglomerative,hdbscan --output sweeps/digits
  python -m gpuclust.sweep --config sweep.yaml --output sweeps/study    # rerun the same command to resume
"""


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


def _check_rank_by(metric: str | None) -> None:
    if metric is not None and metric not in rankable():
        raise UserError(f"--rank-by {metric}: not a metric of a run; choose one of ami, ari, nmi, "
                        "silhouette_umap_all, silhouette_umap, ... (the scalar keys of a run's metrics.json)")


def sweep(args: argparse.Namespace) -> int:
    _check_rank_by(args.rank_by)
    runs, axes = plan(args)  # every grid point checked before anything is written
    gpus = check_fan_out(args, runs, count_gpus=not args.dry_run)  # a dry run may plan a GPU sweep anywhere
    varied = varied_keys(runs)
    say = (lambda *a: None) if args.quiet else (lambda text: print(text, flush=True))
    if args.dry_run:
        for run in runs:
            say(f"[{run.index}/{len(runs)}] {run.label(varied)}")
        return 0
    out = Path(args.output or Path("sweeps") / time.strftime("%Y%m%d-%H%M%S")).expanduser()
    slots = open_slots(args, gpus)  # a scheduler that does not answer is refused before the directory is made
    try:
        return run_grid(args, runs, axes, varied, out, slots, say)
    finally:
        slots.stop()  # whatever happened: no child run or Dask client outlives the sweep


def run_grid(args: argparse.Namespace, runs: list[Run], axes, varied: list[str], out: Path, slots, say) -> int:
    """The sweep directory opened, every run not done earlier run through `slots`, the tables and the report."""
    lock = open_sweep_dir(out, runs, axes, args.force)
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
        print(f"gpuclust.sweep: interrupted; {len(rows)} of {len(runs)} runs recorded in {out / 'results.csv'}; "
              "rerun the same command to resume", file=sys.stderr)
        return 130
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
