"""One run, stage by stage: data -> encode -> reduce -> cluster -> evaluate -> report.

Each stage is a short function; `run_pipeline` strings them together and times them. On the GPU twin the embeddings
stay on the device from the encoder to the metrics; the report is the one place they reach the host.
"""
from __future__ import annotations

import errno
import logging
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

from .backend import Backend, resolve_backend
from .checks import check_against_data, check_config, check_values  # noqa: F401  (re-exported)
from .distributed import check_executor  # noqa: F401  (re-exported)
from .config import RunConfig
from .data import ImageDataset, load_dataset
from .distributed import dask_kmeans, fill_store, multi_gpu, open_client, wants_cluster
from .encode import Embeddings, build_encoder, extract
from .encode.transforms import study_preprocess
from .errors import UserError
from .progress import stage_progress
from .report import run_dir
from .result import ClusterResult
from .stream import RowChunks
from .store import EmbeddingStore, ReductionCache, default_cache_dir

log = logging.getLogger("gpuclust")


class StageTimer:
    """Seconds per stage, with a start and a finish line in the log; device work is synchronised first. With
    `progress`, a stage that runs a while shows its name and elapsed time on stderr (gpuclust.progress)."""

    def __init__(self, backend: Backend, progress: bool = False):
        self.backend, self.seconds, self.peak_rss, self.progress = backend, {}, {}, progress

    @contextmanager
    def __call__(self, stage: str, rows: int | None = None, show: bool = True):
        """Time `stage`; `show=False` leaves its progress to the stage itself (the encoder's bar)."""
        log.info("%s: start", stage)
        self.backend.synchronize()
        t0 = time.perf_counter()
        with stage_progress(stage, self.progress and show):
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
                 client=None, encoder=None) -> tuple[Embeddings, dict]:
    """Embeddings of every readable row, from the store where it holds them; `encoder` a ready Encoder, else the
    one cfg.encode names."""
    native = ds.native_size() if cfg.encode.preprocess == "study" else None
    if encoder is None:
        enc = build_encoder(cfg.encode.spec, cfg.encode.weights, cfg.encode.arch, cfg.encode.preprocess, native)
    else:
        enc = encoder if cfg.encode.preprocess == "default" else study_preprocess(encoder, native)
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
    backend.release_torch_cache()  # torch's allocator owned extraction; cuML/RMM allocate next
    emb.rows_computed += computed_elsewhere  # the workers encoded these; this process read them back
    emb.rows_reused -= computed_elsewhere
    if not streamed(cfg, len(ds)):  # streamed rows are checked in the reducer's statistics pass
        check_finite(backend, emb.X, emb.rows)
    return emb, {"encoder": enc.name, "dim": enc.dim, "store": str(store.dir), "num_workers": emb.num_workers}


def report_skipped(skipped: list, ds: ImageDataset, out: Path | None, final: Path | None = None) -> None:
    """Skipped rows are a warning; all of them skipped is the user's error, with the first reason and the list.
    `out` is where the run writes, `final` its run directory (they differ for a rerun: report.run_dir); with no
    `out` (a run in memory) the rows are in the result's `skipped` until it is saved."""
    if not skipped:
        return
    from .report import write_skipped

    if out is not None:
        write_skipped(out / "skipped.csv", skipped, ds.paths)
    listed = f"listed in {out / 'skipped.csv'}" if out is not None else "see the result's skipped"
    if len(skipped) >= len(ds):
        row, reason = skipped[0]
        where = ds.paths[row] if ds.paths is not None else f"row {row}"
        raise UserError(f"{ds.spec}: none of the {len(ds)} images could be read (the first, {where}: {reason}); "
                        f"every row is {listed}")
    where = f"in {(final or out) / 'skipped.csv'}" if out is not None else "in the result's skipped"
    log.warning("encode: skipped %d image(s) that could not be used (unreadable, or outside --data-root; listed "
                "with the reason %s)", len(skipped), where)


