"""The map stage: every row of a run on a 2-D map, for the explorer and the report's picture.

The map is a UMAP of the encoder's embeddings to two dimensions, on the run's own twin (umap-learn, or cuML on a
GPU), with the run's neighbour settings (n_neighbors and metric of its UMAP, else the study's 30 and euclidean).
min_dist differs from the clustering space's, because the map is for eyes: 0.1 (0 packs each cluster into a dot).
The epochs are 200 whatever the run's UMAP used (umap-learn gives sets of up to 10,000 rows 500, which more than
doubled the time on the default job's 10,000 rows for no visible change: 7 s against 15 s on the 2-core machine;
the clustering space's default is 200 too now).

Large runs: the CPU twin fits the map on a seeded sample of FIT_ROWS["cpu"] rows and places every other row at
the similarity-weighted mean position of its PLACE_K most similar sample rows (cosine in the encoder's space,
through the curate stage's neighbour search: faiss IVF beyond 20,000 rows). That is the first step of UMAP's own
transform without its layout epochs, which would cost as much as the fit. A GPU fits up to FIT_ROWS["gpu"] rows
whole. A streamed run (--fit-sample) maps its reduced space instead (euclidean neighbours, fitted on at most its
--fit-sample rows), which it holds in memory anyway: fitting and placing from the embeddings took the run of
tests/test_stream.py from under 600 MB to 1.25 GB.

The map is kept in the reduction cache beside the embeddings, like every other reduced space, so a second run or
the explorer on a run made before this stage reuses it.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MAP_METHODS = ("umap", "none")
# The map's own UMAP settings over the run's neighbour settings (see the module docstring).
MAP_PARAMS = {"min_dist": 0.1, "n_epochs": 200}
# Rows the map is fitted on; the rest are placed (module docstring). The CPU figure keeps the fit near 40 s.
FIT_ROWS = {"cpu": 50_000, "gpu": 2_000_000}
PLACE_K = 8
PLACE_ROWS = 16_384  # rows placed per neighbour search (a block's rows and their unit copy are held at once)


def map_params(reduce: Any) -> dict:
    """The map's UMAP parameters for a run whose reduce settings are `reduce` (a ReduceConfig or config.json's
    mapping): the run's n_neighbors, metric and knn when it reduced with UMAP, then MAP_PARAMS."""
    method = reduce["method"] if isinstance(reduce, dict) else reduce.method
    params = dict((reduce["params"] if isinstance(reduce, dict) else reduce.params) or {})
    kept = {k: params[k] for k in ("n_neighbors", "metric", "knn") if k in params} if method == "umap" else {}
    return {**kept, **MAP_PARAMS}


def fit_rows(n_rows: int, backend, budget: int | None = None) -> int:
    """Rows the map is fitted on: FIT_ROWS for the twin, no more than `budget` (a streamed run's --fit-sample:
    the rows it holds in memory at once)."""
    fit = FIT_ROWS[backend.name]
    return min(n_rows, fit if budget is None else min(fit, int(budget)))


def map_key(params: dict, seed: int, n_rows: int, backend, budget: int | None = None) -> dict:
    """The reduction-cache key of a map (without the backend, which `pipeline.cached` adds)."""
    from ..reduce import KNN_AUTO_RULE, SEED_RULE

    key = {"method": "umap", "dims": 2, "params": params, "zscore": False, "normalize": "none", "seed": seed,
           "knn_auto": KNN_AUTO_RULE, "purpose": "map"}
    if backend.is_gpu:
        key["seed_rule"] = SEED_RULE
    fit = fit_rows(n_rows, backend, budget)
    if n_rows > fit:
        key.update(fit_rows=fit, place_k=PLACE_K)
    return key


