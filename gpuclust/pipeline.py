"""One run, stage by stage: data -> encode -> reduce -> cluster -> evaluate -> report.

Each stage is a short function; `run_pipeline` strings them together and times them. On the GPU twin the embeddings
stay on the device from the encoder to the metrics; the report is the one place they reach the host.
"""
from __future__ import annotations

import errno
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .backend import Backend, resolve_backend
from .config import RunConfig
from .data import ImageDataset, load_dataset
from .distributed import fill_store, open_client, wants_cluster
from .encode import Embeddings, build_encoder, extract
from .errors import UserError
from .store import EmbeddingStore, ReductionCache, atomic_write_json, default_cache_dir

log = logging.getLogger("gpuclust")


@dataclass
class RunResult:
    metrics: dict
    timings: dict
    output: Path
    twins: dict = field(default_factory=dict)
    n_skipped: int = 0


class StageTimer:
    """Seconds per stage, with a start and a finish line in the log; device work is synchronised first."""

    def __init__(self, backend: Backend):
        self.backend, self.seconds = backend, {}

    @contextmanager
    def __call__(self, stage: str, rows: int | None = None):
        log.info("%s: start", stage)
        self.backend.synchronize()
        t0 = time.perf_counter()
        yield
        self.backend.synchronize()
        dt = time.perf_counter() - t0
        self.seconds[stage] = round(dt, 4)
        rate = f" ({rows / dt:,.0f} rows/s)" if rows and dt > 0 else ""
        log.info("%s: done in %.2fs%s", stage, dt, rate)


def peak_rss_bytes() -> int | None:
    """Peak resident memory of this process so far (Linux reports KiB, macOS bytes)."""
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)
    except (ImportError, OSError):
        return None


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


def check_config(cfg: RunConfig) -> None:
    """Names and flags that can be checked before any work, so a typo costs no time and leaves no run directory."""
    from .cluster import CLUSTERERS
    from .data import DATASETS
    from .encode import check_encoder_spec
    from .reduce import REDUCERS

    check_executor(cfg)
    name = cfg.data.spec.partition(":")[0]
    if name not in DATASETS:
        raise UserError(f"unknown dataset {cfg.data.spec!r}; known: {', '.join(DATASETS)} (see --list datasets)")
    check_encoder_spec(cfg.encode.spec)
    if cfg.reduce.method not in REDUCERS:
        raise UserError(f"unknown reducer {cfg.reduce.method!r}; known: {', '.join(REDUCERS)}")
    if cfg.cluster.method not in CLUSTERERS:
        raise UserError(f"unknown clusterer {cfg.cluster.method!r}; known: {', '.join(CLUSTERERS)}")
    if cfg.encode.store_dtype not in ("float32", "float16"):
        raise UserError(f"store dtype {cfg.encode.store_dtype!r}: float32 or float16")
    if cfg.encode.preprocess not in ("default", "study"):
        raise UserError(f"preprocess {cfg.encode.preprocess!r}: default or study")
    if cfg.encode.spec.startswith("checkpoint:"):
        if not cfg.encode.arch:
            raise UserError("checkpoint:PATH needs --arch, e.g. --arch torchvision:resnet50 (or timm:NAME)")
        if not Path(cfg.encode.spec.partition(":")[2]).expanduser().is_file():
            raise UserError(f"{cfg.encode.spec}: no such file")
    elif cfg.encode.arch is not None:
        raise UserError("--arch applies to --encoder checkpoint:PATH only")
    if cfg.encode.decode not in ("cpu", "device"):
        raise UserError(f"decode {cfg.encode.decode!r}: cpu or device")
    if cfg.encode.decode == "device" and cfg.encode.spec == "pixels":
        raise UserError("--decode device does not apply to the pixels encoder (32x32 resize); drop it")
    if cfg.encode.precision not in ("fp32", "bf16", "fp16"):
        raise UserError(f"precision {cfg.encode.precision!r}: fp32, bf16 or fp16")
    if cfg.encode.shard_size < 1:
        raise UserError(f"shard_size {cfg.encode.shard_size}: must be at least 1")


def check_against_data(cfg: RunConfig, ds: ImageDataset) -> None:
    """Settings that depend on the data, checked before the (long) encode stage."""
    from .cluster import CLUSTERERS

    if cfg.encode.decode == "device" and type(ds).read_bytes is ImageDataset.read_bytes:
        raise UserError(f"--decode device needs image files (imagefolder:, folder:, csv:, parquet:, webdataset:); "
                        f"{cfg.data.spec} holds decoded images")

    method, params = cfg.cluster.method, cfg.cluster.params
    if not CLUSTERERS[method].needs_k or params.get("distance_threshold") is not None:
        return
    k = cfg.cluster.k if cfg.cluster.k is not None else params.get("n_clusters")
    if k == "auto":
        return
    if k is None and ds.labels is None:
        raise UserError(f"{method} needs --k N (or --k auto): the dataset has no labels to take the number of "
                        "classes from")
    if k is not None and not 1 <= k <= len(ds):
        raise UserError(f"--k {k}: must be between 1 and the number of images ({len(ds)})")


