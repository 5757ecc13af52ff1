"""Running the encode stage across Dask workers: processes on this machine (`--workers N`), one worker per GPU
(`--gpus N`, dask-cuda's LocalCUDACluster) or an existing cluster (`--scheduler-address`).

Each task encodes one whole shard of the embedding store and writes it there itself (atomically), so the client
never gathers arrays: it only learns which shards are done, then reads the finished store exactly as a single-process
run reads a store it filled earlier. A worker that dies takes only the shards it had not yet written; Dask reschedules
those tasks (`retries`) on the other workers, and since a shard file appears only when whole, the store ends with
every row exactly once, in order, whatever happened. Workers load the dataset and the model once and keep them.

Device memory (--gpus): each worker owns one GPU. No RMM pool is created, so torch's caching allocator and RAPIDS
allocate on demand and the worker empties torch's cache when its shards are done; the client's own GPU (device 0) then
runs the later stages.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager

log = logging.getLogger(__name__)

DASK_INSTALL = "pip install 'gpuclust[distributed]'  (dask and distributed)"
DASK_CUDA_INSTALL = "pip install 'dask-cuda==26.10.*' (or the RAPIDS conda environment; README 'GPU install')"
# cuML's multi-GPU estimators (cuml.dask) also need dask-cudf and raft-dask, which cuML's wheel leaves to its extra.
CUML_DASK_INSTALL = "pip install 'cuml-cu13[dask]==26.10.*' (or the RAPIDS conda environment; README 'GPU install')"

_WORKER_STATE: dict = {}  # per worker process: config key -> (dataset, encoder, forward, backend)


def wants_cluster(cfg) -> bool:
    """Whether the run's config asks for Dask: --workers, --scheduler-address, or more than one GPU."""
    return bool(cfg.workers) or bool(cfg.scheduler_address) or cfg.gpus > 1


CONNECT_TIMEOUT = "20s"  # a refused connection is retried until then