def map_2d(X, params: dict, backend, seed: int = 0, store_dir: str | None = None,
           budget: int | None = None, metric: str = "cosine", source: dict | None = None) -> tuple[np.ndarray, str]:
    """(xy, twin): the rows of X (an array on the backend, or RowChunks) on a 2-D map, float32 on the host, and the
    twin that fitted it; from the reduction cache beside the embeddings (`store_dir`) when it holds the map.
    `budget`: at most this many rows are fitted on; `metric`: how the other rows find their nearest fitted rows
    (cosine for embeddings, euclidean for a reduced space); `source`: how X was made when it is not the
    embeddings themselves (the reducer's settings), part of the cache key."""
    from ..pipeline import cached

    n = int(X.shape[0])
    if n < 3:
        return np.zeros((n, 2), np.float32), "none"  # nothing to lay out: UMAP needs a neighbour
    key = {**map_key(params, seed, n, backend, budget), **({"place_metric": metric} if metric != "cosine" else {}),
           **({"source": source} if source is not None else {})}
    xy, twin = cached(store_dir, key, backend, lambda: _compute(X, params, backend, seed, budget, metric))
    return np.asarray(backend.to_host(xy), dtype=np.float32), twin


def _compute(X, params: dict, backend, seed: int, budget: int | None, metric: str) -> tuple[np.ndarray, str]:
    from ..curate.neighbours import as_chunks
    from ..reduce import reduce
    from ..stream import RowChunks, sample_positions

    n = int(X.shape[0])
    fit = fit_rows(n, backend, budget)
    if n <= fit:  # every row fitted (a streamed X read whole: it fits the budget)
        whole = X.load(backend) if isinstance(X, RowChunks) else X
        xy, twin = reduce(whole, "umap", 2, dict(params), backend, seed, False, "none")
        return np.asarray(backend.to_host(xy), dtype=np.float32), twin
    pos = sample_positions(n, fit, seed)
    S = backend.asarray(as_chunks(X).take(pos))
    log.info("map: UMAP fitted on %d of %d rows; the others placed by their %d most similar sample rows",
             len(pos), n, PLACE_K)
    xy_fit, twin = reduce(S, "umap", 2, dict(params), backend, seed, False, "none")
    xy_fit = np.asarray(backend.to_host(xy_fit), dtype=np.float32)
    return place(X, S, xy_fit, pos, backend, seed, metric), twin


def place(X, S, xy_fit: np.ndarray, pos: np.ndarray, backend, seed: int = 0, metric: str = "cosine") -> np.ndarray:
    """Every row of X on the map fitted on its rows at `pos` (S, with layout xy_fit): fitted rows keep their place,
    the others go to the similarity-weighted mean of their PLACE_K nearest fitted rows (`metric`: cosine, the
    encoder's space; euclidean, a reduced space)."""
    from ..curate.neighbours import as_chunks

    n = int(X.shape[0])
    out = np.empty((n, 2), np.float32)
    fitted = np.zeros(n, bool)
    fitted[pos] = True
    out[pos] = xy_fit
    search = _searcher(S, backend, metric, seed)
    todo = np.flatnonzero(~fitted)
    source = as_chunks(X)
    for start in range(0, len(todo), PLACE_ROWS):
        part = todo[start:start + PLACE_ROWS]
        idx, sim = search(source.take(part))
        out[part] = weighted_mean(idx, sim, xy_fit)
    return out


def _searcher(S, backend, metric: str, seed: int):
    """block of rows -> (indices, similarities) of their PLACE_K nearest rows of S, on the host."""
    if metric == "cosine":
        from ..curate.neighbours import NeighbourIndex, unit_rows

        index = NeighbourIndex(backend, S, seed=seed)

        def cosine(block):
            idx, sim = index.search(PLACE_K, queries=unit_rows(backend, block))
            return np.asarray(backend.to_host(idx)), np.asarray(backend.to_host(sim))

        return cosine
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=min(PLACE_K, len(S))).fit(np.asarray(backend.to_host(S), np.float32))

    def euclidean(block):
        dist, idx = nn.kneighbors(np.asarray(backend.to_host(block), np.float32))
        return idx, 1.0 / (1.0 + dist)  # nearer rows weigh more

    return euclidean


def weighted_mean(idx: np.ndarray, sim: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Each query's position: the mean of its neighbours' positions `xy[idx]`, weighted by their similarity
    (clipped at a small positive floor, so a query whose neighbours all score <= 0 still gets their plain mean);
    missing neighbours (index -1) count for nothing."""
    valid = idx >= 0
    w = np.where(valid, np.maximum(np.nan_to_num(sim, nan=0.0, neginf=0.0), 1e-6), 0.0)
    pts = xy[np.where(valid, idx, 0)]
    total = np.maximum(w.sum(axis=1, keepdims=True), 1e-12)
    return (pts * w[..., None]).sum(axis=1) / total