def cached(store_dir: str | None, key: dict, backend: Backend, compute):
    """(Z, twin) from the reduction cache beside the embeddings, else computed and stored there."""
    if store_dir is None:
        return compute()
    cache = ReductionCache(store_dir)
    key = {**key, "backend": backend.name}
    hit = cache.get(key)
    if hit is not None:
        log.info("reduce: reusing the stored %s space (%s)", key.get("purpose", key["method"]), cache.dir)
        return backend.asarray(hit[0]), hit[1]["twin"]
    Z, twin = compute()
    cache.put(key, backend.to_host(Z), {"twin": twin})
    return Z, twin


def reduce_key(cfg: RunConfig, backend: Backend, streamed: bool = False) -> dict:
    """What the reduced space cfg.reduce asks for depends on: its reduction-cache key (the backend is added by
    `cached`); a streamed run's also names its fit sample."""
    return space_key(cfg, backend.is_gpu, streamed)


def space_key(cfg: RunConfig, gpu: bool, streamed: bool = False) -> dict:
    """reduce_key for a run on the GPU twin or not (runinfo looks a finished run's space up with it)."""
    from .reduce import KNN_AUTO_RULE, SEED_RULE, UMAP_DEFAULTS_RULE

    r = cfg.reduce
    key = {"method": r.method, "dims": r.dims, "params": r.params, "zscore": r.zscore, "normalize": r.normalize,
           "seed": cfg.seed}
    if r.method == "umap":
        key["knn_auto"] = KNN_AUTO_RULE
        key["umap_defaults"] = UMAP_DEFAULTS_RULE
        if gpu:  # (the CPU twin's spaces do not depend on it)
            key["seed_rule"] = SEED_RULE
    if streamed:
        key["fit_sample"] = r.fit_sample
    return key


def reduce_stage(X, cfg: RunConfig, backend: Backend, store_dir: str | None = None, rows=None, client=None):
    """(Z, twin): the reduced space cfg.reduce asks for, from the reduction cache beside the embeddings when it holds
    it; streamed rows (RowChunks) are fitted on cfg.reduce.fit_sample and transformed chunk by chunk."""
    from .reduce import reduce, reduce_streamed

    r = cfg.reduce
    key = reduce_key(cfg, backend, streamed=isinstance(X, RowChunks))
    if isinstance(X, RowChunks):
        return cached(store_dir, key, backend,
                      lambda: reduce_streamed(X, r.method, r.dims, dict(r.params), backend, cfg.seed, r.fit_sample,
                                              r.zscore, r.normalize, rows, client))
    return cached(store_dir if r.method in ("pca", "umap") else None, key, backend,
                  lambda: reduce(X, r.method, r.dims, dict(r.params), backend, cfg.seed, r.zscore, r.normalize))


def cluster_stage(Z, cfg: RunConfig, backend: Backend, n_classes: int | None, Z_umap=None, client=None):
    """Labels, the twin that ran, resolved parameters (with `k_auto_scores`, `k_auto_prediction_strength` and the
    rest of `KChoice.record()` when k was chosen)."""
    from .cluster import choose_k, cluster

    k, extra = cfg.cluster.k, {}
    if k == "auto":
        choice = choose_k(Z, Z if Z_umap is None else Z_umap, cfg.cluster.method, dict(cfg.cluster.params),
                          backend, cfg.seed, tuple(cfg.cluster.k_range))
        k, extra = choice.k, choice.record()
    if multi_gpu(cfg, backend, client):

        return dask_kmeans(client, Z, cfg.cluster.k, dict(cfg.cluster.params), backend, cfg.seed, n_classes)
    labels, twin, params = cluster(Z, cfg.cluster.method, k, dict(cfg.cluster.params), backend, cfg.seed, n_classes)
    return labels, twin, {**params, **extra}


