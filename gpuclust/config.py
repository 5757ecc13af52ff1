"""Typed run configuration: defaults, then an optional YAML file, then CLI flags. Unknown keys are errors.

The schema is defined here once: each field carries its command-line flag, help text, metavar and choices
(`option`), and `run.get_args_parser`, the YAML checks and the generated docs/cli.md (`gpuclust.clidoc`) read it.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import UserError

# The YAML sections, in the order --help and docs/cli.md show them; "run" holds RunConfig's own fields.
SECTIONS = ("data", "encode", "reduce", "cluster", "evaluate", "curate", "explore", "run")


def option(default: Any = dataclasses.MISSING, *, flag: str | None, help: str, metavar: str | None = None,
           choices: tuple[str, ...] | Callable[[], Iterable[str]] | None = None, parse: Callable | None = None,
           action: str | type[argparse.Action] | None = None, factory: Callable | None = None) -> Any:
    """A dataclass field that also describes its command-line flag.

    `flag=None` says the field is set in YAML only. `choices`: a tuple of fixed words (checked for every config by
    `check_choices`), or a function returning a registry's names (the registry checks those itself). `parse`: the
    argparse type. `action="append"`: a repeatable K=V flag whose items are merged over the field's mapping."""
    meta = {"flag": flag, "help": help, "metavar": metavar, "choices": choices, "parse": parse, "action": action}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def parse_int_or_auto(text: str) -> int | str:
    """--k, --num-workers: an integer or "auto" (the range is checked with the section's settings)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got {text!r}") from None


parse_k = parse_int_or_auto  # (the name --k's parser had first)


def parse_dims(text: str) -> int | float:
    """--dims: a whole number stays an int (50.0 -> 50); a share of variance stays a float."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    return int(v) if v.is_integer() else v


def parse_k_range(text: str) -> tuple[int, int]:
    """--k-range MIN:MAX."""
    lo, sep, hi = text.partition(":")
    if sep and lo.strip().isdigit() and hi.strip().isdigit():
        return (int(lo), int(hi))
    raise argparse.ArgumentTypeError(f"expected MIN:MAX, e.g. 2:30, got {text!r}")


def parse_names(text: str) -> tuple[str, ...]:
    """A comma-separated list of names; blanks dropped ("l1, cosine," -> ("l1", "cosine"))."""
    return tuple(m.strip() for m in text.split(",") if m.strip())


def _reducers() -> list[str]:
    from .reduce import REDUCERS

    return list(REDUCERS)


