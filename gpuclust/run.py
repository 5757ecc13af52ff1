"""`python -m gpuclust.run`: one dataset, one configuration, end to end.

Exit codes: 0 success; 2 bad input or usage (one line on stderr); 1 internal error.
"""
from __future__ import annotations

import argparse
import logging
import sys

from .errors import OneLineParser, UserError, one_line

EXAMPLE = """examples:
  python -m gpuclust.run        # Fashion-MNIST test split, EfficientNet-Lite0, UMAP to 50-d, KMeans (k = 10)
  python -m gpuclust.run --dataset imagefolder:~/photos --encoder dino_vitb16 --cluster hdbscan
  python -m gpuclust.run --dataset digits --encoder pixels --reduce pca --dims 20 --k 10 --device cpu
  python -m gpuclust.run --list encoders
"""


def _k_value(text: str):
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got {text!r}") from None


def _dims(text: str):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    return int(v) if v.is_integer() else v


def _k_range(text: str):
    lo, sep, hi = text.partition(":")
    if sep and lo.strip().isdigit() and hi.strip().isdigit():
        return (int(lo), int(hi))
    raise argparse.ArgumentTypeError(f"expected MIN:MAX, e.g. 2:30, got {text!r}")


def get_args_parser() -> argparse.ArgumentParser:
    from .cluster import CLUSTERERS
    p = OneLineParser(
        name="gpuclust",
        prog="python -m gpuclust.run",
        description="Cluster an image dataset zero-shot with a pretrained encoder and score the result.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    S = argparse.SUPPRESS  # flags left out keep the config's value
    p.add_argument("--list", choices=["encoders", "datasets", "reducers", "clusterers"], help="list names and exit")
    p.add_argument("--config", metavar="YAML", help="a YAML file of settings (flags override it)")
    p.add_argument("--dataset", default=S, metavar="SPEC", help="fashion-mnist[:train], mnist5k, digits, "
                   "imagefolder:PATH, folder:PATH, csv:PATH, parquet:PATH, torchvision:NAME:ROOT[:SPLIT], "
                   "webdataset:SHARDS, embeddings:PATH (default fashion-mnist; see --list datasets)")
    p.add_argument("--limit", type=int, default=S, metavar="N", help="use N images (the first N; see --subsample)")
    p.add_argument("--subsample", default=S, choices=["first", "stratified"],
                   help="with --limit: the first N images, or a seeded draw keeping each class's share")
    p.add_argument("--download", action="store_true", default=S,
                   help="let torchvision:NAME:ROOT datasets download into ROOT (needs internet)")
    p.add_argument("--data-root", default=S, metavar="DIR",
                   help="for csv:/parquet: lists, resolve paths in DIR and skip any that leave it")
    p.add_argument("--encoder", default=S, metavar="SPEC", help="efficientnet_lite0 (default), mobilenetv2, "
                   "pixels, the study's zoo (resnet50, dino_vitb16, clip_vitb16, ...), timm:NAME, torchvision:NAME, "
                   "checkpoint:PATH (see --list encoders)")
    p.add_argument("--weights", default=S, metavar="PATH", help="encoder weights from a local file (offline)")
    p.add_argument("--arch", default=S, metavar="ARCH",
                   help="architecture for --encoder checkpoint:PATH: torchvision:NAME or timm:NAME")
    p.add_argument("--preprocess", default=S, choices=["default", "study"],
                   help="default: the weights' own transform; study: Resize(224) + CenterCrop(224)")
    p.add_argument("--batch-size", type=int, default=S, metavar="N", help="encoder batch size (default 128)")
    p.add_argument("--num-workers", type=int, default=S, metavar="N", help="DataLoader workers (default 0)")
    p.add_argument("--cache-dir", default=S, metavar="DIR",
                   help="embedding store (default $GPUCLUST_CACHE or ~/.cache/gpuclust)")
    p.add_argument("--shard-size", type=int, default=S, metavar="N",
                   help="rows per embedding-store shard, the unit of resumption (default 2048)")
    p.add_argument("--store-dtype", default=S, choices=["float32", "float16"],
                   help="embedding store precision on disk (default float32; float16 halves it)")
    p.add_argument("--precision", default=S, choices=["fp32", "bf16", "fp16"],
                   help="encoder arithmetic: fp32 (default) or bf16/fp16 autocast (faster on GPUs)")
    p.add_argument("--decode", default=S, choices=["cpu", "device"],
                   help="cpu: decode images with PIL in DataLoader workers (default); device: decode JPEGs on the "
                   "encoder's device (nvJPEG on a GPU)")
    p.add_argument("--compile", action="store_true", default=S, help="torch.compile the encoder (long runs)")
    p.add_argument("--runtime", default=S, choices=["auto", "torch", "onnx"],
                   help="where the CPU twin's encoder runs: auto (ONNX Runtime when installed, else torch; the GPU "
                        "twin always uses torch), torch, or onnx")
    p.add_argument("--reduce", default=S, choices=["none", "zscore", "pca", "umap"], help="reducer (default umap)")
    p.add_argument("--dims", type=_dims, default=S, metavar="N",
                   help="reduced dimensions (default 50); for pca a share of variance to keep, e.g. 0.9")
    p.add_argument("--zscore", action=argparse.BooleanOptionalAction, default=S,
                   help="z-score the embeddings before reducing (default: before pca only, as the study)")
    p.add_argument("--normalize", default=S, choices=["none", "l2", "zscore", "spherical"],
                   help="normalise the reduced space before clustering (default none)")
    p.add_argument("--reduce-param", action="append", default=S, metavar="K=V",
                   help="extra reducer parameter, e.g. n_neighbors=15 (repeatable)")
    p.add_argument("--fit-sample", type=int, default=S, metavar="N",
                   help="fit PCA/UMAP on N seeded rows and transform the rest chunk by chunk: the embeddings are "
                        "streamed from disk, never held whole (for datasets larger than memory)")
    p.add_argument("--cluster", default=S, choices=list(CLUSTERERS), help="clusterer (default kmeans)")
    p.add_argument("--k", type=_k_value, default=S, metavar="N|auto",
                   help="number of clusters (default: number of classes); auto: chosen by UMAP-space silhouette")
    p.add_argument("--k-range", type=_k_range, default=S, metavar="MIN:MAX", help="candidates for --k auto (2:30)")
    p.add_argument("--cluster-param", action="append", default=S, metavar="K=V",
                   help="extra clusterer parameter, e.g. min_cluster_size=20 (repeatable)")
    p.add_argument("--no-silhouette-umap", action="store_true", help="skip the UMAP-space silhouette "
                   "(saves a UMAP fit when --reduce is not umap)")
    p.add_argument("--silhouette-original", action="store_true",
                   help="also score the silhouette in the encoder's own embedding space")
    p.add_argument("--silhouette-metrics", default=S, metavar="M[,M]",
                   help="silhouette distances: euclidean (default), l1, chebyshev, cosine, comma-separated")
    p.add_argument("--device", default=S, choices=["auto", "cpu", "gpu"], help="twin to run (default auto)")
    p.add_argument("--gpus", type=int, default=S, metavar="N",
                   help="GPUs to encode on: N > 1 starts one Dask-CUDA worker per GPU (default 1)")
    p.add_argument("--workers", type=int, default=S, metavar="N",
                   help="encode with N Dask worker processes on this machine (distributed.LocalCluster)")
    p.add_argument("--scheduler-address", default=S, metavar="ADDR",
                   help="encode on an existing Dask cluster, e.g. tcp://10.0.0.5:8786")
    p.add_argument("--seed", type=int, default=S, metavar="N", help="random seed (default 0)")
    p.add_argument("--output", default=S, metavar="DIR", help="run directory (default runs/<time>-<names>)")
    p.add_argument("--gallery", type=int, default=S, metavar="N",
                   help="images per cluster in report.html, nearest the cluster's centre (default 8; 0: none)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or stage log")
    return p


_FLAG_TO_KEY = {
    "dataset": ("data", "spec"), "limit": ("data", "limit"), "data_root": ("data", "root"),
    "subsample": ("data", "subsample"), "download": ("data", "download"),
    "encoder": ("encode", "spec"), "weights": ("encode", "weights"), "batch_size": ("encode", "batch_size"),
    "num_workers": ("encode", "num_workers"), "cache_dir": ("encode", "cache_dir"),
    "shard_size": ("encode", "shard_size"), "store_dtype": ("encode", "store_dtype"),
    "precision": ("encode", "precision"), "compile": ("encode", "compile"), "arch": ("encode", "arch"),
    "decode": ("encode", "decode"), "runtime": ("encode", "runtime"),
    "preprocess": ("encode", "preprocess"),
    "reduce": ("reduce", "method"), "dims": ("reduce", "dims"), "zscore": ("reduce", "zscore"),
    "normalize": ("reduce", "normalize"),
    "fit_sample": ("reduce", "fit_sample"),
    "cluster": ("cluster", "method"), "k": ("cluster", "k"), "k_range": ("cluster", "k_range"),
    "device": (None, "device"), "gpus": (None, "gpus"), "workers": (None, "workers"),
    "scheduler_address": (None, "scheduler_address"), "seed": (None, "seed"), "output": (None, "output"),
    "gallery": (None, "gallery"),
}


def config_from_args(args: argparse.Namespace):
    from .config import RunConfig, load_yaml, merge, parse_kv

    cfg = RunConfig()
    if args.config:
        cfg = merge(cfg, load_yaml(args.config), where=args.config)
    values: dict = {}
    for flag, (section, key) in _FLAG_TO_KEY.items():
        if hasattr(args, flag):
            (values.setdefault(section, {}) if section else values)[key] = getattr(args, flag)
    if hasattr(args, "reduce_param"):
        values.setdefault("reduce", {})["params"] = {**cfg.reduce.params, **parse_kv(args.reduce_param,
                                                                                     "--reduce-param")}
    if hasattr(args, "cluster_param"):
        values.setdefault("cluster", {})["params"] = {**cfg.cluster.params, **parse_kv(args.cluster_param,
                                                                                       "--cluster-param")}
    ev = values.setdefault("evaluate", {})
    if args.no_silhouette_umap:
        ev["silhouette_umap"] = False
    if args.silhouette_original:
        ev["silhouette_original"] = True
    if hasattr(args, "silhouette_metrics"):
        ev["silhouette_metrics"] = tuple(m.strip() for m in args.silhouette_metrics.split(",") if m.strip())
    cfg = merge(cfg, values, where="flags")
    from .pipeline import check_values

    check_values(cfg)
    return cfg


def list_names(what: str) -> str:
    if what == "encoders":
        from .encode import ENCODERS, PREFIXES
        from .encode.zoo import ZOO

        rows = ([(n, e.help) for n, e in ENCODERS.items()] + [(n, e.help) for n, e in ZOO.items()]
                + [(f"{p}:{'PATH' if p == 'checkpoint' else 'NAME'}", h.split(" - ", 1)[-1])
                   for p, h in PREFIXES.items()])
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
    from rich.console import Console
    from rich.table import Table

    console = console or Console(markup=False)  # plain text: "[s]" and a path's brackets are not rich markup
    m, t = result.metrics, result.timings
    table = Table(title="gpuclust", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("ami", "ari", "nmi", "silhouette", "silhouette_umap", "n_clusters", "noise_fraction", "n_rows",
                "n_skipped"):
        if key in m and m[key] is not None:
            v = m[key]
            table.add_row(key, f"{v:.4f}" if isinstance(v, float) else str(v))
    for stage in ("data", "encode", "reduce", "cluster", "evaluate", "report", "total"):
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
    raise SystemExit(main())


if __name__ == "__main__":
    raise SystemExit(main())
