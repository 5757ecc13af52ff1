"""Outliers: a score per row for how little it resembles the rest of the collection, and the top FRACTION marked.

The score is the cosine distance from a row to its k-th nearest neighbour in the encoder's space (X), found by the
search of curate/neighbours.py (exact, or faiss IVF at scale). k = 10 by default: a handful of foreign images of one
kind are each other's nearest neighbours, so a k below the size of such a clump sees only the clump and misses it; at k = 10 it is seen
(benchmarks/bench_outliers.py measures k = 1, 5, 10, 20 and the other scores; docs/curate.md has the numbers).

The run also gets each row's silhouette in the clustered space Z (`silhouette_row`, NaN for noise), where the
evaluate stage would score it exactly; above that size it is left out rather than estimated, since a sample would
leave most rows without a value. HDBSCAN's GLOSH score is not offered: the pipeline keeps HDBSCAN's labels only, and
getting the score would mean fitting HDBSCAN again.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..errors import UserError
from ..stream import RowChunks
from .neighbours import IVF_MIN_ROWS, top_k_cosine, unit_rows

log = logging.getLogger(__name__)

DEFAULT_K = 10  # chosen in benchmarks/bench_outliers.py: finds clumps of up to ~k foreign images
STRIP_ROWS = 16  # top outliers shown in report.html
STRIP_WIDTH = 8  # thumbnails per strip (two strips of eight)


def outlier_scores(X: Any, *, k: int = DEFAULT_K, device: str = "auto") -> np.ndarray:
    """One score per row of X (n_rows x dim embeddings, numpy or CuPy): the cosine distance (0 to 2) to the row's
    k-th nearest other row. Higher is more unusual; rank by it and look at the top. `device="auto"` follows X.

        scores = gc.outlier_scores(gc.embed("photos/"))
        worst = np.argsort(-scores)[:20]
    """
    from ..backend import backend_for

    _check_k(k)
    if getattr(X, "ndim", 0) != 2 or X.shape[0] < 2:
        raise UserError(f"X: expected a 2-D array of at least 2 rows, got shape {tuple(getattr(X, 'shape', ()))}")
    backend = backend_for(X, device)
    return np.asarray(backend.to_host(knn_distance(backend, X, k)), dtype=np.float64)


def knn_distance(backend, X: Any, k: int = DEFAULT_K):
    """Cosine distance of each row to its k-th nearest other row (on the backend's device), by the curate stage's one
    search (top_k_cosine: exact, or faiss IVF from IVF_MIN_ROWS rows on the CPU twin, which reads RowChunks chunk by
    chunk). Where that search would search exactly and so load a streamed X whole (below IVF_MIN_ROWS rows, or on
    the GPU twin), a chunk of queries is searched against a chunk of rows at a time instead."""
    if isinstance(X, RowChunks) and (backend.is_gpu or X.n_rows < IVF_MIN_ROWS):
        return _knn_distance_chunks(backend, X, k)
    _, sim = top_k_cosine(backend, X, k)
    return 1.0 - sim[:, -1].astype(backend.xp.float64)


def _knn_distance_chunks(backend, X: RowChunks, k: int):
    """knn_distance over RowChunks of few rows (or on the GPU twin): for each chunk of queries, the k best of every
    chunk of rows, merged. Reads the chunks (n_chunks + 1) times each; memory is two chunks and their
    similarities."""
    xp = backend.xp
    ids = X.chunk_ids()
    k = max(1, min(k, X.n_rows - 1))
    out = []
    for qid in ids:
        Q = unit_rows(backend, X.read(qid))
        best = xp.full((Q.shape[0], 0), -xp.inf, dtype=xp.float32)
        for bid in ids:
            # a chunk against itself: its own rows are left out, as in a self-search
            sim = top_k_cosine(backend, Q, k)[1] if bid == qid else \
                top_k_cosine(backend, unit_rows(backend, X.read(bid)), k, queries=Q)[1]
            best = _keep_best(xp, xp.concatenate([best, sim], axis=1), k)
        out.append(1.0 - best[:, -1].astype(xp.float64))
    return xp.concatenate(out)


def _keep_best(xp, sim, k: int):
    """The k largest similarities of each row, largest first."""
    if sim.shape[1] > k:
        sim = xp.take_along_axis(sim, xp.argpartition(-sim, k - 1, axis=1)[:, :k], axis=1)
    return -xp.sort(-sim, axis=1)


def outliers_stage(cur, fraction: float, X: Any, Z: Any, labels: Any, rows, paths, backend, seed: int = 0) -> None:
    """Adds `outlier_score` and `outlier` (the top `fraction` of rows by score) to the run's columns, and
    `silhouette_row` where affordable; the metrics n_outliers and outliers_fraction; and a strip of the top
    outliers for report.html. X: the encoder's rows (array or RowChunks); Z and labels: the clustered space."""
    n = int(X.shape[0])
    if n < 2:
        raise UserError(f"--outliers: needs at least 2 rows, the run has {n}")
    scores = np.asarray(backend.to_host(knn_distance(backend, X, DEFAULT_K)), dtype=np.float64)
    marked = top_fraction(scores, fraction)
    cur.columns.update(outlier_score=scores, outlier=marked)
    labels_host = np.asarray(backend.to_host(labels))
    silhouette = row_silhouette(backend, Z, labels)
    if silhouette is not None:
        cur.columns["silhouette_row"] = silhouette
    n_out = int(marked.sum())
    cur.metrics.update(n_outliers=n_out, outliers_fraction=n_out / n, outliers_k=DEFAULT_K,
                       outliers_silhouette_rows=silhouette is not None)
    cur.strips.append(strip_section(scores, labels_host, np.asarray(rows), min(n_out, STRIP_ROWS)))


def top_fraction(scores: np.ndarray, fraction: float) -> np.ndarray:
    """True for the round(fraction x rows) highest scores (at least one row); ties go to the earlier row."""
    n_out = min(len(scores), max(1, int(round(fraction * len(scores)))))
    marked = np.zeros(len(scores), dtype=bool)
    marked[np.argsort(-scores, kind="stable")[:n_out]] = True
    return marked


def row_silhouette(backend, Z, labels) -> np.ndarray | None:
    """Each row's silhouette in Z (euclidean, as the evaluate stage scores it), NaN for noise rows; None where it
    is undefined (fewer than 2 clusters) or costs more than the evaluate stage's exact limit."""
    from ..evaluate import SILHOUETTE_MAX_EXACT
    from ..evaluate.silhouette import silhouette_samples

    xp = backend.xp
    keep = labels >= 0
    n_kept = int(keep.sum())
    n_labels = int(xp.unique(labels[keep]).shape[0]) if n_kept else 0
    if n_labels < 2 or n_labels > n_kept - 1:
        return None
    if n_kept > SILHOUETTE_MAX_EXACT[backend.name]:
        log.info("outliers: silhouette_row left out: %d clustered rows is above the exact limit %d (%s twin)",
                 n_kept, SILHOUETTE_MAX_EXACT[backend.name], backend.name)
        return None
    s = silhouette_samples(backend, backend.asarray(Z)[keep], labels[keep])
    out = np.full(int(labels.shape[0]), np.nan)
    out[np.asarray(backend.to_host(keep))] = np.asarray(backend.to_host(s))
    return out


def strip_section(scores: np.ndarray, labels: np.ndarray, rows: np.ndarray, count: int) -> tuple:
    """("Outliers", strips): the `count` highest scores, highest first, in strips of STRIP_WIDTH, each captioned
    with its rows' scores and clusters."""
    top = np.argsort(-scores, kind="stable")[:count]
    strips = []
    for start in range(0, len(top), STRIP_WIDTH):
        part = top[start:start + STRIP_WIDTH]
        caption = f"top outliers {start + 1}-{start + len(part)} (score, cluster): " + ", ".join(
            f"{scores[i]:.3f} ({'noise' if labels[i] < 0 else int(labels[i])})" for i in part)
        strips.append((caption, [int(r) for r in rows[part]]))
    return "Outliers", strips


def _check_k(k: Any) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise UserError(f"k={k!r}: the number of neighbours, an integer of at least 1 (default {DEFAULT_K})")


__all__ = ["outlier_scores", "outliers_stage", "knn_distance", "DEFAULT_K"]