def _clusterers() -> list[str]:
    from .cluster import CLUSTERERS  # a registry keyed by name

    return list(CLUSTERERS)


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from, and how many of them."""

    spec: str = option("fashion-mnist", flag="--dataset", metavar="SPEC", help=(
        "fashion-mnist[:train], mnist5k, digits, imagefolder:PATH, folder:PATH, csv:PATH, parquet:PATH, "
        "torchvision:NAME:ROOT[:SPLIT], webdataset:SHARDS, embeddings:PATH (default fashion-mnist; see --list "
        "datasets)"))
    limit: int | None = option(None, flag="--limit", metavar="N", parse=int,
                               help="use N images (the first N; see --subsample)")
    # For csv:/parquet: lists, the folder their paths resolve in and may not leave.
    root: str | None = option(None, flag="--data-root", metavar="DIR",
                              help="for csv:/parquet: lists, resolve paths in DIR and skip any that leave it")
    subsample: str = option("first", flag="--subsample", choices=("first", "stratified"),
                            help="with --limit: the first N images, or a seeded draw keeping each class's share")
    download: bool = option(False, flag="--download", action="store_true",
                            help="let torchvision:NAME:ROOT datasets download into ROOT (needs internet)")


@dataclass(frozen=True)
class EncodeConfig:
    """The encoder and how it runs; the embedding store it fills."""

    spec: str = option("efficientnet_lite0", flag="--encoder", metavar="SPEC", help=(
        "efficientnet_lite0 (default), mobilenetv2, pixels, the study's zoo (resnet50, dino_vitb16, clip_vitb16, "
        "...), timm:NAME, torchvision:NAME, checkpoint:PATH (see --list encoders)"))
    weights: str | None = option(None, flag="--weights", metavar="PATH",
                                 help="encoder weights from a local file (offline)")
    batch_size: int = option(128, flag="--batch-size", metavar="N", parse=int,
                             help="encoder batch size (default 128)")
    # auto: none where they cannot pay, else a few per core (gpuclust/encode/workers.py has the rule and its
    # reasons); config.json's resolved.num_workers records the number a run used. Workers change no number.
    num_workers: int | str = option("auto", flag="--num-workers", metavar="N|auto", parse=parse_int_or_auto, help=(
        "DataLoader worker processes decoding images beside the encoder; 0: in the main process. auto (default): "
        "0 for images held in memory, under 1,000 images to encode or --decode device, else up to 4 on the CPU "
        "twin and 16 on a GPU (one per core)"))
    cache_dir: str | None = option(None, flag="--cache-dir", metavar="DIR",
                                   help="embedding store (default $GPUCLUST_CACHE or ~/.cache/gpuclust)")
    # A new store only; an existing one keeps its layout.
    shard_size: int = option(2048, flag="--shard-size", metavar="N", parse=int,
                             help="rows per embedding-store shard, the unit of resumption (default 2048)")
    # float16 rounds the embeddings once, the same every run.
    store_dtype: str = option("float32", flag="--store-dtype", choices=("float32", "float16"),
                              help="embedding store precision on disk (default float32; float16 halves it)")
    precision: str = option("fp32", flag="--precision", choices=("fp32", "bf16", "fp16"),
                            help="encoder arithmetic: fp32 (default) or bf16/fp16 autocast (faster on GPUs)")
    arch: str | None = option(None, flag="--arch", metavar="ARCH",
                              help="architecture for --encoder checkpoint:PATH: torchvision:NAME or timm:NAME")
    preprocess: str = option("default", flag="--preprocess", choices=("default", "study"),
                             help="default: the weights' own transform; study: Resize(224) + CenterCrop(224)")
    decode: str = option("cpu", flag="--decode", choices=("cpu", "device"), help=(
        "cpu: decode images with PIL in DataLoader workers (default); device: decode JPEGs on the encoder's device "
        "(nvJPEG on a GPU)"))
    compile: bool = option(False, flag="--compile", action="store_true",
                           help="torch.compile the encoder (long runs)")
    runtime: str = option("auto", flag="--runtime", choices=("auto", "torch", "onnx"), help=(
        "where the CPU twin's encoder runs: auto (ONNX Runtime when installed, else torch; the GPU twin always uses "
        "torch), torch, or onnx"))


@dataclass(frozen=True)
class ReduceConfig:
    """The reducer between the encoder's space and the clusterer."""

    method: str = option("umap", flag="--reduce", choices=_reducers, help="reducer (default umap)")
    dims: int | float = option(50, flag="--dims", metavar="N", parse=parse_dims,
                               help="reduced dimensions (default 50); for pca a share of variance to keep, e.g. 0.9")
    params: dict = option(flag="--reduce-param", action="append", metavar="K=V", factory=dict,
                          help="extra reducer parameter, e.g. n_neighbors=15 (repeatable)")
    # None: before PCA only (the study's default).
    zscore: bool | None = option(None, flag="--zscore", action=argparse.BooleanOptionalAction,
                                 help="z-score the embeddings before reducing (default: before pca only, as the study)")
    normalize: str = option("none", flag="--normalize", choices=("none", "l2", "zscore", "spherical"),
                            help="normalise the reduced space before clustering (default none)")
    # None: fit on every row. Otherwise the embeddings are read from disk chunk by chunk and never held whole.
    fit_sample: int | None = option(None, flag="--fit-sample", metavar="N", parse=int, help=(
        "fit PCA/UMAP on N seeded rows and transform the rest chunk by chunk: the embeddings are streamed from "
        "disk, never held whole (for datasets larger than memory)"))


@dataclass(frozen=True)
class ClusterConfig:
    """The clusterer and its number of clusters."""

    method: str = option("kmeans", flag="--cluster", choices=_clusterers, help="clusterer (default kmeans)")
    # None: the number of classes when labels exist; "auto": chosen by silhouette.
    k: int | str | None = option(None, flag="--k", metavar="N|auto", parse=parse_int_or_auto, help=(
        "number of clusters (default: number of classes); auto: chosen by UMAP-space silhouette"))
    k_range: tuple = option((2, 30), flag="--k-range", metavar="MIN:MAX", parse=parse_k_range,
                            help="candidates for --k auto (2:30)")
    params: dict = option(flag="--cluster-param", action="append", metavar="K=V", factory=dict,
                          help="extra clusterer parameter, e.g. min_cluster_size=20 (repeatable)")


