"""The reduce stage: embeddings -> the space to cluster in.

In the study's order: an optional per-dimension z-score (on by default before PCA, as the study did), the reducer
(none, PCA by components or by variance kept, UMAP), then an optional normalisation of the result (L2, z-score or the
study's spherical z-score).
"""
from __future__ import annotations

import logging
import warnings

from ..backend import Backend, make_estimator, planned_twin
from ..errors import UserError
from ..progress import step, track, umap_tqdm_kwds

log = logging.getLogger(__name__)

# The study's UMAP: 50 dimensions, 30 neighbours, min_dist 0; and 200 optimisation epochs at every size. umap-learn
# and cuML give graphs of at most 10,000 rows 500 epochs and larger ones 200, so the default job's 10,000 rows paid
# 2.5x the epochs of 10,001, and a seeded umap-learn runs its epochs on one thread: the 50-d fit took 34 s against
# 15 s on the 2-core machine. Over the selection study's sets, MNIST's 5,000 and Fashion-MNIST's 10,000 rows with
# three encoders, KMeans, ward and HDBSCAN on the 200-epoch spaces scored 0.002 AMI lower on average, inside the
# standard error (benchmarks/bench_umap_epochs.py; benchmarks/results/README.md, "UMAP's epochs").
# `--reduce-param n_epochs=null` gives the library's own choice back.
UMAP_DEFAULTS = {"n_neighbors": 30, "min_dist": 0.0, "metric": "euclidean", "n_epochs": 200}
# Part of every stored UMAP space's key and of a run's config.json (`resolved.umap_defaults`): spaces fitted under
# other defaults (the library's epochs, before this rule existed) are not reused, and a run's own space is found.
UMAP_DEFAULTS_RULE = ", ".join(f"{k}={v}" for k, v in UMAP_DEFAULTS.items())

REDUCERS = {
    "none": "keep the embeddings as they are",
    "zscore": "per-dimension z-score only",
    "pca": "PCA to --dims components, or to the variance kept when 0 < --dims < 1; z-scored first (sklearn / cuML)",
    "umap": "UMAP to --dims components, n_neighbors 30, min_dist 0, 200 epochs (umap-learn / cuML)",
}
# Where UMAP's k-nearest-neighbour graph comes from (`--reduce-param knn=...`).
KNN = {
    "auto": "CPU twin: an exact graph (faiss for euclidean rows, else scikit-learn) for euclidean, cosine or "
            "manhattan UMAP up to rows^2 x dims = 1e12 (about 28,000 rows of 1,280 dims); the library's own search "
            "otherwise and on the GPU",
    "library": "the UMAP library's own search: umap-learn's exact one up to 4,096 rows, pynndescent above; cuML's "
               "build_algo",
    "exact": "an exact graph: faiss for euclidean rows when it is installed, else scikit-learn's brute force",
    "faiss": "an exact euclidean graph from faiss (on the GPU when the installed faiss has GPUs)",
}
# Why `auto` takes an exact graph on the CPU twin. Up to 4,096 rows umap-learn searches exactly itself, but through
# scikit-learn's `pairwise_distances` with its numba metric as a Python callable, one call per pair: 3.6 us a pair
# on the 2-core CI machine, so a 3,000-row fit spent ~17 s on its distances (46 s in all, against 10 s on faiss's
# graph), and transforming 20,000 rows against those 3,000 spent ~220 s. Above 4,096 rows its search is
# pynndescent, which numba compiles on its first use in every process (not cached): 55-58 s of its first call, where
# faiss-cpu searches 10,000 x 1,280 rows exactly in 4.4 s and 30,000 in 36.9 s (pynndescent's second call in the
# same process: 2.2 s and 8.8 s). The exact search grows as rows^2 x dims, so past the budget below the compiled
# approximate search wins even counting the compile. scikit-learn's brute force (float64 BLAS) is ~2.5x slower than
# faiss, hence its smaller budget. benchmarks/bench_knn.py measures all three in fresh processes.
EXACT_AUTO_WORK = {"faiss": 1.0e12, "sklearn": 4.0e11}
# Metrics whose exact graph `auto` takes from scikit-learn (same definitions in umap-learn and scikit-learn).
EXACT_AUTO_METRICS = ("euclidean", "l2", "cosine", "manhattan")
# Metrics `ExactQueryIndex` answers for a fitted model's transform: defined alike in umap-learn and scikit-learn.
EXACT_QUERY_METRICS = ("euclidean", "l2", "cosine", "manhattan", "l1", "cityblock", "chebyshev", "correlation",
                       "braycurtis", "canberra")
