"""Checks of a run's settings before any work, so a typo costs no time and leaves no run directory; and the checks
that need the data, made before the (long) encode stage. The stages check their own values again where a library
caller reaches them directly (cluster.cluster, reduce.reduce)."""
from __future__ import annotations

from pathlib import Path

from .backend import ALGORITHMS, check_keywords
from .config import RunConfig, check_choices
from .data import ImageDataset
from .errors import UserError


def check_executor(cfg: RunConfig) -> None:
    """--gpus / --workers / --scheduler-address: consistent, and what they need is installed and present."""
    from .errors import require

    if cfg.gpus < 1:
        raise UserError(f"--gpus {cfg.gpus}: must be at least 1")
    if cfg.workers is not None and cfg.workers < 1:
        raise UserError(f"--workers {cfg.workers}: must be at least 1")
    if sum([cfg.gpus > 1, cfg.workers is not None, cfg.scheduler_address is not None]) > 1:
        raise UserError("choose one of --gpus N (N > 1), --workers N and --scheduler-address")
    if cfg.gpus > 1:
        from .backend import gpu_available

        ok, reason = gpu_available()
        if not ok:
            raise UserError(f"--gpus {cfg.gpus}: needs CUDA GPUs with CuPy and cuML ({reason})")
        import cupy

        have = cupy.cuda.runtime.getDeviceCount()
        if have < cfg.gpus:
            raise UserError(f"--gpus {cfg.gpus}: this machine has {have} GPU(s)")
        from .distributed import DASK_CUDA_INSTALL

        require("dask_cuda", f"--gpus {cfg.gpus}", DASK_CUDA_INSTALL)
    if cfg.workers is not None or cfg.scheduler_address is not None:
        from .distributed import DASK_INSTALL

        require("distributed", "--workers/--scheduler-address", DASK_INSTALL)


def check_values(cfg: RunConfig) -> None:
    """Ranges of the numbers and choices of the words (their types were checked when the config was merged)."""
    check_choices(cfg)  # the words with fixed choices, from the schema in config.py
    k, dims, limit = cfg.cluster.k, cfg.reduce.dims, cfg.data.limit
    if not (k is None or k == "auto" or (isinstance(k, int) and not isinstance(k, bool) and k >= 1)):
        raise UserError(f"--k {k!r}: a positive integer or auto")
    if isinstance(dims, bool) or not isinstance(dims, (int, float)) or dims <= 0:
        raise UserError(f"--dims {dims!r}: a positive number")
    if cfg.reduce.method == "umap" and dims != int(dims):
        raise UserError(f"--dims {dims}: UMAP needs a whole number of dimensions (a share of variance is for pca)")
    kr = cfg.cluster.k_range
    whole = all(isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer() for v in kr) \
        if isinstance(kr, (list, tuple)) else False
    if not (whole and len(kr) == 2 and 2 <= kr[0] <= kr[1]):
        raise UserError(f"k_range {kr!r}: two whole numbers [MIN, MAX] with 2 <= MIN <= MAX (--k-range MIN:MAX)")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise UserError(f"--limit {limit!r}: a positive integer")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or not 0 <= cfg.seed < 2**32:
        raise UserError(f"--seed {cfg.seed!r}: an integer from 0 to 2**32 - 1")
    if not isinstance(cfg.cluster.params, dict) or not isinstance(cfg.reduce.params, dict):
        raise UserError("params: expected a mapping of NAME: value")
    if cfg.encode.batch_size < 1:
        raise UserError(f"--batch-size {cfg.encode.batch_size}: must be at least 1")
    if cfg.encode.num_workers < 0:
        raise UserError(f"--num-workers {cfg.encode.num_workers}: must be 0 or more")
    if isinstance(cfg.gallery, bool) or not isinstance(cfg.gallery, int) or not 0 <= cfg.gallery <= 100:
        raise UserError(f"--gallery {cfg.gallery!r}: images per cluster, from 0 (no gallery) to 100")
    from .evaluate.silhouette import METRICS

    bad = [m for m in cfg.evaluate.silhouette_metrics if m not in METRICS]
    if bad or not cfg.evaluate.silhouette_metrics:
        raise UserError(f"silhouette metrics {','.join(bad) or '(none)'}: choose from {', '.join(METRICS)}")