@dataclass(frozen=True)
class EvalConfig:
    """The label-free scores: the study's proxy is the silhouette in a UMAP space (reused when the run already
    reduced with UMAP)."""

    silhouette_umap: bool = option(True, flag="--no-silhouette-umap", action="store_false",
                                   help="skip the UMAP-space silhouette (saves a UMAP fit when --reduce is not umap)")
    # The costliest: the encoder's d is large.
    silhouette_original: bool = option(False, flag="--silhouette-original", action="store_true",
                                       help="also score the silhouette in the encoder's own embedding space")
    silhouette_metrics: tuple = option(("euclidean",), flag="--silhouette-metrics", metavar="M[,M]",
                                       parse=parse_names, help=(
        "silhouette distances: euclidean (default), l1, chebyshev, cosine, comma-separated"))


@dataclass(frozen=True)
class CurateConfig:
    """What to do about the rows: near-duplicates and outliers, marked in labels.parquet (off unless asked)."""

    duplicates: float | None = option(None, flag="--duplicates", metavar="THRESHOLD", parse=float, help=(
        "mark near-duplicates: rows whose embeddings' cosine similarity is at least THRESHOLD (0 < T <= 1), grouped "
        "with one row kept per group; written to duplicates.parquet"))
    outliers: float | None = option(None, flag="--outliers", metavar="FRACTION", parse=float, help=(
        "mark the FRACTION (0 < F < 1) of rows with the highest outlier score as outliers in labels.parquet"))


@dataclass(frozen=True)
class ExploreConfig:
    """The 2-D map every run draws in report.html and the explorer opens (gpuclust/explore/layout.py)."""

    map: str = option("umap", flag="--map", choices=("umap", "none"), help=(
        "the 2-D map of every row, written to map.parquet and drawn in report.html: umap (default; a 2-D UMAP of "
        "the embeddings on the run's twin, cached in the store) or none"))