# Part of every stored UMAP space's key, so that spaces stored under another `auto` rule are not reused.
KNN_AUTO_RULE = f"exact for {EXACT_AUTO_METRICS}, rows^2 x dims <= {EXACT_AUTO_WORK}"

# What the run's seed means for UMAP. cuML 26.10 turns a random_state into an exact (brute-force) neighbour search
# and deterministic, buffered optimisation epochs (umap.pyx: build_algo "auto" -> brute_force_knn, params.deterministic):
# repeatable, and fast enough up to here (100,000 x 768 rows: 8.6 s on an H100, benchmarks/results), but an H100 did
# not finish 1,000,000 rows. Above this many rows the GPU twin therefore fits unseeded (cuML's nn_descent graph,
# parallel epochs) unless the user sets random_state themselves. The CPU twin always seeds: umap-learn's unseeded
# epochs gain at most the core count, and its neighbour graph comes from `knn=` whatever the seed.
GPU_SEEDED_UMAP_MAX_ROWS = 100_000
SEED_RULE = f"GPU: the run's seed up to {GPU_SEEDED_UMAP_MAX_ROWS} rows; CPU: always"  # in stored spaces' keys

# UMAP's distances: umap-learn's named ones (umap.distances.named_distances; a test keeps this list in step with
# the library), then the names only cuML's UMAP knows (its metric table).
UMAP_LEARN_METRICS = ("braycurtis", "canberra", "categorical", "chebyshev", "correlation", "cosine", "count", "dice",
                      "euclidean", "hamming", "haversine", "hellinger", "hierarchical_categorical", "jaccard",
                      "kulsinski", "l1", "l2", "linf", "linfinity", "linfty", "ll_dirichlet", "mahalanobis",
                      "manhattan", "matching", "minkowski", "myers", "ordinal", "poincare", "rogerstanimoto",
                      "russellrao", "seuclidean", "softmax_hellinger", "sokalmichener", "sokalsneath",
                      "standardised_euclidean", "string", "symmetric_kl", "taxicab", "weighted_minkowski",
                      "wminkowski", "yule")
UMAP_METRICS = UMAP_LEARN_METRICS + ("sqeuclidean", "cityblock")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _whole(v) -> bool:
    """An integer, or a float with no fraction (YAML reads `15.0` as a float)."""
    return _number(v) and float(v).is_integer()


# Counts that UMAP's libraries take as integers: a whole float from YAML becomes an int before they see it.
UMAP_COUNTS = ("n_neighbors", "n_epochs", "negative_sample_rate")


# UMAP's parameters that umap-learn or cuML would otherwise reject deep inside numba or C++ (a TypeError, a typing
# error of 75 lines): name -> (accepts the value, what it must be).
UMAP_CHECKS = {
    "n_neighbors": (lambda v: _whole(v) and v >= 2, "a whole number, at least 2"),
    "min_dist": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "spread": (lambda v: _number(v) and v > 0, "a number > 0"),
    "n_epochs": (lambda v: v is None or (_whole(v) and v >= 0), "a whole number >= 0, or null"),
    "learning_rate": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "negative_sample_rate": (lambda v: _whole(v) and v >= 0, "a whole number >= 0"),
    "local_connectivity": (lambda v: _number(v) and v > 0, "a number > 0"),
    "set_op_mix_ratio": (lambda v: _number(v) and 0 <= v <= 1, "a number from 0 to 1"),
    "repulsion_strength": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "random_state": (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32),
                     "an integer from 0 to 2**32 - 1, or null"),
    "metric": (lambda v: isinstance(v, str) and v in UMAP_METRICS,
               "one of umap-learn's or cuML's distances, e.g. euclidean, cosine, manhattan"),
    "init": (lambda v: isinstance(v, str) and v in ("spectral", "random", "pca", "tswspectral"),
             "spectral, random, pca or tswspectral (cuML: spectral or random)"),
    "knn": (lambda v: isinstance(v, str) and v in KNN, "one of " + ", ".join(KNN)),
}