def connect(address: str):
    """A Client of the Dask scheduler at `address`; an unreachable one is the user's error (exit 2), not a crash."""
    from ..errors import UserError, require

    require("distributed", "--scheduler-address", DASK_INSTALL)
    from distributed import Client

    try:
        return Client(address, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        raise UserError(f"--scheduler-address {address}: cannot connect ({exc})") from None


@contextmanager
def open_client(cfg):
    """A dask.distributed Client for the run's executor settings (the cluster is closed on exit if we made it)."""
    from ..errors import require

    require("distributed", "--workers/--gpus/--scheduler-address", DASK_INSTALL)
    from distributed import Client, LocalCluster

    if cfg.scheduler_address:
        client = connect(cfg.scheduler_address)
        try:
            yield client
        finally:
            client.close()
        return
    if cfg.gpus > 1:
        dask_cuda = require("dask_cuda", "--gpus N", DASK_CUDA_INSTALL)
        cluster = dask_cuda.LocalCUDACluster(n_workers=cfg.gpus, threads_per_worker=1, dashboard_address=None)
    else:
        cluster = LocalCluster(n_workers=cfg.workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=logging.WARNING)
    try:
        with Client(cluster) as client:
            yield client
    finally:
        cluster.close()


def _state(cfg):
    """The dataset, encoder and forward pass of this worker process, built on first use."""
    from ..backend import resolve_backend
    from ..data import load_dataset
    from ..encode.extract import prepare_forward
    from ..encode.models import build_encoder
    from ..store import default_cache_dir

    key = (cfg.data, cfg.encode, cfg.device, cfg.seed)
    if key not in _WORKER_STATE:
        _WORKER_STATE.clear()  # one configuration at a time: a new run replaces the old model
        backend = resolve_backend(cfg.device)
        ds = load_dataset(cfg.data.spec, cfg.data.limit, cfg.data.root, cfg.data.subsample, cfg.seed,
                          cfg.data.download)
        enc = build_encoder(cfg.encode.spec, cfg.encode.weights, cfg.encode.arch, cfg.encode.preprocess,
                            ds.native_size() if cfg.encode.preprocess == "study" else None)
        forward = prepare_forward(enc, backend, cfg.encode.batch_size, cfg.encode.precision, cfg.encode.compile,
                                  cfg.encode.runtime, cfg.encode.cache_dir or default_cache_dir())
        _WORKER_STATE[key] = (ds, enc, forward, backend)
    return _WORKER_STATE[key]


class _NoBar:
    def update(self, n):
        pass


def encode_shard_task(cfg, store, i: int, torch_threads: int, given=None) -> tuple[int, int]:
    """Runs on a worker: encode shard `i` into `store` unless it is already there; `given` (embeddings, rows) are
    the shard's rows other stores hold, copied in. Returns (shard, rows encoded)."""
    import torch

    from ..encode.extract import encode_and_store

    if store.has(i):  # a retried task whose first attempt finished writing before its worker died
        return i, 0
    if torch_threads:
        torch.set_num_threads(torch_threads)
    ds, enc, forward, backend = _state(cfg)
    encode_and_store(ds, enc, forward, backend, store, i, cfg.encode.batch_size, 0, _NoBar(), cfg.encode.decode,
                     cfg.encode.store_dtype, given)
    if backend.is_gpu:
        torch.cuda.empty_cache()
    return i, len(store.shard_range(i)) - (0 if given is None else len(given[1]))


def fill_store(client, cfg, store, progress: bool = True, donors=None) -> int:
    """Encode every missing shard of `store` on the cluster's workers; returns the number of rows encoded.
    `donors` (store.Donors, gathered): rows other stores hold; each task gets its shard's share and copies them."""
    from distributed import as_completed
    from tqdm.auto import tqdm

    todo = store.missing()
    if not todo:
        return 0
    n_workers = n_dask_workers(client)
    threads = 0 if cfg.gpus > 1 else max(1, (os.cpu_count() or 1) // n_workers)
    log.info("encode: %d shard(s) over %d Dask worker(s)", len(todo), n_workers)
    futures = [client.submit(encode_shard_task, cfg, store, i, threads,
                             None if donors is None else donors.fetch(store.shard_range(i)),
                             key=f"gpuclust-shard-{store.digest}-{i}", retries=3, pure=False) for i in todo]
    done_rows = 0
    with tqdm(total=sum(len(store.shard_range(i)) for i in todo), unit="img", desc="encode (dask)",
              disable=not progress, dynamic_ncols=True) as bar:
        for fut in as_completed(futures):
            i, n = fut.result()
            done_rows += n
            bar.update(len(store.shard_range(i)))
    return done_rows


def n_dask_workers(client) -> int:
    """Every worker of the cluster (`Client.nthreads` lists them all; `scheduler_info` lists only the first five
    in some distributed releases)."""
    return max(1, len(client.nthreads()))


def cuml_dask_missing() -> str | None:
    """None when cuML's multi-GPU estimators import, else the first line of why not. cuml.dask raises its own
    ModuleNotFoundError without a module name when dask-cudf or raft-dask is missing."""
    try:
        import cuml.dask.cluster  # noqa: F401
    except ImportError as exc:
        return str(exc).splitlines()[0] or type(exc).__name__
    return None


def _worker_has_gpu() -> bool:
    """Runs on a worker: whether it can put arrays on a GPU."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy there, or CuPy without a driver or device: either way, no GPU for this worker
        return False


def workers_have_gpus(client) -> bool:
    """Whether every worker of the cluster has a GPU (an existing cluster's workers may be plain CPU workers)."""
    return all(client.run(_worker_has_gpu).values())


def _to_device(block):
    import cupy

    return cupy.asarray(block)


def dask_kmeans(client, Z, k, params: dict, backend, seed: int, n_classes: int | None):
    """KMeans across the cluster's GPUs with cuML's multi-GPU KMeans: each worker holds a block of rows on its GPU
    and only centroids travel between iterations. Same parameter checks and k resolution as the single-GPU path;
    returns (labels on this process's device, twin, resolved parameters)."""
    import dask
    import dask.array as da
    import numpy as np

    from ..cluster import CLUSTERERS, _resolve_k
    from ..errors import MissingDependency

    missing = cuml_dask_missing()
    if missing:
        raise MissingDependency(f"multi-GPU KMeans needs cuml.dask ({missing}): {CUML_DASK_INSTALL}")
    import cuml.dask.cluster as cuml_dask
    import cupy

    params = dict(params)
    CLUSTERERS["kmeans"].check(params)
    n, d = Z.shape
    p = {**_resolve_k("kmeans", k, params, n, n_classes), **params}
    p.setdefault("random_state", seed)
    from ..backend import ALGORITHMS

    p = ALGORITHMS["kmeans"].translate(p, "gpu")  # the single-GPU twin's settings (n_init 1), so the two compare
    Zh = np.ascontiguousarray(backend.to_host(Z), dtype=np.float32)
    n_workers = n_dask_workers(client)
    bounds = np.linspace(0, n, n_workers + 1).astype(int)
    # Scatter one block per worker (host memory travels once), then move each to its worker's GPU there.
    futures = client.scatter([Zh[a:b] for a, b in zip(bounds[:-1], bounds[1:])])
    blocks = [da.from_delayed(dask.delayed(_to_device)(f), shape=(b - a, d), dtype=np.float32,
                              meta=cupy.empty((0, d), np.float32))
              for f, a, b in zip(futures, bounds[:-1], bounds[1:])]
    X = client.persist(da.concatenate(blocks, axis=0))
    model = cuml_dask.KMeans(client=client, **p)  # (the caller checked p against cuML's KMeans: multi_gpu)
    model.fit(X)
    labels = model.predict(X).compute()
    return backend.xp.asarray(labels).astype(backend.xp.int64), "gpu-dask", p


def check_executor(cfg: RunConfig) -> None:
    """--gpus / --workers / --scheduler-address: consistent, and what they need is installed and present."""
    from ..errors import UserError, require

    if cfg.gpus < 1:
        raise UserError(f"--gpus {cfg.gpus}: must be at least 1")
    if cfg.workers is not None and cfg.workers < 1:
        raise UserError(f"--workers {cfg.workers}: must be at least 1")
    if sum([cfg.gpus > 1, cfg.workers is not None, cfg.scheduler_address is not None]) > 1:
        raise UserError("choose one of --gpus N (N > 1), --workers N and --scheduler-address")
    if cfg.gpus > 1:
        from ..backend import gpu_available

        ok, reason = gpu_available()
        if not ok:
            raise UserError(f"--gpus {cfg.gpus}: needs CUDA GPUs with CuPy and cuML ({reason})")
        import cupy

        have = cupy.cuda.runtime.getDeviceCount()
        if have < cfg.gpus:
            raise UserError(f"--gpus {cfg.gpus}: this machine has {have} GPU(s)")
        require("dask_cuda", f"--gpus {cfg.gpus}", DASK_CUDA_INSTALL)
    if cfg.workers is not None or cfg.scheduler_address is not None:
        require("distributed", "--workers/--scheduler-address", DASK_INSTALL)


def multi_gpu(cfg, backend, client) -> bool:
    """KMeans runs across the cluster's GPUs (cuML's Dask KMeans) on a GPU run with GPU workers, when cuml.dask
    imports; without it KMeans runs on this process's GPU, as a single-GPU run's does, and the log says why."""
    wanted = client is not None and backend.is_gpu and cfg.workers is None and cfg.cluster.method == "kmeans" \
        and cfg.cluster.k != "auto"
    if not wanted:
        return False
    from ..backend import ALGORITHMS

    gap = ALGORITHMS["kmeans"].gpu_gap(dict(cfg.cluster.params))
    if gap:  # the step runs where a single-GPU run would run it: on the CPU twin
        log.warning("kmeans runs on this process, not across the Dask workers: cuML's KMeans lacks %s", gap)
        return False
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