def umap_space(X, Z, cfg: RunConfig, backend: Backend, force: bool = False, store_dir: str | None = None):
    """(space, rows) for `silhouette_umap`: the run's own UMAP output when it reduced with UMAP, else the study's
    UMAP; rows is None when the space holds every row, else the sample positions it holds (a streamed run scores
    the UMAP space of its fit sample rather than transforming every row a second time)."""
    from .reduce import KNN_AUTO_RULE, SEED_RULE, UMAP_DEFAULTS_RULE, umap
    from .stream import RowChunks, sample_positions

    if not (cfg.evaluate.silhouette_umap or force):
        return None, None
    if cfg.reduce.method == "umap":
        return Z, None
    rows = None
    key = {"method": "umap", "params": {}, "zscore": False, "normalize": "none", "seed": cfg.seed,
           "knn_auto": KNN_AUTO_RULE, "umap_defaults": UMAP_DEFAULTS_RULE,
           **({"seed_rule": SEED_RULE} if backend.is_gpu else {})}
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


def run_pipeline(cfg: RunConfig, progress: bool = True) -> ClusterResult:
    """`python -m gpuclust.run`: the run `cfg` describes, saved into its run directory (`result.output`)."""
    check_config(cfg)
    backend = resolve_backend(cfg.device)
    log.info("backend: %s twin", backend.name)
    with ExitStack() as stack:
        # One Dask client for the whole run: it encodes shards, transforms streamed chunks and runs multi-GPU KMeans.
        client = stack.enter_context(open_client(cfg)) if wants_cluster(cfg) else None
        timer, t_start = StageTimer(backend, progress), time.perf_counter()
        ds = data_stage(cfg, timer)
        check_against_data(cfg, ds)
        with run_dir(cfg.output, ds.spec, "precomputed" if is_precomputed(cfg) else cfg.encode.spec,
                     cfg.reduce.method, cfg.cluster.method) as (out, final):
            result = compute(cfg, ds, backend, timer, progress, client, out=out, final=final)
            result.write(out, final.resolve().name, timer, t_start)
    # A rerun into an earlier run's folder was staged inside it and has now taken the earlier run's place.
    result.output = final
    return result


RunResult = ClusterResult  # (the name run_pipeline's result had before the library's)


def is_precomputed(cfg: RunConfig) -> bool:
    """An `embeddings:` source: a data source with no encoder."""
    return cfg.data.spec.partition(":")[0] == "embeddings"


def data_stage(cfg: RunConfig, timer: StageTimer):
    """The dataset (or the precomputed embeddings) the spec names, timed as the data stage."""
    from .data.embeddings import embedding_source

    with timer("data"):
        if is_precomputed(cfg):
            return embedding_source(cfg.data.spec, cfg.data.limit, cfg.data.subsample)
        return load_dataset(cfg.data.spec, cfg.data.limit, cfg.data.root, cfg.data.subsample, cfg.seed,
                            cfg.data.download)