def check_params(method: str, params: dict) -> None:
    """--reduce-param values that can be judged before any work: one line naming the value and what it must be."""
    if method in ("pca", "umap") and "n_components" in params:
        raise UserError("--reduce-param n_components: set the output size with --dims")
    if method != "umap":
        return
    for key, (ok, want) in UMAP_CHECKS.items():
        if key in params and not ok(params[key]):
            raise UserError(f"--reduce-param {key}={params[key]!r}: must be {want}")
    p = {**UMAP_DEFAULTS, **params}
    if p["min_dist"] > p.get("spread", 1.0):
        raise UserError(f"--reduce-param min_dist={p['min_dist']}: must not exceed spread ({p.get('spread', 1.0)})")


NORMALIZE = {
    "none": "leave the reduced space as it is",
    "l2": "each row scaled to unit length",
    "zscore": "each dimension to zero mean and unit variance",
    "spherical": "the study's spherical z-score: centred, divided by the mean per-dimension std",
}


def zscore(xp, X):
    """Per-dimension z-score; constant dimensions become 0 (as in the study)."""
    X = X - X.mean(axis=0)
    std = X.std(axis=0)
    return X / xp.where(std > 0, std, 1.0)


def normalize(backend: Backend, Z, how: str):
    """Z after the reducer: as it is ("none"), rows to unit length ("l2"), per-dimension z-score ("zscore"), or the
    study's spherical z-score (centred, divided by the mean per-dimension standard deviation)."""
    xp = backend.xp
    if how == "none":
        return Z
    if how == "l2":
        return Z / xp.maximum(xp.linalg.norm(Z, axis=1, keepdims=True), 1e-12)
    if how == "zscore":
        return zscore(xp, Z)
    if how == "spherical":
        Z = Z - Z.mean(axis=0)
        return Z / xp.maximum(Z.std(axis=0).mean(), 1e-12)
    raise UserError(f"--normalize {how}: choose one of {', '.join(NORMALIZE)}")


def reduce(X, method: str, dims: int | float, params: dict, backend: Backend, seed: int = 0,
           zscore_first: bool | None = None, post: str = "none"):
    """Returns (Z, twin) where twin is the backend that ran the reducer ("none" when only arithmetic ran).

    `zscore_first=None` z-scores before PCA only, the study's default.
    """
    if method not in REDUCERS:
        raise UserError(f"unknown reducer {method!r}; known: {', '.join(REDUCERS)}")
    if post not in NORMALIZE:
        raise UserError(f"--normalize {post}: choose one of {', '.join(NORMALIZE)}")
    xp = backend.xp
    if method == "zscore" or (zscore_first if zscore_first is not None else method == "pca"):
        X = zscore(xp, X)
    twin = "none"
    if method == "pca":
        X, twin = pca(X, dims, {"random_state": seed, **params}, backend)  # randomized SVD is seeded
    elif method == "umap":
        X, twin = umap(X, dims, params, backend, seed)
    return normalize(backend, X, post), twin


def pca(X, dims: int | float, params: dict, backend: Backend):
    """PCA to `dims` components, or (0 < dims < 1) to the fewest components that keep that share of variance."""
    est = fit_pca(X, dims, params, backend)
    return est.call("transform", backend, X)[:, : est.keep], est.twin


def fit_pca(X, dims: int | float, params: dict, backend: Backend):
    """The fitted PCA estimator for `dims` (components, or a share of variance); `est.keep` components are used."""
    full = min(X.shape)
    if 0 < dims < 1:
        est = make_estimator("pca", backend, n_components=full, **params)
        est.call("fit", backend, X)
        ratio = backend.xp.cumsum(backend.xp.asarray(est.obj.explained_variance_ratio_))
        est.keep = min(int((ratio < dims).sum()) + 1, full)
        log.info("pca: %d components keep %.1f%% of the variance", est.keep, 100 * dims)
        return est
    if dims != int(dims) or dims < 1:
        raise UserError(f"--dims {dims}: a whole number of components, or a share of variance in (0, 1)")
    if dims > full:
        raise UserError(f"--dims {dims}: PCA can keep at most min(rows, features) = {full} components")
    est = make_estimator("pca", backend, n_components=int(dims), **params)
    est.call("fit", backend, X)
    est.keep = int(dims)
    return est