def check_config(cfg: RunConfig, ready_data: bool = False, ready_encoder: bool = False) -> None:
    """Names and flags that can be checked before any work, so a typo costs no time and leaves no run directory.
    `ready_data` / `ready_encoder`: the caller holds the dataset / encoder object, so their names are not looked up."""
    from .cluster import CLUSTERERS
    from .data import DATASETS
    from .encode import check_encoder_spec
    from .reduce import REDUCERS
    from .reduce import check_params as check_reduce_params

    check_values(cfg)
    check_executor(cfg)
    name = cfg.data.spec.partition(":")[0]
    if not ready_data and name not in DATASETS:
        raise UserError(f"unknown dataset {cfg.data.spec!r}; known: {', '.join(DATASETS)} (see --list datasets)")
    if not ready_encoder:
        check_encoder_spec(cfg.encode.spec)
    if cfg.reduce.method not in REDUCERS:
        raise UserError(f"unknown reducer {cfg.reduce.method!r}; known: {', '.join(REDUCERS)}")
    check_reduce_params(cfg.reduce.method, dict(cfg.reduce.params))
    if cfg.cluster.method not in CLUSTERERS:
        raise UserError(f"unknown clusterer {cfg.cluster.method!r}; known: {', '.join(CLUSTERERS)}")
    CLUSTERERS[cfg.cluster.method].check(dict(cfg.cluster.params))  # before any work, not after the encode
    check_keywords(cfg.cluster.method, {k: v for k, v in cfg.cluster.params.items() if k != "threshold_normalize"})
    if cfg.reduce.method in ALGORITHMS:
        check_keywords(cfg.reduce.method, {k: v for k, v in cfg.reduce.params.items() if k != "knn"})
    if cfg.encode.spec.startswith("checkpoint:"):
        if not cfg.encode.arch:
            raise UserError("checkpoint:PATH needs --arch, e.g. --arch torchvision:resnet50 (or timm:NAME)")
        if not Path(cfg.encode.spec.partition(":")[2]).expanduser().is_file():
            raise UserError(f"{cfg.encode.spec}: no such file")
    elif cfg.encode.arch is not None:
        raise UserError("--arch applies to --encoder checkpoint:PATH only")
    if cfg.encode.decode == "device" and cfg.encode.spec == "pixels":
        raise UserError("--decode device does not apply to the pixels encoder (32x32 resize); drop it")
    if cfg.encode.shard_size < 1:
        raise UserError(f"shard_size {cfg.encode.shard_size}: must be at least 1")
    fit_sample = cfg.reduce.fit_sample
    if fit_sample is not None:
        if fit_sample < 2:
            raise UserError(f"--fit-sample {fit_sample}: must be at least 2")
        if cfg.reduce.method not in ("pca", "umap"):
            raise UserError(f"--fit-sample applies to --reduce pca or umap (got {cfg.reduce.method}): those can "
                            "transform rows they were not fitted on")
        if cfg.cluster.k == "auto" and cfg.reduce.method != "umap":
            raise UserError("--k auto scores k in the UMAP space; with --fit-sample use --reduce umap")
    if name == "embeddings" and cfg.encode.decode != "cpu":
        raise UserError("--decode device: embeddings:PATH has no images to decode; drop it")


def check_against_data(cfg: RunConfig, ds: ImageDataset) -> None:
    """Settings that depend on the data, checked before the (long) encode stage."""
    from .cluster import CLUSTERERS

    if cfg.encode.decode == "device" and isinstance(ds, ImageDataset) and \
            type(ds).read_bytes is ImageDataset.read_bytes:
        raise UserError(f"--decode device needs image files (imagefolder:, folder:, csv:, parquet:, webdataset:); "
                        f"{cfg.data.spec} holds decoded images")

    method, params = cfg.cluster.method, cfg.cluster.params
    algo = CLUSTERERS[method]
    if not algo.needs_k(params):
        return
    k = cfg.cluster.k if cfg.cluster.k is not None else params.get(algo.k_param)
    if k == "auto":
        return
    if k is None and ds.labels is None:
        raise UserError(f"{method} needs --k N (or --k auto): the dataset has no labels to take the number of "
                        "classes from")
    if k is not None and not 1 <= k <= len(ds):
        raise UserError(f"--k {k}: must be between 1 and the number of images ({len(ds)})")