@dataclass(frozen=True)
class RunConfig:
    """One run: a section per stage, then the run's own settings (device, executor, seed, output)."""

    data: DataConfig = field(default_factory=DataConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    reduce: ReduceConfig = field(default_factory=ReduceConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    curate: CurateConfig = field(default_factory=CurateConfig)
    explore: ExploreConfig = field(default_factory=ExploreConfig)
    device: str = option("auto", flag="--device", choices=("auto", "cpu", "gpu"), help="twin to run (default auto)")
    gpus: int = option(1, flag="--gpus", metavar="N", parse=int,
                       help="GPUs to encode on: N > 1 starts one Dask-CUDA worker per GPU (default 1)")
    workers: int | None = option(None, flag="--workers", metavar="N", parse=int,
                                 help="encode with N Dask worker processes on this machine (distributed.LocalCluster)")
    scheduler_address: str | None = option(None, flag="--scheduler-address", metavar="ADDR",
                                           help="encode on an existing Dask cluster, e.g. tcp://10.0.0.5:8786")
    seed: int = option(0, flag="--seed", metavar="N", parse=int, help="random seed (default 0)")
    # None: runs/<timestamp>-<dataset>-<encoder>-<reducer>-<clusterer>.
    output: str | None = option(None, flag="--output", metavar="DIR",
                                help="run directory (default runs/<time>-<names>)")
    gallery: int = option(8, flag="--gallery", metavar="N", parse=int, help=(
        "images per cluster in report.html, nearest the cluster's centre (default 8; 0: none)"))

    def to_dict(self) -> dict:
        """The resolved settings as a nested mapping (written next to a run's results)."""
        return dataclasses.asdict(self)


_SECTIONS = {"data": DataConfig, "encode": EncodeConfig, "reduce": ReduceConfig, "cluster": ClusterConfig,
             "evaluate": EvalConfig, "curate": CurateConfig, "explore": ExploreConfig}


@dataclass(frozen=True)
class Option:
    """One setting as the YAML file and the command line see it (read from its dataclass field's `option`)."""

    key: str  # the YAML key, "encode.precision"; a run setting has no section: "seed"
    flag: str | None
    default: Any
    help: str
    metavar: str | None = None
    choices: tuple[str, ...] | Callable[[], Iterable[str]] | None = None
    parse: Callable | None = None
    action: str | type[argparse.Action] | None = None

    @property
    def section(self) -> str:
        """The --help group and docs/cli.md section: the YAML section, or "run"."""
        return self.key.partition(".")[0] if "." in self.key else "run"

    def choice_names(self) -> tuple[str, ...] | None:
        """The fixed choices, or the registry's names now."""
        if self.choices is None:
            return None
        return tuple(self.choices() if callable(self.choices) else self.choices)

    def value(self, cfg: RunConfig) -> Any:
        """This setting's value in `cfg`."""
        head, _, name = self.key.rpartition(".")
        return getattr(getattr(cfg, head) if head else cfg, name)


def _options_of(cls, prefix: str) -> list[Option]:
    out = []
    for f in dataclasses.fields(cls):
        if cls is RunConfig and f.name in _SECTIONS:
            continue
        if "flag" not in f.metadata:  # a new setting must say how the command line sets it, if at all
            raise TypeError(f"{cls.__name__}.{f.name}: declare it with option(..., flag=...) (flag=None: YAML only)")
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        out.append(Option(prefix + f.name, default=default, **f.metadata))
    return out


def options() -> list[Option]:
    """Every setting of RunConfig, section by section in SECTIONS order (the run's own settings last)."""
    rows = [opt for name, cls in _SECTIONS.items() for opt in _options_of(cls, name + ".")]
    return rows + _options_of(RunConfig, "")


def either(words: Iterable[str]) -> str:
    """("fp32", "bf16", "fp16") -> "fp32, bf16 or fp16"."""
    words = list(words)
    return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else "".join(words)


def check_choices(cfg: RunConfig) -> None:
    """The settings with fixed choices (--precision, --device, ...), whether they came from YAML, flags or Python;
    a registry's names (--reduce, --cluster) are checked by the registry itself."""
    for opt in options():
        value = opt.value(cfg)
        if isinstance(opt.choices, tuple) and value not in opt.choices:
            raise UserError(f"{opt.flag or opt.key} {value!r}: {either(opt.choices)} (YAML {opt.key})")


# The annotations' type names, as YAML values may take them (a YAML list stands for a tuple).
_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "dict": (dict,),
          "tuple": (tuple, list), "None": (type(None),)}
_SAY = {"int": "an integer", "float": "a number", "str": "text", "bool": "true or false", "dict": "a mapping",
        "tuple": "a list", "None": "null"}


def _check_types(cls, values: dict, where: str) -> None:
    """YAML lets any type through: `dims: abc` or `limit: "100"` must fail here, in one line, not deep in a stage
    after the encoder ran."""
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        names = [t.strip() for t in str(f.type).split("|")]
        value = values[f.name]
        ok = isinstance(value, tuple(t for n in names for t in _TYPES[n]))
        if ok and isinstance(value, bool) and "bool" not in names:  # True is an int to Python, not to a user
            ok = False
        if not ok:
            wanted = " or ".join(_SAY[n] for n in names if not (n == "int" and "float" in names))
            raise UserError(f"{where}.{f.name} {value!r}: expected {wanted}")


def _merge_section(cls, current, values: dict, where: str):
    if not isinstance(values, dict):
        raise UserError(f"{where}: expected a mapping, got {type(values).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    _check_types(cls, values, where)
    return dataclasses.replace(current, **values)


def merge(cfg: RunConfig, values: dict, where: str = "config") -> RunConfig:
    """Overlay a nested mapping (from YAML or CLI) on `cfg`; unknown keys raise UserError."""
    top = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(values) - top)
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(top))}")
    changes: dict[str, Any] = {}
    for key, val in values.items():
        if key in _SECTIONS:
            changes[key] = _merge_section(_SECTIONS[key], getattr(cfg, key), val, f"{where}.{key}")
        else:
            changes[key] = val
    _check_types(RunConfig, {k: v for k, v in values.items() if k not in _SECTIONS}, where)
    return dataclasses.replace(cfg, **changes)


def load_yaml(path: str) -> dict:
    """The mapping in YAML file `path`; a missing, unreadable or malformed file is one-line UserError."""
    import yaml

    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"--config {path}: a directory; give the YAML file")
    if not p.is_file():
        raise UserError(f"--config {path}: no such file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise UserError(f"--config {path}: not UTF-8 text (is it the YAML file?)") from None
    except OSError as exc:
        raise UserError(f"--config {path}: cannot read it ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise UserError(f"--config {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: expected a mapping at the top level")
    return data


def parse_kv(items: list[str] | None, flag: str) -> dict:
    """`["k=5", "metric=cosine"]` -> {"k": 5, "metric": "cosine"}; values parsed as YAML scalars."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UserError(f"{flag} {item!r}: expected KEY=VALUE, e.g. {flag} min_samples=5")
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            out[key] = raw
    return out
