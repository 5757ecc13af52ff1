"""Images in, answers out, from Python: `embed` (images -> embeddings) and `cluster_images` (the whole run, in
memory, as `python -m gpuclust.run` computes it; `.save()` writes its run directory).

`data` is a dataset spec ("digits", "imagefolder:~/photos", "embeddings:PATH", ...), a list of image paths, or a
dataset object (gpuclust.load_dataset). `encoder` is a registered name or a ready gpuclust.Encoder. `clusterer` is
a gpuclust.Clusterer or any object with fit_predict (then reduced first by UMAP to 50-d, the default job's space).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Sequence

from .config import ClusterConfig, CurateConfig, DataConfig, EncodeConfig, ExploreConfig, ReduceConfig, RunConfig
from .errors import UserError
from .estimator import Clusterer
from .result import ClusterResult


def cluster_images(data: Any, encoder: Any = "efficientnet_lite0", clusterer: Any = None, *,
                   limit: int | None = None, subsample: str = "first", device: str | None = None,
                   random_state: int | None = None, cache_dir: str | None = None, batch_size: int = 128,
                   num_workers: int | str = "auto", precision: str = "fp32", runtime: str = "auto",
                   preprocess: str = "default", weights: str | None = None, arch: str | None = None,
                   silhouette_original: bool = False, duplicates: float | None = None,
                   outliers: float | None = None, gallery: int = 8, map: str = "umap",
                   progress: bool = True) -> ClusterResult:
    """Encode the images (reusing the embedding store), reduce, cluster and score them; nothing is written but the
    store. `device`/`random_state` default to the clusterer's. The clusterer, when a gpuclust.Clusterer, is fitted
    too (labels_, embedding_ as numpy). `duplicates` (a cosine threshold) and `outliers` (a fraction) mark those rows,
    as --duplicates and --outliers do. `map`: "umap" (the 2-D map of `res.explore()` and the report) or "none" to
    skip it, as --map does. Returns a ClusterResult (`to_frame()`, `metrics`, `save(path)`)."""
    from .backend import resolve_backend
    from .checks import check_against_data, check_config, check_values
    from .pipeline import StageTimer, compute

    data = as_data(data)
    model = as_clusterer(clusterer)
    model.check_settings()  # a bad name or keyword costs no encoding
    named = isinstance(model.reducer, (str, type(None))) and isinstance(model.clusterer, str)
    enc = None if isinstance(encoder, str) else _ready_encoder(encoder)
    cfg = run_config(data, encoder if enc is None else enc.name, model, limit=limit, subsample=subsample,
                     device=device or model.device, seed=model.random_state if random_state is None else random_state,
                     encode=dict(cache_dir=cache_dir, batch_size=batch_size, num_workers=num_workers,
                                 precision=precision, runtime=runtime, preprocess=preprocess, weights=weights,
                                 arch=arch), silhouette_original=silhouette_original, gallery=gallery,
                     curate=CurateConfig(duplicates=duplicates, outliers=outliers), map=map)
    ready_data = not isinstance(data, str)
    if named:
        check_config(cfg, ready_data=ready_data, ready_encoder=enc is not None)
    else:
        check_values(cfg)
    backend = resolve_backend(cfg.device)
    timer, t_start = StageTimer(backend, progress), time.perf_counter()
    ds = _dataset(data, cfg, timer)
    if named:
        check_against_data(cfg, ds)
    result = compute(cfg, ds, backend, timer, progress, encoder=enc, model=None if named else model)
    if not isinstance(data, (str, list, tuple)) and not hasattr(data, "__fspath__"):
        result.config["resolved"]["dataset_object"] = True  # its rows: not what the spec alone loads
    if named:
        twins = {k: result.twins[k] for k in ("reduce", "cluster")}
        model._set_fitted(backend, result.embedding_device, result.labels_device, twins,
                          result.config["resolved"]["cluster_params"], host=True)
    else:
        result.config["reduce"]["method"], result.config["cluster"]["method"] = _names(model)
    result.timings["total"] = round(time.perf_counter() - t_start, 4)
    return result


def embed(data: Any, encoder: Any = "efficientnet_lite0", *, limit: int | None = None, subsample: str = "first",
           device: str = "auto", cache_dir: str | None = None, batch_size: int = 128, num_workers: int | str = "auto",
           precision: str = "fp32", runtime: str = "auto", preprocess: str = "default", weights: str | None = None,
           arch: str | None = None, progress: bool = True, seed: int = 0, return_rows: bool = False):
    """The embeddings (rows x dim, float32) of every readable image, from the embedding store where it holds them:
    numpy on the CPU twin, CuPy on the GPU twin (handed over from torch without a copy). Unreadable images are left
    out with a warning; `return_rows=True` returns (embeddings, the dataset row of each) to align labels with."""
    data = as_data(data)
    from .backend import resolve_backend
    from .checks import check_config
    from .pipeline import StageTimer, encode_stage

    enc = None if isinstance(encoder, str) else _ready_encoder(encoder)
    cfg = run_config(data, encoder if enc is None else enc.name, Clusterer(), limit=limit, subsample=subsample,
                     device=device, seed=seed, encode=dict(cache_dir=cache_dir, batch_size=batch_size,
                                                           num_workers=num_workers, precision=precision,
                                                           runtime=runtime, preprocess=preprocess, weights=weights,
                                                           arch=arch))
    check_config(cfg, ready_data=not isinstance(data, str), ready_encoder=enc is not None)
    backend = resolve_backend(device)
    ds = _dataset(data, cfg, StageTimer(backend))
    if isinstance(data, str) and data.partition(":")[0] == "embeddings":
        raise UserError(f"{data}: these are embeddings already; load them with numpy")
    emb, _ = encode_stage(ds, cfg, backend, progress, encoder=enc)
    return (emb.X, emb.rows) if return_rows else emb.X


def as_data(data: Any) -> Any:
    """A string that names no dataset but an existing file or folder is that path (a folder: every image under it);
    anything else is passed on as it is."""
    from .data import DATASETS

    if isinstance(data, str) and data.partition(":")[0] not in DATASETS and Path(data).expanduser().exists():
        return Path(data).expanduser()
    return data


def as_clusterer(clusterer: Any) -> Clusterer:
    """A gpuclust.Clusterer from None (the default job's: UMAP to 50-d, then KMeans), a Clusterer, or any object
    with fit_predict (reduced first by the default UMAP)."""
    if clusterer is None:
        return Clusterer()
    if isinstance(clusterer, Clusterer):
        return clusterer
    if isinstance(clusterer, str):
        return Clusterer(clusterer=clusterer)
    if hasattr(clusterer, "fit_predict"):
        return Clusterer(clusterer=clusterer)
    raise UserError(f"clusterer: expected a gpuclust.Clusterer, a clusterer name or an object with fit_predict, "
                    f"got {type(clusterer).__name__}")


def run_config(data: Any, encoder: str, model: Clusterer, *, limit, subsample, device, seed, encode: dict,
               silhouette_original: bool = False, gallery: int = 8, curate: CurateConfig | None = None,
               map: str = "umap") -> RunConfig:
    """The RunConfig these Python arguments mean (what config.json records, and what the CLI would have run)."""
    named_reducer = isinstance(model.reducer, (str, type(None)))
    named_clusterer = isinstance(model.clusterer, str)
    reduce = ReduceConfig(method=(model.reducer or "none") if named_reducer else "none", dims=model.n_components,
                          params=dict(model.reducer_params or {}) if named_reducer else {}, zscore=model.zscore,
                          normalize=model.normalize)
    cluster = ClusterConfig(method=model.clusterer if named_clusterer else "kmeans", k=model.n_clusters,
                            k_range=tuple(model.k_range),
                            params=dict(model.clusterer_params or {}) if named_clusterer else {})
    spec = data if isinstance(data, str) else getattr(data, "spec", "paths")
    cfg = RunConfig(data=DataConfig(spec=spec, limit=limit, subsample=subsample),
                    encode=dataclasses.replace(EncodeConfig(spec=encoder), **encode), reduce=reduce, cluster=cluster,
                    device=device, seed=seed, gallery=gallery, curate=curate or CurateConfig(),
                    explore=ExploreConfig(map=map))
    if silhouette_original:
        cfg = dataclasses.replace(cfg, evaluate=dataclasses.replace(cfg.evaluate, silhouette_original=True))
    return cfg


def _dataset(data: Any, cfg: RunConfig, timer):
    """The dataset `data` stands for, with cfg's limit applied."""
    from .data import ImageDataset
    from .pipeline import data_stage

    if isinstance(data, str):
        return data_stage(cfg, timer)
    if isinstance(data, ImageDataset):
        ds = data
    elif isinstance(data, (list, tuple)) or hasattr(data, "__fspath__"):
        ds = paths_dataset([data] if hasattr(data, "__fspath__") else data)
    else:
        raise UserError(f"data: expected a dataset spec, a list of image paths or a dataset, got {type(data).__name__}")
    if cfg.data.limit is None:
        return ds
    if cfg.data.subsample == "stratified":
        from .data.base import stratified_rows

        return ds.take(stratified_rows(ds.labels, len(ds), cfg.data.limit, cfg.seed))
    return ds.subset(cfg.data.limit)


def paths_dataset(paths: Sequence[Any]):
    """A dataset of these image files (no labels); a folder in the list stands for every image under it."""
    from .data.base import FileDataset, list_images

    files: list[str] = []
    for p in paths:
        path = Path(p).expanduser().absolute()
        files.extend(str(f) for f in list_images(path)) if path.is_dir() else files.append(str(path))
    if not files:
        raise UserError("data: the list holds no images")
    return FileDataset(spec=f"paths:{len(files)}", paths=files, description=f"{len(files)} image files")


def _ready_encoder(encoder: Any):
    """A gpuclust.Encoder from a ready one (or anything create_encoder accepts)."""
    from .encode import create_encoder

    return create_encoder(encoder)


def _names(model: Clusterer) -> tuple[str, str]:
    """What config.json calls a model's steps: the name, or the ready object's class."""
    def name(step, default):
        return (step or default) if isinstance(step, (str, type(None))) else type(step).__name__

    return name(model.reducer, "none"), name(model.clusterer, "none")