def check_finite(backend: Backend, X, rows) -> None:
    """NaN or inf in embeddings (a broken checkpoint, fp16 overflow) would poison every later stage: name the rows."""
    xp = backend.xp
    bad = ~xp.isfinite(X).all(axis=1)
    if bool(bad.any()):
        where = rows[backend.to_host(xp.nonzero(bad)[0])]
        shown = ", ".join(str(r) for r in where[:10]) + (" ..." if len(where) > 10 else "")
        raise UserError(f"{len(where)} embedding(s) contain NaN or inf (dataset rows {shown}); check the encoder "
                        "weights or run with fp32")


@contextmanager
def memory_hint(stage: str):
    """Out-of-memory in reduce/cluster/evaluate becomes one line with what to change."""
    try:
        yield
    except (MemoryError, RuntimeError) as exc:  # CuPy/RMM raise MemoryError; cuML's C++ may raise bad_alloc
        text = str(exc).lower()
        if not isinstance(exc, MemoryError) and "out of memory" not in text and "bad_alloc" not in text:
            raise
        raise UserError(f"{stage}: out of memory; lower --dims, reduce first (--reduce umap or pca), use --limit, "
                        "or choose a clusterer that scales (kmeans, hdbscan)") from None


def encode_stage(ds: ImageDataset, cfg: RunConfig, backend: Backend, progress: bool) -> tuple[Embeddings, dict]:
    enc = build_encoder(cfg.encode.spec, cfg.encode.weights, cfg.encode.arch, cfg.encode.preprocess)
    key = {**enc.key, "dataset": ds.spec, "rows": ds.fingerprint(), "precision": cfg.encode.precision,
           "store_dtype": cfg.encode.store_dtype}
    if cfg.encode.decode != "cpu":  # another decoder and resize kernel: close, not identical numbers
        key["decode"] = cfg.encode.decode
    store = EmbeddingStore(cfg.encode.cache_dir or default_cache_dir(), key, len(ds), cfg.encode.shard_size)
    if store.complete:
        log.info("encode: reusing stored embeddings %s", store.dir)
    computed_elsewhere = 0
    try:
        if wants_cluster(cfg) and not store.complete:
            with open_client(cfg) as client:
                computed_elsewhere = fill_store(client, cfg, store, progress)
        emb = extract(ds, enc, backend, store, cfg.encode.batch_size, cfg.encode.num_workers, progress,
                      cfg.encode.store_dtype, cfg.encode.precision, cfg.encode.compile, cfg.encode.decode)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            raise
        raise UserError(f"cannot write the embedding store at {store.dir} ({exc.strerror}): free space there or "
                        "choose another --cache-dir; shards already written are kept") from None
    if backend.is_gpu:
        import torch

        # torch's caching allocator owned extraction; hand its free blocks back before cuML/RMM allocate.
        torch.cuda.empty_cache()
    if emb.skipped:
        log.warning("encode: skipped %d image(s) that could not be decoded (listed in skipped.csv)", len(emb.skipped))
    if emb.X.shape[0] == 0:
        raise UserError(f"{ds.spec}: none of the {len(ds)} images could be decoded")
    emb.rows_computed += computed_elsewhere  # the workers encoded these; this process read them back
    emb.rows_reused -= computed_elsewhere
    check_finite(backend, emb.X, emb.rows)
    return emb, {"encoder": enc.name, "dim": enc.dim, "store": str(store.dir)}


def cached(store_dir: str | None, key: dict, backend: Backend, compute):
    """(Z, twin) from the reduction cache beside the embeddings, else computed and stored there."""
    if store_dir is None:
        return compute()
    cache = ReductionCache(store_dir)
    key = {**key, "backend": backend.name}
    hit = cache.get(key)
    if hit is not None:
        log.info("reduce: reusing the stored %s space (%s)", key["method"], cache.dir)
        return backend.asarray(hit[0]), hit[1]["twin"]
    Z, twin = compute()
    cache.put(key, backend.to_host(Z), {"twin": twin})
    return Z, twin


def reduce_stage(X, cfg: RunConfig, backend: Backend, store_dir: str | None = None):
    from .reduce import reduce

    r = cfg.reduce
    key = {"method": r.method, "dims": r.dims, "params": r.params, "zscore": r.zscore, "normalize": r.normalize,
           "seed": cfg.seed}
    return cached(store_dir if r.method in ("pca", "umap") else None, key, backend,
                  lambda: reduce(X, r.method, r.dims, dict(r.params), backend, cfg.seed, r.zscore, r.normalize))