def _umap_settings(n: int, dims, params: dict, seed: int, backend: Backend) -> tuple[int, dict, str]:
    """(dims, estimator parameters, knn choice as given) for UMAP of n rows on `backend`, checked."""
    if dims != int(dims) or dims < 1:
        raise UserError(f"--dims {dims}: UMAP needs a whole number of dimensions, at least 1")
    dims = int(dims)
    p = {**UMAP_DEFAULTS, **params}
    p.update({k: int(p[k]) for k in UMAP_COUNTS if _number(p.get(k))})  # (check_params: whole numbers only)
    if n <= dims + 1:
        raise UserError(f"UMAP to {dims} dimensions needs more than {dims + 1} rows; the data has {n} (lower --dims)")
    if p["n_neighbors"] >= n:
        log.warning("umap: n_neighbors %d >= %d rows; using %d", p["n_neighbors"], n, n - 1)
        p["n_neighbors"] = n - 1
    knn = p.pop("knn", "auto")  # ours, not the estimator's: out before the twin is planned
    p["random_state"] = umap_seed(n, p, seed, backend)
    if p["metric"] not in UMAP_LEARN_METRICS and planned_twin("umap", backend, p) == "cpu":
        same = {"cityblock": "manhattan", "sqeuclidean": "euclidean (the same neighbours)"}.get(p["metric"], "")
        raise UserError(f"--reduce-param metric={p['metric']}: cuML's name, which umap-learn (the CPU twin) does not "
                        f"know; use {same}")
    if knn not in KNN:
        raise UserError(f"--reduce-param knn={knn}: one of {', '.join(KNN)}")
    if knn == "exact" and p.get("metric", "euclidean") not in EXACT_QUERY_METRICS:
        raise UserError(f"--reduce-param knn=exact: scikit-learn's exact search has no metric {p['metric']!r} as "
                        f"umap-learn defines it (it has {', '.join(EXACT_QUERY_METRICS)}); use knn=library")
    if knn == "faiss" and p.get("metric", "euclidean") not in ("euclidean", "l2"):
        raise UserError(f"--reduce-param knn=faiss computes euclidean neighbours; metric {p['metric']} "
                        "needs knn=exact or knn=library")
    return dims, p, knn


def umap_seed(n: int, params: dict, seed: int, backend: Backend) -> int | None:
    """The random_state a UMAP fit of n rows gets: the user's own when given, else the run's seed, except on the GPU
    twin above GPU_SEEDED_UMAP_MAX_ROWS rows (see there), which fits unseeded and says so."""
    if "random_state" in params:
        return params["random_state"]
    if n > GPU_SEEDED_UMAP_MAX_ROWS and planned_twin("umap", backend, {**params, "random_state": seed}) == "gpu":
        log.info("umap: %d rows on the GPU twin are fitted unseeded, for speed (cuML's seeded UMAP searches "
                 "exactly and optimises deterministically; above %d rows that costs too much): results vary a "
                 "little between runs; --reduce-param random_state=%d insists", n, GPU_SEEDED_UMAP_MAX_ROWS, seed)
        return None
    return seed


def knn_plan(knn: str, shape: tuple, metric: str, twin: str) -> str:
    """What builds UMAP's neighbour graph for the twin that fits it: "library", "faiss" or "sklearn" (see KNN)."""
    from .knn import has_faiss

    n, d = shape
    euclidean = metric in ("euclidean", "l2")
    if knn == "library":
        return "library"
    if knn == "faiss":
        return "faiss"
    if knn == "exact":
        return "faiss" if euclidean and has_faiss() else "sklearn"
    if twin == "gpu" or metric not in EXACT_AUTO_METRICS:  # auto
        return "library"
    search = "faiss" if euclidean and has_faiss() else "sklearn"
    return search if float(n) * n * d <= EXACT_AUTO_WORK[search] else "library"


def _graph(X, knn: str, p: dict, backend: Backend) -> None:
    """Put an exact graph of X's rows into the UMAP parameters `p` when `knn` asks for one. For the CPU twin the
    graph comes with an exact query index (`ExactQueryIndex`), so the fitted model can still `transform` new rows
    (umap-learn refuses to without an index)."""
    from .knn import ExactQueryIndex, brute_knn, faiss_knn

    twin = planned_twin("umap", backend, p)
    metric = p.get("metric", "euclidean")
    plan = knn_plan(knn, X.shape, metric, twin)
    if plan == "library":
        return
    k = int(p["n_neighbors"])
    idx, dist = faiss_knn(X, k, backend) if plan == "faiss" else brute_knn(X, k, backend, metric)
    log.info("umap: exact %d-neighbour graph of %d rows from %s", k, X.shape[0],
             "faiss" if plan == "faiss" else "scikit-learn")
    if twin == "gpu":
        p["precomputed_knn"] = (idx, dist)
    else:
        host = backend.to_host
        p["precomputed_knn"] = (host(idx), host(dist), ExactQueryIndex(host(X), metric))


