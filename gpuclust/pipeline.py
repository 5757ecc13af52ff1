"""One run, stage by stage: data -> encode -> reduce -> cluster -> evaluate -> report.

Each stage is a short function; `run_pipeline` strings them together and times them. On the GPU twin the embeddings
stay on the device from the encoder to the metrics; the report is the one place they reach the host.
"""
from __future__ import annotations

import errno
import logging
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .backend import ALGORITHMS, Backend, check_keywords, resolve_backend
from .config import RunConfig, check_choices
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
        self.backend, self.seconds, self.peak_rss = backend, {}, {}

    @contextmanager
    def __call__(self, stage: str, rows: int | None = None):
        log.info("%s: start", stage)
        self.backend.synchronize()
        t0 = time.perf_counter()
        yield
        self.backend.synchronize()
        dt = time.perf_counter() - t0
        self.seconds[stage] = round(dt, 4)
        self.peak_rss[stage] = peak_rss_bytes()  # the high-water mark so far: where it jumps, this stage raised it
        rate = f" ({rows / dt:,.0f} images/s)" if rows and dt > 0 else ""
        log.info("%s: done in %.2fs%s", stage, dt, rate)


def peak_rss_bytes() -> int | None:
    """Peak resident memory of this process so far.

    Linux: VmHWM from /proc, which starts afresh at exec (getrusage's ru_maxrss would carry over the peak of the
    process that launched this one). Elsewhere ru_maxrss (macOS reports bytes, others KiB)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
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


def check_config(cfg: RunConfig) -> None:
    """Names and flags that can be checked before any work, so a typo costs no time and leaves no run directory."""
    from .cluster import CLUSTERERS
    from .data import DATASETS
    from .encode import check_encoder_spec
    from .reduce import REDUCERS
    from .reduce import check_params as check_reduce_params

    check_values(cfg)
    check_executor(cfg)
    name = cfg.data.spec.partition(":")[0]
    if name not in DATASETS:
        raise UserError(f"unknown dataset {cfg.data.spec!r}; known: {', '.join(DATASETS)} (see --list datasets)")
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


def streamed(cfg: RunConfig, n_rows: int) -> bool:
    """Whether this run reads its embeddings in chunks instead of holding them (--fit-sample below the row count)."""
    return cfg.reduce.fit_sample is not None and n_rows > cfg.reduce.fit_sample


def precomputed_stage(src, cfg: RunConfig, backend: Backend) -> tuple[Embeddings, dict]:
    """`embeddings:PATH`: no encoder; the rows are read in chunks (streamed) or loaded once onto the device."""
    import numpy as np

    matrix = src.matrix
    rows = np.arange(matrix.n_rows)
    if streamed(cfg, matrix.n_rows):
        X = matrix  # checked for NaN/inf in the reducer's statistics pass
    else:
        X = matrix.load(backend)
        check_finite(backend, X, rows)
    return Embeddings(X, rows, [], 0, matrix.n_rows), {"encoder": "precomputed", "dim": matrix.dim, "store": None}


def encode_stage(ds: ImageDataset, cfg: RunConfig, backend: Backend, progress: bool,
                 client=None) -> tuple[Embeddings, dict]:
    enc = build_encoder(cfg.encode.spec, cfg.encode.weights, cfg.encode.arch, cfg.encode.preprocess,
                        ds.native_size() if cfg.encode.preprocess == "study" else None)
    key = {**enc.key, "dataset": ds.spec, "rows": ds.fingerprint(), "precision": cfg.encode.precision,
           "store_dtype": cfg.encode.store_dtype}
    if cfg.encode.decode != "cpu":  # another decoder and resize kernel: close, not identical numbers
        key["decode"] = cfg.encode.decode
    store = EmbeddingStore(cfg.encode.cache_dir or default_cache_dir(), key, len(ds), cfg.encode.shard_size)
    if store.complete:
        log.info("encode: reusing stored embeddings %s", store.dir)
    computed_elsewhere = 0
    try:
        if not store.ids_path.is_file() and (ids := ds.row_ids()) is not None:
            store.save_row_ids(ids)  # (a complete store from before row identities becomes a donor too)
        donors = None if store.complete else store.donors()  # rows earlier stores of these settings hold
        if client is not None and not store.complete:
            if donors is not None:
                donors.gather(store.dir)
            try:
                computed_elsewhere = fill_store(client, cfg, store, progress, donors)
            finally:
                if donors is not None:
                    donors.release()
            donors = None
        emb = extract(ds, enc, backend, store, cfg.encode.batch_size, cfg.encode.num_workers, progress,
                      cfg.encode.store_dtype, cfg.encode.precision, cfg.encode.compile, cfg.encode.decode,
                      in_memory=not streamed(cfg, len(ds)), donors=donors, runtime=cfg.encode.runtime,
                      cache_dir=cfg.encode.cache_dir or default_cache_dir())
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            raise
        raise UserError(f"cannot write the embedding store at {store.dir} ({exc.strerror}): free space there or "
                        "choose another --cache-dir; shards already written are kept") from None
    if backend.is_gpu:
        import torch

        # torch's caching allocator owned extraction; hand its free blocks back before cuML/RMM allocate.
        torch.cuda.empty_cache()
    emb.rows_computed += computed_elsewhere  # the workers encoded these; this process read them back
    emb.rows_reused -= computed_elsewhere
    if not streamed(cfg, len(ds)):  # streamed rows are checked in the reducer's statistics pass
        check_finite(backend, emb.X, emb.rows)
    return emb, {"encoder": enc.name, "dim": enc.dim, "store": str(store.dir)}


def report_skipped(skipped: list, ds: ImageDataset, out: Path, final: Path | None = None) -> None:
    """Skipped rows are a warning; all of them skipped is the user's error, with the first reason and the list.
    `out` is where the run writes, `final` its run directory (they differ for a rerun: report.run_dir)."""
    if not skipped:
        return
    from .report import write_skipped

    write_skipped(out / "skipped.csv", skipped, ds.paths)
    final = final or out
    if len(skipped) >= len(ds):
        row, reason = skipped[0]
        where = ds.paths[row] if ds.paths is not None else f"row {row}"
        raise UserError(f"{ds.spec}: none of the {len(ds)} images could be read (the first, {where}: {reason}); "
                        f"every row is listed in {out / 'skipped.csv'}")
    log.warning("encode: skipped %d image(s) that could not be used (unreadable, or outside --data-root; listed "
                "with the reason in %s)", len(skipped), final / "skipped.csv")


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


def reduce_stage(X, cfg: RunConfig, backend: Backend, store_dir: str | None = None, rows=None, client=None):
    from .reduce import KNN_AUTO_RULE, SEED_RULE, reduce, reduce_streamed
    from .stream import RowChunks

    r = cfg.reduce
    key = {"method": r.method, "dims": r.dims, "params": r.params, "zscore": r.zscore, "normalize": r.normalize,
           "seed": cfg.seed}
    if r.method == "umap":
        key["knn_auto"] = KNN_AUTO_RULE
        if backend.is_gpu:  # (the CPU twin's spaces do not depend on it)
            key["seed_rule"] = SEED_RULE
    if isinstance(X, RowChunks):
        key["fit_sample"] = r.fit_sample
        return cached(store_dir, key, backend,
                      lambda: reduce_streamed(X, r.method, r.dims, dict(r.params), backend, cfg.seed, r.fit_sample,
                                              r.zscore, r.normalize, rows, client))
    return cached(store_dir if r.method in ("pca", "umap") else None, key, backend,
                  lambda: reduce(X, r.method, r.dims, dict(r.params), backend, cfg.seed, r.zscore, r.normalize))


def multi_gpu(cfg: RunConfig, backend: Backend, client) -> bool:
    """KMeans runs across the cluster's GPUs (cuML's Dask KMeans) on a GPU run with GPU workers, when cuml.dask
    imports; without it KMeans runs on this process's GPU, as a single-GPU run's does, and the log says why."""
    wanted = client is not None and backend.is_gpu and cfg.workers is None and cfg.cluster.method == "kmeans" \
        and cfg.cluster.k != "auto"
    if not wanted:
        return False
    gap = ALGORITHMS["kmeans"].gpu_gap(dict(cfg.cluster.params))
    if gap:  # the step runs where a single-GPU run would run it: on the CPU twin
        log.warning("kmeans runs on this process, not across the Dask workers: cuML's KMeans lacks %s", gap)
        return False
    from .distributed import CUML_DASK_INSTALL, cuml_dask_missing, workers_have_gpus

    missing = cuml_dask_missing()
    if missing:
        log.warning("kmeans runs on this process's GPU, not across the Dask workers: cuml.dask does not import "
                    "(%s); for multi-GPU KMeans: %s", missing, CUML_DASK_INSTALL)
        return False
    if not workers_have_gpus(client):
        log.warning("kmeans runs on this process's GPU: not every Dask worker has a GPU (start them with "
                    "`dask cuda worker` for multi-GPU KMeans)")
        return False
    return True


def cluster_stage(Z, cfg: RunConfig, backend: Backend, n_classes: int | None, Z_umap=None, client=None):
    """Labels, the twin that ran, resolved parameters (with `k_auto_scores` when k was chosen)."""
    from .cluster import choose_k, cluster

    k, extra = cfg.cluster.k, {}
    if k == "auto":
        k, scores = choose_k(Z, Z if Z_umap is None else Z_umap, cfg.cluster.method, dict(cfg.cluster.params),
                             backend, cfg.seed, tuple(cfg.cluster.k_range))
        extra = {"k_auto": k, "k_auto_scores": scores}
    if multi_gpu(cfg, backend, client):
        from .distributed import dask_kmeans

        return dask_kmeans(client, Z, cfg.cluster.k, dict(cfg.cluster.params), backend, cfg.seed, n_classes)
    labels, twin, params = cluster(Z, cfg.cluster.method, k, dict(cfg.cluster.params), backend, cfg.seed, n_classes)
    return labels, twin, {**params, **extra}


def umap_space(X, Z, cfg: RunConfig, backend: Backend, force: bool = False, store_dir: str | None = None):
    """(space, rows) for `silhouette_umap`: the run's own UMAP output when it reduced with UMAP, else the study's
    UMAP; rows is None when the space holds every row, else the sample positions it holds (a streamed run scores
    the UMAP space of its fit sample rather than transforming every row a second time)."""
    from .reduce import KNN_AUTO_RULE, SEED_RULE, umap
    from .stream import RowChunks, sample_positions

    if not (cfg.evaluate.silhouette_umap or force):
        return None, None
    if cfg.reduce.method == "umap":
        return Z, None
    rows = None
    key = {"method": "umap", "params": {}, "zscore": False, "normalize": "none", "seed": cfg.seed,
           "knn_auto": KNN_AUTO_RULE, **({"seed_rule": SEED_RULE} if backend.is_gpu else {})}
    if isinstance(X, RowChunks):
        rows = sample_positions(X.n_rows, cfg.reduce.fit_sample, cfg.seed)
        key["sample"] = cfg.reduce.fit_sample
        source = lambda: backend.asarray(X.take(rows))  # noqa: E731
    else:
        source = lambda: X  # noqa: E731
    n = X.shape[0] if rows is None else len(rows)
    dims = min(50, n - 2)
    if dims < 2:
        return None, None
    key["dims"] = dims
    return cached(store_dir, key, backend, lambda: umap(source(), dims, {}, backend, cfg.seed))[0], rows


def run_pipeline(cfg: RunConfig, progress: bool = True) -> RunResult:
    check_config(cfg)
    backend = resolve_backend(cfg.device)
    log.info("backend: %s twin", backend.name)
    with ExitStack() as stack:
        # One Dask client for the whole run: it encodes shards, transforms streamed chunks and runs multi-GPU KMeans.
        client = stack.enter_context(open_client(cfg)) if wants_cluster(cfg) else None
        return _run(cfg, backend, client, progress)


def _run(cfg: RunConfig, backend: Backend, client, progress: bool) -> RunResult:
    from .data.embeddings import embedding_source
    from .evaluate import evaluate
    from .report import run_dir, write_run
    from .stream import RowChunks, sample_positions

    timer = StageTimer(backend)
    t_start = time.perf_counter()
    precomputed = cfg.data.spec.partition(":")[0] == "embeddings"
    with timer("data"):
        if precomputed:
            ds = embedding_source(cfg.data.spec, cfg.data.limit, cfg.data.subsample)
        else:
            ds = load_dataset(cfg.data.spec, cfg.data.limit, cfg.data.root, cfg.data.subsample, cfg.seed,
                              cfg.data.download)
    check_against_data(cfg, ds)
    with run_dir(cfg.output, ds.spec, "precomputed" if precomputed else cfg.encode.spec, cfg.reduce.method,
                 cfg.cluster.method) as (out, final):
        with timer("encode", rows=len(ds)):
            if precomputed:
                emb, enc_info = precomputed_stage(ds, cfg, backend)
            else:
                emb, enc_info = encode_stage(ds, cfg, backend, progress, client)
        report_skipped(emb.skipped, ds, out, final)
        is_streamed = isinstance(emb.X, RowChunks)
        if is_streamed:
            log.info("embeddings: %d x %d read from disk in chunks; %s fitted on %d rows", emb.X.n_rows, emb.X.dim,
                     cfg.reduce.method, cfg.reduce.fit_sample)
        xp = backend.xp
        labels_true = None if ds.labels is None else xp.asarray(ds.labels[emb.rows])
        n = emb.X.shape[0]
        with timer("reduce", rows=n), memory_hint("reduce"):
            Z, reduce_twin = reduce_stage(emb.X, cfg, backend, enc_info["store"], emb.rows, client)
        n_classes = None if labels_true is None else int(xp.unique(labels_true).shape[0])
        Z_umap = umap_rows = None
        if cfg.cluster.k == "auto":  # k is chosen in the UMAP space, so it is needed first
            with timer("umap_space", rows=n):
                Z_umap, umap_rows = umap_space(emb.X, Z, cfg, backend, force=True, store_dir=enc_info["store"])
        with timer("cluster", rows=n), memory_hint("cluster"):
            labels_pred, cluster_twin, cluster_params = cluster_stage(Z, cfg, backend, n_classes, Z_umap, client)
        with timer("evaluate", rows=n), memory_hint("evaluate"):
            if Z_umap is None:
                Z_umap, umap_rows = umap_space(emb.X, Z, cfg, backend, store_dir=enc_info["store"])
            X_eval = X_rows = None
            if cfg.evaluate.silhouette_original:
                X_eval = emb.X
                if is_streamed:  # the original space of the fit sample: the full matrix is never held
                    X_rows = sample_positions(n, cfg.reduce.fit_sample, cfg.seed)
                    X_eval = backend.asarray(emb.X.take(X_rows))
            # euclidean always: `silhouette` and `silhouette_umap` (the label-free proxy sweeps rank by) are keys
            # every run has; other distances come on top.
            distances = tuple(dict.fromkeys(("euclidean", *cfg.evaluate.silhouette_metrics)))
            metrics = evaluate(backend, Z, labels_pred, labels_true, Z_umap, cfg.seed, X=X_eval,
                               silhouette_metrics=distances, umap_rows=umap_rows, X_rows=X_rows)
        twins = {"encode": "none" if precomputed else backend.name, "reduce": reduce_twin, "cluster": cluster_twin,
                 "evaluate": backend.name}
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
            "streamed": is_streamed,
        })
        timings["peak_host_rss_bytes"] = peak_rss_bytes()
        timings["peak_host_rss_after"] = dict(timer.peak_rss)
        if backend.is_gpu:
            import torch

            timings["peak_gpu_mem_torch_bytes"] = int(torch.cuda.max_memory_allocated())
        config = {**cfg.to_dict(), "resolved": {**enc_info, "cluster_params": cluster_params, "dataset_rows": len(ds)}}
        with timer("report"):
            write_run(out, backend=backend, config=config, metrics=metrics, timings=timings, rows=emb.rows,
                      paths=ds.paths, labels_true=labels_true, labels_pred=labels_pred, Z=Z,
                      classes=ds.classes, seed=cfg.seed, images=None if precomputed else ds.load,
                      gallery=cfg.gallery, name=final.resolve().name)
        timings["report"] = timer.seconds["report"]
        timings["total"] = round(time.perf_counter() - t_start, 4)
        atomic_write_json(out / "timings.json", timings)
    # A rerun into an earlier run's folder was staged inside it and has now taken the earlier run's place.
    return RunResult(metrics, timings, final, twins, len(emb.skipped))
