"""Typed run configuration: defaults, then an optional YAML file, then CLI flags. Unknown keys are errors."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError


@dataclass(frozen=True)
class DataConfig:
    spec: str = "fashion-mnist"
    limit: int | None = None
    root: str | None = None  # for csv:/parquet: lists, the folder their paths resolve in and may not leave
    subsample: str = "first"  # with limit: the first N rows, or "stratified" (seeded, class shares kept)
    download: bool = False  # torchvision datasets may download into their ROOT


@dataclass(frozen=True)
class EncodeConfig:
    spec: str = "efficientnet_lite0"
    weights: str | None = None
    batch_size: int = 128
    num_workers: int = 0
    cache_dir: str | None = None  # None: $GPUCLUST_CACHE or ~/.cache/gpuclust
    shard_size: int = 2048  # rows per store shard (a new store only; an existing one keeps its layout)
    store_dtype: str = "float32"  # float16 halves the store on disk (embeddings rounded once, the same every run)
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast)
    arch: str | None = None  # for checkpoint:PATH: torchvision:NAME or timm:NAME
    preprocess: str = "default"  # default (the weights' own) | study (Resize 224 + CenterCrop 224)
    decode: str = "cpu"  # cpu: PIL in DataLoader workers | device: JPEG bytes decoded on the encoder's device
    compile: bool = False  # torch.compile the encoder
    runtime: str = "auto"  # auto | torch | onnx: ONNX Runtime runs the CPU twin's encoder when it is installed


@dataclass(frozen=True)
class ReduceConfig:
    method: str = "umap"
    dims: int | float = 50  # PCA also takes a share of variance to keep, 0 < dims < 1
    params: dict = field(default_factory=dict)
    zscore: bool | None = None  # z-score before reducing; None: before PCA only (the study's default)
    normalize: str = "none"  # after reducing: none, l2, zscore, spherical
    # Fit PCA/UMAP on this many seeded rows and transform the rest in chunks; the embeddings are then read from disk
    # chunk by chunk and never held whole (datasets larger than memory). None: fit on every row.
    fit_sample: int | None = None


@dataclass(frozen=True)
class ClusterConfig:
    method: str = "kmeans"
    k: int | str | None = None  # None: the number of classes when labels exist; "auto": chosen by silhouette
    k_range: tuple = (2, 30)  # candidates for k = "auto"
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class EvalConfig:
    # The study's label-free proxy: silhouette in a UMAP space (reused when the run already reduced with UMAP).
    silhouette_umap: bool = True
    silhouette_original: bool = False  # also in the encoder's own space (the costliest: d is large)
    silhouette_metrics: tuple = ("euclidean",)  # any of euclidean, l1, chebyshev, cosine


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    reduce: ReduceConfig = field(default_factory=ReduceConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    device: str = "auto"
    gpus: int = 1  # > 1: one Dask-CUDA worker per GPU encodes shards
    workers: int | None = None  # Dask LocalCluster worker processes for the encode stage (CPU)
    scheduler_address: str | None = None  # an existing Dask cluster
    seed: int = 0
    output: str | None = None  # None: runs/<timestamp>-<dataset>-<encoder>-<reducer>-<clusterer>
    gallery: int = 8  # images per cluster in report.html's gallery (0: no gallery)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_SECTIONS = {"data": DataConfig, "encode": EncodeConfig, "reduce": ReduceConfig, "cluster": ClusterConfig,
             "evaluate": EvalConfig}


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