def cluster_stage(Z, cfg: RunConfig, backend: Backend, n_classes: int | None, Z_umap=None):
    """Labels, the twin that ran, resolved parameters (with `k_auto_scores` when k was chosen)."""
    from .cluster import choose_k, cluster

    k, extra = cfg.cluster.k, {}
    if k == "auto":
        k, scores = choose_k(Z, Z if Z_umap is None else Z_umap, cfg.cluster.method, dict(cfg.cluster.params),
                             backend, cfg.seed, tuple(cfg.cluster.k_range))
        extra = {"k_auto": k, "k_auto_scores": scores}
    labels, twin, params = cluster(Z, cfg.cluster.method, k, dict(cfg.cluster.params), backend, cfg.seed, n_classes)
    return labels, twin, {**params, **extra}


def umap_space(X, Z, cfg: RunConfig, backend: Backend, force: bool = False, store_dir: str | None = None):
    """The space for `silhouette_umap`: the run's own UMAP output when it reduced with UMAP, else the study's UMAP."""
    if not (cfg.evaluate.silhouette_umap or force):
        return None
    if cfg.reduce.method == "umap":
        return Z
    from .reduce import umap

    dims = min(50, X.shape[0] - 2)
    if dims < 2:
        return None
    key = {"method": "umap", "dims": dims, "params": {}, "zscore": False, "normalize": "none", "seed": cfg.seed}
    return cached(store_dir, key, backend, lambda: umap(X, dims, {}, backend, cfg.seed))[0]


def run_pipeline(cfg: RunConfig, progress: bool = True) -> RunResult:
    from .evaluate import evaluate
    from .report import make_run_dir, write_run

    check_config(cfg)
    backend = resolve_backend(cfg.device)
    log.info("backend: %s twin", backend.name)
    timer = StageTimer(backend)
    t_start = time.perf_counter()
    with timer("data"):
        ds = load_dataset(cfg.data.spec, cfg.data.limit, cfg.data.root, cfg.data.subsample, cfg.seed,
                          cfg.data.download)
    check_against_data(cfg, ds)
    out = make_run_dir(cfg.output, ds.spec, cfg.encode.spec, cfg.reduce.method, cfg.cluster.method)
    with timer("encode", rows=len(ds)):
        emb, enc_info = encode_stage(ds, cfg, backend, progress)
    xp = backend.xp
    labels_true = None if ds.labels is None else xp.asarray(ds.labels[emb.rows])
    n = emb.X.shape[0]
    with timer("reduce", rows=n), memory_hint("reduce"):
        Z, reduce_twin = reduce_stage(emb.X, cfg, backend, enc_info["store"])
    n_classes = None if labels_true is None else int(xp.unique(labels_true).shape[0])
    Z_umap = None
    if cfg.cluster.k == "auto":  # k is chosen in the UMAP space, so it is needed first
        with timer("umap_space", rows=n):
            Z_umap = umap_space(emb.X, Z, cfg, backend, force=True, store_dir=enc_info["store"])
    with timer("cluster", rows=n), memory_hint("cluster"):
        labels_pred, cluster_twin, cluster_params = cluster_stage(Z, cfg, backend, n_classes, Z_umap)
    with timer("evaluate", rows=n), memory_hint("evaluate"):
        if Z_umap is None:
            Z_umap = umap_space(emb.X, Z, cfg, backend, store_dir=enc_info["store"])
        metrics = evaluate(backend, Z, labels_pred, labels_true, Z_umap, cfg.seed,
                           X=emb.X if cfg.evaluate.silhouette_original else None,
                           silhouette_metrics=tuple(cfg.evaluate.silhouette_metrics))
    twins = {"encode": backend.name, "reduce": reduce_twin, "cluster": cluster_twin, "evaluate": backend.name}
    metrics["twins"] = twins
    if "k_auto" in cluster_params:
        metrics["k_auto"] = cluster_params["k_auto"]
    metrics["n_skipped"] = len(emb.skipped)
    timings = dict(timer.seconds)
    enc_s = timings["encode"]
    timings.update({
        "rows_encoded": emb.rows_computed,
        "rows_reused": emb.rows_reused,
        "images_per_s": round(emb.rows_computed / enc_s, 2) if emb.rows_computed and enc_s > 0 else None,
    })
    timings["peak_host_rss_bytes"] = peak_rss_bytes()
    if backend.is_gpu:
        import torch

        timings["peak_gpu_mem_torch_bytes"] = int(torch.cuda.max_memory_allocated())
    config = {**cfg.to_dict(), "resolved": {**enc_info, "cluster_params": cluster_params, "dataset_rows": len(ds)}}
    with timer("report"):
        write_run(out, backend=backend, config=config, metrics=metrics, timings=timings, rows=emb.rows,
                  paths=ds.paths, labels_true=labels_true, labels_pred=labels_pred, skipped=emb.skipped, Z=Z,
                  classes=ds.classes, seed=cfg.seed)
    timings["report"] = timer.seconds["report"]
    timings["total"] = round(time.perf_counter() - t_start, 4)
    atomic_write_json(out / "timings.json", timings)
    return RunResult(metrics, timings, out, twins, len(emb.skipped))