def _fit_umap(est, method: str, backend: Backend, X):
    from .jit import cache_umap_learn

    if est.twin == "cpu":
        cache_umap_learn()  # its compiled code from disk after a first run (reduce/jit.py)
    own_bar = est.twin == "cpu" and "tqdm_kwds" not in est.params  # umap-learn's epoch bar (cuML has none)
    if own_bar:
        est.obj.tqdm_kwds = umap_tqdm_kwds()
    try:
        with warnings.catch_warnings(), step("umap fit"):
            # umap-learn warns that a precomputed graph without a pynndescent index cannot transform; ours can
            warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\]")
            return est.call(method, backend, X)
    finally:
        if own_bar:  # the fitted model's later transforms (chunk by chunk, assign) stay silent
            est.obj.tqdm_kwds = None


def umap(X, dims: int, params: dict, backend: Backend, seed: int = 0):
    """(Z as float32, twin): UMAP of X to `dims` with the study's defaults under `params`, on the neighbour graph
    `params["knn"]` chooses (see KNN)."""
    dims, p, knn = _umap_settings(X.shape[0], dims, params, seed, backend)
    with step("umap neighbour graph"):
        _graph(X, knn, p, backend)
    est = make_estimator("umap", backend, n_components=dims, **p)
    Z = _fit_umap(est, "fit_transform", backend, X)
    return backend.xp.asarray(Z, dtype=backend.xp.float32), est.twin


def reduce_streamed(matrix, method: str, dims, params: dict, backend: Backend, seed: int, fit_sample: int,
                    zscore_first: bool | None = None, post: str = "none", rows=None, client=None):
    """`reduce` for embeddings read in chunks (`gpuclust.stream.RowChunks`), never held whole.

    One pass gathers the column statistics (and checks every value is finite); the reducer is fitted on
    `fit_sample` seeded rows and each chunk is transformed on its own, on the Dask workers when `client` is given
    (each reads its chunk from disk itself). UMAP keeps the fit's own layout for the sampled rows. Returns (Z, twin).
    """
    import numpy as np

    from ..stream import column_stats, sample_positions

    if method not in ("pca", "umap"):
        raise UserError(f"--fit-sample applies to --reduce pca or umap (got {method}): those can transform rows they "
                        "were not fitted on")
    if post not in NORMALIZE:
        raise UserError(f"--normalize {post}: choose one of {', '.join(NORMALIZE)}")
    xp = backend.xp
    n = matrix.n_rows
    pos = sample_positions(n, fit_sample, seed)
    with step("column statistics"):
        mean, std, S = column_stats(matrix, backend, rows, sample=pos)  # one read of the rows for both
    shift = scale = None
    if zscore_first if zscore_first is not None else method == "pca":
        # float32 statistics, so standardising a chunk makes float32 copies of it, not float64 ones
        shift, scale = mean.astype(xp.float32), xp.where(std > 0, std, 1.0).astype(xp.float32)
    S = _standardise(xp, xp.asarray(S, dtype=xp.float32), shift, scale)
    keep = None
    if method == "pca":
        est = fit_pca(S, dims, {"random_state": seed, **params}, backend)
        keep = est.keep
    else:
        udims, p, knn = _umap_settings(len(pos), dims, params, seed, backend)
        if knn not in ("auto", "library") and planned_twin("umap", backend, p) == "gpu":
            # cuML's transform after a fit on a precomputed graph has not been verified
            raise UserError(f"--reduce-param knn={knn} cannot be combined with --fit-sample on the GPU: cuML "
                            "transforms new rows with its own neighbour search; drop one of them")
        with step("umap neighbour graph"):
            _graph(S, knn, p, backend)
        est = make_estimator("umap", backend, n_components=udims, **p)
        _fit_umap(est, "fit", backend, S)
        if est.twin == "cpu":
            _exact_transform(est.obj)
            library_transform_epochs(est.obj, params)
    model = est.obj
    stats = None if shift is None else (backend.to_host(shift), backend.to_host(scale))
    Z = _transform_all(matrix, model, est.twin, backend, stats, client)
    if keep is not None:
        Z = Z[:, :keep]
    if method == "umap":  # the fitted rows keep the layout UMAP optimised for them
        Z[xp.asarray(pos)] = xp.asarray(np.asarray(backend.to_host(model.embedding_)), dtype=xp.float32)
    log.info("%s: fitted on %d of %d rows, transformed the rest in %d chunk(s)", method, len(pos), n,
             len(matrix.chunk_ids()))
    return normalize(backend, Z, post), est.twin