def compute(cfg: RunConfig, ds, backend: Backend, timer: StageTimer, progress: bool = True, client=None, *,
            encoder=None, model=None, out: Path | None = None, final: Path | None = None) -> ClusterResult:
    """Every stage after the data, in memory: encode (or read the precomputed rows), reduce, cluster, evaluate.

    `encoder`: a ready Encoder instead of cfg.encode's names. `model`: a gpuclust.Clusterer holding ready objects,
    which reduces and clusters instead of cfg.reduce / cfg.cluster. `out`/`final`: where skipped.csv goes as soon as
    the encoder has met every row (the CLI's run directory), else nowhere until the result is saved."""
    precomputed = is_precomputed(cfg)
    with timer("encode", rows=len(ds), show=precomputed):  # the encoder has its own bar
        if precomputed:
            emb, enc_info = precomputed_stage(ds, cfg, backend)
        else:
            emb, enc_info = encode_stage(ds, cfg, backend, progress, client, encoder)
    report_skipped(emb.skipped, ds, out, final)
    xp = backend.xp
    labels_true = None if ds.labels is None else xp.asarray(ds.labels[emb.rows])
    n_classes = None if labels_true is None else int(xp.unique(labels_true).shape[0])
    if model is not None:
        Z, labels, twins, params = model_stages(model, emb.X, labels_true, backend, timer)
        Z_umap = umap_rows = None
    else:
        Z, labels, twins, params, (Z_umap, umap_rows) = config_stages(cfg, emb, backend, timer, client, n_classes,
                                                                      enc_info["store"])
    with timer("evaluate", rows=len(emb.rows)), memory_hint("evaluate"):
        if Z_umap is None:
            Z_umap, umap_rows = umap_space(emb.X, Z, cfg, backend, store_dir=enc_info["store"])
        metrics = evaluate_stage(cfg, emb, Z, labels, labels_true, Z_umap, umap_rows, backend)
        selection = selection_stage(Z_umap, umap_rows, labels, emb.rows, backend)
    if cfg.curate.duplicates is not None or cfg.curate.outliers is not None:
        from .curate import curate_stage

        with timer("curate", rows=len(emb.rows)), memory_hint("curate"):
            curation = curate_stage(cfg.curate, emb.X, Z, labels, emb.rows, getattr(ds, "paths", None), backend,
                                    cfg.seed)
        metrics.update(curation.metrics)
    else:
        curation = None
    map_xy = map_stage(cfg, emb.X, Z, backend, timer, enc_info["store"])
    twins = {"encode": "none" if precomputed else backend.name, **twins, "evaluate": backend.name}
    if map_xy is not None:
        twins["map"] = map_xy[1]
    from .select.kauto import METRICS_KEYS  # k_auto, k_auto_ps, k_auto_low_confidence (with --k auto)

    metrics.update(twins=twins, n_skipped=len(emb.skipped), **{k: params[k] for k in METRICS_KEYS if k in params})
    from .reduce import UMAP_DEFAULTS_RULE

    config = {**cfg.to_dict(), "resolved": {**enc_info, "cluster_params": params, "dataset_rows": len(ds),
                                            "umap_defaults": UMAP_DEFAULTS_RULE}}
    return ClusterResult(metrics, run_timings(timer, emb, backend), twins, config, emb.rows, backend, labels,
                         labels_true, Z, ds, emb.skipped, cfg.seed, cfg.gallery, curation=curation,
                         map_xy=None if map_xy is None else map_xy[0], selection=selection)


def selection_stage(Z_umap, umap_rows, labels, rows, backend: Backend) -> dict | None:
    """What the run keeps for a sweep's label-free pick (selection.parquet, gpuclust/select): up to
    select.SAMPLE_ROWS rows with their labels and silhouettes in the UMAP space; None without a UMAP space."""
    if Z_umap is None:
        return None
    import numpy as np

    from .select import selection_rows

    if umap_rows is not None:  # a streamed run's UMAP space holds its fit sample only
        labels, rows = labels[backend.xp.asarray(umap_rows)], np.asarray(rows)[np.asarray(umap_rows)]
    return selection_rows(backend, Z_umap, labels, rows)


def map_stage(cfg: RunConfig, X, Z, backend: Backend, timer: StageTimer, store_dir: str | None):
    """(xy on the host, twin) of the run's 2-D map (explore/layout.py), or None with --map none. A streamed run
    maps its reduced space Z (held in memory already), fitted on at most its --fit-sample rows."""
    if cfg.explore.map == "none":
        return None
    from .explore.layout import map_2d, map_params

    with timer("map", rows=int(X.shape[0])), memory_hint("map"):
        if isinstance(X, RowChunks):  # keyed by the reduced space's own key: another --dims is another map
            return map_2d(Z, map_params(cfg.reduce), backend, cfg.seed, store_dir, cfg.reduce.fit_sample,
                          metric="euclidean", source=reduce_key(cfg, backend, streamed=True))
        return map_2d(X, map_params(cfg.reduce), backend, cfg.seed, store_dir)


