"""`python -m gpuclust.run`: one dataset, one configuration, end to end.

Exit codes: 0 success; 2 bad input or usage (one line on stderr); 1 internal error.
"""
from __future__ import annotations

import argparse
import logging
import sys

from .config import SECTIONS, Option, RunConfig, load_yaml, merge, options, parse_dims, parse_k, parse_kv
from .errors import OneLineParser, UserError, one_line

EXAMPLE = """examples:
  python -m gpuclust.run        # Fashion-MNIST test split, EfficientNet-Lite0, UMAP to 50-d, KMeans (k = 10)
  python -m gpuclust.run --dataset imagefolder:~/photos --encoder dino_vitb16 --cluster hdbscan
  python -m gpuclust.run --dataset digits --encoder pixels --reduce pca --dims 20 --k 10 --device cpu
  python -m gpuclust.run --list encoders
"""


# The sweep's axis flags parse --k and --dims as this CLI does (gpuclust.sweep.grid imports these names).
_k_value, _dims = parse_k, parse_dims


def get_args_parser() -> argparse.ArgumentParser:
    """The CLI's flags: a few of its own, then one per configuration setting (gpuclust.config's schema), grouped by
    section."""
    p = OneLineParser(
        name="gpuclust",
        prog="python -m gpuclust.run",
        description="Cluster an image dataset zero-shot with a pretrained encoder and score the result.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--list", choices=["encoders", "datasets", "reducers", "clusterers"], help="list names and exit")
    p.add_argument("--config", metavar="YAML", help="a YAML file of settings (flags override it)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or stage log")
    groups = {name: p.add_argument_group(f"{name} (YAML: {'top-level keys' if name == 'run' else name + '.*'})")
              for name in SECTIONS}
    for opt in options():
        if opt.flag is not None:
            groups[opt.section].add_argument(opt.flag, **_argparse_kwargs(opt))
    return p


def _argparse_kwargs(opt: Option) -> dict:
    # dest is the YAML key, so config_from_args needs no table; SUPPRESS: a flag left out keeps the config's value.
    kwargs = {"dest": opt.key, "default": argparse.SUPPRESS, "help": opt.help, "action": opt.action,
              "metavar": opt.metavar, "choices": opt.choice_names(), "type": opt.parse}
    return {k: v for k, v in kwargs.items() if v is not None}


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Defaults, then the --config YAML, then the flags given; checked (ranges and choices) before any work."""
    cfg = RunConfig()
    if args.config:
        cfg = merge(cfg, load_yaml(args.config), where=args.config)
    values: dict = {}
    for opt in options():
        if opt.key not in vars(args):
            continue
        value = getattr(args, opt.key)
        if opt.action == "append":  # --reduce-param K=V items, laid over the YAML's mapping
            value = {**opt.value(cfg), **parse_kv(value, opt.flag)}
        head, _, name = opt.key.rpartition(".")
        (values.setdefault(head, {}) if head else values)[name] = value
    cfg = merge(cfg, values, where="flags")
    from .pipeline import check_values

    check_values(cfg)
    return cfg


def list_names(what: str) -> str:
    """The `--list` text for "encoders", "datasets" or "reducers" (any other value: clusterers): one aligned
    "name  help" line each."""
    if what == "encoders":
        from .encode import encoder_help

        rows = encoder_help()
    elif what == "datasets":
        from .data import DATASETS

        rows = [(n, h) for n, (_, h) in DATASETS.items()]
    elif what == "reducers":
        from .reduce import KNN, REDUCERS

        rows = list(REDUCERS.items()) + [(f"  knn={n}", f"(--reduce-param, UMAP) {h}") for n, h in KNN.items()]
    else:
        from .cluster import CLUSTERERS

        rows = [(n, c.help) for n, c in CLUSTERERS.items()]
    width = max(len(n) for n, _ in rows)
    return "\n".join(f"{n:<{width}}  {h}" for n, h in rows)


def print_summary(result, console=None) -> None:
    """Print a run's metrics, stage timings (seconds) and twins as a table, then its run directory and report.html
    when there is one; `console` defaults to a plain-text rich Console on stdout."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(markup=False)  # plain text: "[s]" and a path's brackets are not rich markup
    m, t = result.metrics, result.timings
    table = Table(title="gpuclust", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("ami", "ari", "nmi", "silhouette", "silhouette_umap", "n_clusters", "noise_fraction", "n_rows",
                "n_skipped", "n_duplicate_groups", "n_duplicates", "n_outliers", "k_auto", "k_auto_ps",
                "k_auto_low_confidence"):
        if key in m and m[key] is not None:
            v = m[key]
            table.add_row(key, f"{v:.4f}" if isinstance(v, float) else str(v))
    for stage in ("data", "encode", "reduce", "cluster", "evaluate", "curate", "map", "report", "total"):
        if stage in t:
            table.add_row(f"{stage} [s]", f"{t[stage]:.2f}")
    if result.twins.get("encode") == "none":
        table.add_row("encode", "precomputed embeddings" + (", streamed" if t.get("streamed") else ""))
    elif t.get("images_per_s"):
        table.add_row("encode images/s", f"{t['images_per_s']:.1f}")
    elif t.get("rows_reused"):
        table.add_row("encode", f"reused {t['rows_reused']} stored rows")
    table.add_row("twins", ", ".join(f"{k}={v}" for k, v in result.twins.items()))
    console.print(table)
    # Its own line, never wrapped: a path broken across a table title's lines cannot be copied.
    console.print(f"run directory: {result.output}", soft_wrap=True, highlight=False)
    if (result.output / "report.html").is_file():
        what = "plots and the cluster gallery" if (result.output / "gallery").is_dir() else "plots"
        console.print(f"report: {result.output / 'report.html'} ({what})", soft_wrap=True, highlight=False)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI on `argv` (default: sys.argv): 0 on success, 2 after a one-line UserError on stderr, 130 when
    interrupted. Bad flags exit 2 (SystemExit); other errors propagate."""
    parser = get_args_parser()
    args = parser.parse_args(argv)  # argparse itself exits 2 with a usage line on bad flags
    if args.list:
        print(list_names(args.list))
        return 0
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("distributed").setLevel(logging.WARNING)  # the scheduler's chatter, not the run's stages
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader's INFO lines read like an import failure
    try:
        cfg = config_from_args(args)
        from .pipeline import run_pipeline

        result = run_pipeline(cfg, progress=not args.quiet)
    except UserError as exc:
        print(f"gpuclust: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gpuclust: interrupted; stored embedding shards are kept and a rerun resumes", file=sys.stderr)
        return 130
    print_summary(result)
    return 0


def cli() -> None:
    """Console-script entry point: `main()`'s return value as the exit status (raises SystemExit)."""
    raise SystemExit(main())


if __name__ == "__main__":
    raise SystemExit(main())