def library_transform_epochs(model, params: dict) -> None:
    """A fitted umap-learn model's transforms keep umap-learn's own epochs unless the run set n_epochs: the 200 are
    the fit's default, and umap-learn's transform takes a third of n_epochs (66 per chunk), where with None it uses
    its own rule (100 epochs for up to 10,000 new rows, 30 above), as gpuclust's transforms did before that default.
    curate.placement.umap_place follows the same rule. (The GPU twin's transform keeps cuML's handling: unverified.)"""
    if "n_epochs" not in params:
        model.n_epochs = None


def _exact_transform(model) -> None:
    """Exact neighbours for the rows a fitted umap-learn model transforms (cuML's transform searches exactly
    already): our `ExactQueryIndex` in place of pynndescent's approximate index, and in place of umap-learn's
    small-data search (fits under 4,096 rows on its own graph), which computes each distance by a Python call
    (see the note above EXACT_AUTO_WORK)."""
    from .knn import ExactQueryIndex

    if model.metric not in EXACT_QUERY_METRICS or getattr(model, "metric_kwds", None):
        return  # a metric only umap-learn computes (or one with parameters) keeps its own search
    index = getattr(model, "_knn_search_index", None)
    if getattr(model, "_small_data", False) or (index is not None and not isinstance(index, ExactQueryIndex)):
        model._small_data = False  # umap-learn's transform then asks the index
        model._knn_search_index = ExactQueryIndex(model._raw_data, model.metric)


def _standardise(xp, B, shift, scale):
    return B if shift is None else ((B - xp.asarray(shift)) / xp.asarray(scale)).astype(xp.float32)


def _transform_block(backend: Backend, model, B, stats):
    xp = backend.xp
    B = xp.asarray(B, dtype=xp.float32)
    if stats is not None:
        B = _standardise(xp, B, stats[0], stats[1])
    return xp.asarray(model.transform(B), dtype=xp.float32)


def transform_chunk(matrix, cid, model, twin: str, stats):
    """One chunk through a fitted reducer on a Dask worker (which reads the chunk from disk itself); host result,
    small (rows x --dims), so it travels back cheaply."""
    import numpy as np

    from ..backend import resolve_backend

    backend = resolve_backend(twin)
    return np.asarray(backend.to_host(_transform_block(backend, model, matrix.read(cid), stats)))


def _transform_all(matrix, model, twin: str, backend: Backend, stats, client=None):
    xp = backend.xp
    ids = matrix.chunk_ids()
    starts, start = [], 0
    for cid in ids:
        starts.append(start)
        start += matrix.chunk_len(cid)
    parts = {}
    if client is not None and len(ids) > 1:
        from distributed import as_completed
        from tqdm.auto import tqdm

        model_f = client.scatter(model, broadcast=True)
        futures = {client.submit(transform_chunk, matrix, cid, model_f, twin, stats, pure=False, retries=3): j
                   for j, cid in enumerate(ids)}
        for fut in tqdm(as_completed(futures), total=len(ids), desc="transform (dask)", disable=None):
            parts[futures[fut]] = fut.result()
    else:
        from ..backend import cpu_backend

        local = backend if twin == backend.name else cpu_backend()  # the CPU twin standing in takes host rows
        for j, cid in enumerate(track(ids, "transform", len(ids))):
            B = matrix.read(cid)
            parts[j] = _transform_block(local, model, B if local is backend else backend.to_host(B), stats)
    dims = parts[0].shape[1]
    Z = xp.empty((matrix.n_rows, dims), dtype=xp.float32)
    for j in range(len(ids)):
        Z[starts[j]:starts[j] + parts[j].shape[0]] = xp.asarray(parts[j])
    return Z
