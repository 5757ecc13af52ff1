"""`python -m gpuclust.sweep`: flags parsed into SweepOptions, the sweep run by the same functions as `run_sweep`,
then the console's tables and the exit code (0 ok, 2 bad input or runs failing on their settings, 1 an internal
error, 130 interrupted)."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from ..errors import OneLineParser, UserError, one_line
from .options import SweepOptions
from .runner import SweepInterrupted, SweepResult, prepare, run_planned
from .select import pick_line
from .table import print_table

EXAMPLE = """examples:
  python -m gpuclust.sweep --dataset digits --encoder pixels --reduce pca,umap --dims 10 \\
      --cluster kmeans,agglomerative,hdbscan --output sweeps/digits
  python -m gpuclust.sweep --config sweep.yaml --output sweeps/study    # rerun the same command to resume
"""


# Flags that make an axis -> the grid key they set (an axis replaces the sweep file's entries for that setting).
AXIS_FLAGS = {"dataset": "data.spec", "encoder": "encode.spec", "reduce": "reduce.method", "dims": "reduce.dims",
              "cluster": "cluster.method", "k": "cluster.k", "seed": "seed"}


def _at_least_1(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n}: at least 1")
    return n


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def get_args_parser() -> argparse.ArgumentParser:
    """The sweep's flags (`python -m gpuclust.sweep --help`)."""
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


def flag_axes(args: argparse.Namespace) -> dict[str, list]:
    """The axis flags as grid axes, in the order of AXIS_FLAGS (which orders axes of the same stage)."""
    from ..run import _dims, _k_value

    convert = {"dims": _dims, "k": _k_value, "seed": _int}
    axes = {}
    for flag, key in AXIS_FLAGS.items():
        # Dataset and encoder specs may hold commas (webdataset:shard-{a,b}.tar): those flags only repeat.
        values = _split(getattr(args, flag), flag, convert.get(flag, str), commas=flag not in ("dataset", "encoder"))
        if values:
            axes[key] = values
    return axes


def options_from_args(args: argparse.Namespace) -> SweepOptions:
    """The parsed flags as SweepOptions (UserError for an axis flag that does not parse)."""
    overrides: dict = {}
    if args.limit is not None:
        overrides.setdefault("data", {})["limit"] = args.limit
    if args.cache_dir is not None:
        overrides.setdefault("encode", {})["cache_dir"] = args.cache_dir
    if args.device is not None:
        overrides["device"] = args.device
    return SweepOptions(config=args.config, grid=flag_axes(args), overrides=overrides, output=args.output,
                        force=args.force, rank_by=args.rank_by, jobs=args.jobs, gpus=args.gpus,
                        scheduler_address=args.scheduler_address, top=args.top, dry_run=args.dry_run,
                        quiet=args.quiet, verbose=args.verbose)


def parse_options(argv: list[str] | None = None) -> SweepOptions:
    """`python -m gpuclust.sweep`'s command line as SweepOptions."""
    return options_from_args(get_args_parser().parse_args(argv))


def run_command(options: SweepOptions) -> int:
    """The command's sweep: check, run (or list with dry_run) and print; returns the exit code."""
    runs, axes, gpus = prepare(options, count_gpus=not options.dry_run)  # a dry run may plan a GPU sweep anywhere
    say = (lambda *a: None) if options.quiet else (lambda text: print(text, flush=True))
    if options.dry_run:
        from .grid import varied_keys

        varied = varied_keys(runs)
        for run in runs:
            say(f"[{run.index}/{len(runs)}] {run.label(varied)}")
        return 0
    out = Path(options.output or Path("sweeps") / time.strftime("%Y%m%d-%H%M%S")).expanduser()
    try:
        result = run_planned(options, runs, axes, gpus, out, say)
    except SweepInterrupted as exc:
        print(f"gpuclust.sweep: {exc}; rerun the same command to resume", file=sys.stderr)
        return 130
    if not options.quiet:
        _print_summary(result, options.top, say)
    return _exit_code(result)


def _print_summary(result: SweepResult, top: int, say) -> None:
    """The ranked table, the per-setting table, the counts and the best runs."""
    out, counts = result.out, result.counts()
    print_table(result.table, result.by_id, result.varied, result.rank_by, top)
    say(f"sweep: {counts['ok']} ok, {counts['error']} error, {counts['internal_error']} internal error of "
        f"{len(result.runs)} runs ({result.done_earlier} done earlier) in {result.seconds:.1f}s; "
        f"{out / 'results.csv'}, {out / 'report.html'}")
    for metric, pick in result.best()["best"].items():
        if pick:
            say(f"best by {metric}: run {pick['run']} ({pick['name']}) {pick['value']:.4f}")
    for spec, doc in result.picks.items():
        prefix = "" if len(result.picks) == 1 else f"{spec}: "
        if doc:
            say(prefix + pick_line(doc))
        elif counts["ok"]:
            say(prefix + "label-free pick: none (no ok run kept the rows it is compared on, selection.parquet: runs "
                "made before gpuclust kept them, or without a UMAP space)")


def _exit_code(result: SweepResult) -> int:
    """1 when a run failed with an internal error, 2 when one failed on its settings, else 0 (with one line)."""
    counts = result.counts()
    if counts["internal_error"]:
        print(f"gpuclust.sweep: error: {counts['internal_error']} run(s) failed with an internal error (tracebacks in "
              "their error.txt)", file=sys.stderr)
        return 1
    if counts["error"]:
        first = next(r for r in result.table if r["status"] == "error")
        print(f"gpuclust.sweep: error: {counts['error']} of {len(result.runs)} runs failed on their settings; first: "
              f"run {first['run']}: {first['error']}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m gpuclust.sweep`: returns the exit code."""
    args = get_args_parser().parse_args(argv)  # argparse itself exits 2 with a usage line on bad flags
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("gpuclust").setLevel(logging.INFO if args.verbose else logging.WARNING)
    try:
        return run_command(options_from_args(args))
    except UserError as exc:
        print(f"gpuclust.sweep: error: {one_line(exc)}", file=sys.stderr)
        return 2


def cli() -> None:
    """The `gpuclust-sweep` console script."""
    raise SystemExit(main())