def config_stages(cfg: RunConfig, emb, backend: Backend, timer: StageTimer, client, n_classes, store_dir):
    """Reduce and cluster as cfg says: (Z, labels, twins, cluster params, (UMAP space, its rows))."""
    n = emb.X.shape[0]
    if isinstance(emb.X, RowChunks):
        log.info("embeddings: %d x %d read from disk in chunks; %s fitted on %d rows", emb.X.n_rows, emb.X.dim,
                 cfg.reduce.method, cfg.reduce.fit_sample)
    with timer("reduce", rows=n), memory_hint("reduce"):
        Z, reduce_twin = reduce_stage(emb.X, cfg, backend, store_dir, emb.rows, client)
    space = (None, None)
    if cfg.cluster.k == "auto":  # k is chosen in the UMAP space, so it is needed first
        with timer("umap_space", rows=n):
            space = umap_space(emb.X, Z, cfg, backend, force=True, store_dir=store_dir)
    with timer("cluster", rows=n), memory_hint("cluster"):
        labels, cluster_twin, params = cluster_stage(Z, cfg, backend, n_classes, space[0], client)
    return Z, labels, {"reduce": reduce_twin, "cluster": cluster_twin}, params, space


def model_stages(model, X, labels_true, backend: Backend, timer: StageTimer):
    """Reduce and cluster with a gpuclust.Clusterer that holds ready objects: (Z, labels, twins, params)."""
    n = X.shape[0]
    with timer("reduce", rows=n), memory_hint("reduce"):
        Z, reduce_twin = model._reduce(X, backend)
    with timer("cluster", rows=n), memory_hint("cluster"):
        y = None if labels_true is None else backend.to_host(labels_true)
        labels, cluster_twin, params = model._cluster(X, Z, backend, y)
    model._set_fitted(backend, Z, labels, {"reduce": reduce_twin, "cluster": cluster_twin}, params, host=True)
    return Z, labels, {"reduce": reduce_twin, "cluster": cluster_twin}, params


def evaluate_stage(cfg: RunConfig, emb, Z, labels, labels_true, Z_umap, umap_rows, backend: Backend) -> dict:
    """The metrics: label metrics when truth exists, silhouettes in the clustered, UMAP and (asked) original spaces."""
    from .evaluate import evaluate
    from .stream import sample_positions

    X_eval = X_rows = None
    if cfg.evaluate.silhouette_original:
        X_eval = emb.X
        if isinstance(emb.X, RowChunks):  # the original space of the fit sample: the full matrix is never held
            X_rows = sample_positions(emb.X.shape[0], cfg.reduce.fit_sample, cfg.seed)
            X_eval = backend.asarray(emb.X.take(X_rows))
    # euclidean always: `silhouette` and `silhouette_umap` (the label-free proxy sweeps rank by) are keys every run
    # has; other distances come on top.
    distances = tuple(dict.fromkeys(("euclidean", *cfg.evaluate.silhouette_metrics)))
    return evaluate(backend, Z, labels, labels_true, Z_umap, cfg.seed, X=X_eval, silhouette_metrics=distances,
                    umap_rows=umap_rows, X_rows=X_rows)


def run_timings(timer: StageTimer, emb, backend: Backend) -> dict:
    """timings.json: seconds per stage, rows encoded and reused, peak memory."""
    timings = dict(timer.seconds)
    enc_s = timings["encode"]
    timings.update({
        "rows_encoded": emb.rows_computed,
        "rows_reused": emb.rows_reused,
        "images_per_s": round(emb.rows_computed / enc_s, 2) if emb.rows_computed and enc_s > 0 else None,
        "streamed": isinstance(emb.X, RowChunks),
        "peak_host_rss_bytes": peak_rss_bytes(),
        "peak_host_rss_after": dict(timer.peak_rss),
    })
    if backend.is_gpu:
        timings["peak_gpu_mem_torch_bytes"] = backend.torch_peak_bytes()
    return timings
