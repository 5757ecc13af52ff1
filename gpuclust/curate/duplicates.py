"""Near-duplicates: groups of rows whose embeddings' cosine similarity is at least a threshold, one row kept per group.

How, in bounded memory (no n x n matrix anywhere):

1. Candidates: each row's CANDIDATES most similar rows in the encoder's space X (curate/neighbours.py: exact below
   a size, faiss IVF above it on the CPU twin, exact CuPy blocks on the GPU twin); the pairs at or above the
   threshold are kept. A row whose last candidate is still at or above the threshold may have more duplicates than
   it was given: it is searched again with twice as many, up to MAX_CANDIDATES. A row with more duplicates than that
   still joins its group through the pairs of its neighbours (a group is a connected graph); only the pairs it
   would have had beyond MAX_CANDIDATES are not listed, and no group is split by it.
2. Grouping: connected components of the pairs (scipy.sparse.csgraph on the host: the pairs are few).
3. No chaining: a component can join a and c through b (a~b, b~c) while a and c are far apart. So every member of
   a group must be at least `threshold` similar to the group's kept row, computed exactly; the members that are not
   are split off and grouped among themselves by the same rule, greedily (their best kept row first), and a member
   left alone is no duplicate.
4. The kept row of a group: the member closest to the centre (mean) of its cluster in the reduced space Z the
   clusterer saw, clustered rows before noise rows; ties (and every group when there are no clusters, as in
   `find_duplicates` without labels) by the lowest row.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UserError

# The default threshold: benchmarks/bench_duplicates.py measured it on altered copies of real photos (docs/curate.md).
DEFAULT_THRESHOLD = 0.9
CANDIDATES = 16  # neighbours searched per row at first
MAX_CANDIDATES = 256  # the most a row is given when its duplicates fill its candidates
STRIP_GROUPS = 6  # the largest groups shown in report.html
EPS = 1e-6  # float32 rounding: two identical rows may score 0.99999994, which threshold 1 must still take


@dataclass
class Groups:
    """Duplicate groups over the rows' positions: `group` (-1 for none, 0 the largest), `kept` (the kept row's
    position, -1 for none) and `similarity` (to the kept row; NaN for none), each one value per row."""

    group: np.ndarray
    kept: np.ndarray
    similarity: np.ndarray

    @property
    def n_groups(self) -> int:
        return int(self.group.max()) + 1 if len(self.group) else 0


def check_threshold(threshold: Any, name: str = "threshold") -> float:
    """The threshold as a float, or a one-line UserError when it is not a cosine similarity in (0, 1]."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)) or not 0 < threshold <= 1:
        raise UserError(f"{name} {threshold!r}: a cosine similarity threshold in (0, 1], e.g. {DEFAULT_THRESHOLD}")
    return float(threshold)


def find_duplicates(X: Any, threshold: float = DEFAULT_THRESHOLD, *, labels: Any = None, Z: Any = None,
                    rows: Any = None, paths: Any = None, device: str = "auto",
                    candidates: int = CANDIDATES) -> "pd.DataFrame":  # noqa: F821
    """Near-duplicate groups of the rows of X (any (rows, dim) embeddings: numpy, CuPy, or gpuclust RowChunks):
    pairs with cosine similarity >= threshold, grouped so that every member is >= threshold similar to its group's
    kept row. Returns a DataFrame (group, row, path, kept, similarity to the kept row), the kept row first in each
    group, group 0 the largest. The kept row is the lowest row, or with `labels` (clusters, -1 noise) the row closest
    to its cluster's centre in Z (default X). `rows`: the name of each row (default 0..n-1); `paths`: indexed by
    rows. `candidates`: neighbours searched per row at first (see the module docstring)."""
    from ..backend import backend_for

    threshold = check_threshold(threshold)
    backend = backend_for(X, device)
    if not hasattr(X, "chunk_ids"):
        X = backend.asarray(X)
        if X.ndim != 2:
            raise UserError(f"find_duplicates: X must be 2-D (rows, dim), got shape {tuple(X.shape)}")
    n = X.shape[0]
    rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    if labels is not None and Z is None:
        if hasattr(X, "chunk_ids"):
            raise UserError("find_duplicates: with labels and streamed X, also give Z (the reduced rows)")
        Z = X
    rank = kept_rank(backend, Z, labels) if labels is not None else np.zeros(n)
    groups = duplicate_groups(backend, X, threshold, rank, candidates)
    return groups_frame(groups, rows, paths)


def duplicates_stage(cur, threshold: float, X: Any, Z: Any, labels: Any, rows, paths, backend) -> None:
    """Mark the near-duplicates of a run in `cur` (curate.Curation): duplicates.parquet, labels.parquet's
    duplicate_group and duplicate_of (the kept row's dataset row; -1 for kept rows and rows in no group), the
    metrics n_duplicate_groups, n_duplicates (rows marked, kept rows not counted) and duplicates_threshold, and the
    largest groups as strips in report.html, the kept row first."""
    threshold = check_threshold(threshold, "--duplicates")
    rows = np.asarray(rows, dtype=np.int64)
    groups = duplicate_groups(backend, X, threshold, kept_rank(backend, Z, labels))
    frame = groups_frame(groups, rows, paths)
    cur.tables["duplicates.parquet"] = frame
    marked = (groups.kept >= 0) & (groups.kept != np.arange(len(rows)))
    cur.columns["duplicate_group"] = groups.group.astype(np.int64)
    cur.columns["duplicate_of"] = np.where(marked, rows[np.maximum(groups.kept, 0)], -1).astype(np.int64)
    cur.metrics.update(n_duplicate_groups=groups.n_groups, n_duplicates=int(marked.sum()),
                       duplicates_threshold=threshold)
    cur.strips.append((f"Near-duplicates (cosine >= {threshold:g})", group_strips(frame)))


def group_strips(frame, n: int = STRIP_GROUPS) -> list:
    """[(caption, dataset rows, kept row first)] of the n largest groups."""
    strips = []
    for g, part in frame[frame.group < n].groupby("group", sort=True):
        kept = int(part.row[part.kept].iloc[0])
        strips.append((f"group {g}: {len(part)} images, kept row {kept} first; lowest similarity to it "
                       f"{part.similarity.min():.3f}", part.row.tolist()))
    return strips


def kept_rank(backend, Z, labels) -> np.ndarray:
    """Per row, the preference to be kept (lower first): the distance in Z to its cluster's centre (the mean of the
    cluster's rows), inf for noise (-1)."""
    xp = backend.xp
    labels = backend.asarray(labels).astype(xp.int64)
    Z = backend.asarray(Z, dtype=xp.float32)
    ok = labels >= 0
    if not bool(ok.any()):
        return np.full(len(labels), np.inf)
    L = xp.where(ok, labels, 0)
    k = int(L.max()) + 1
    counts = xp.maximum(xp.bincount(L[ok], minlength=k), 1)
    centres = xp.stack([xp.bincount(L[ok], weights=Z[ok, j], minlength=k) for j in range(Z.shape[1])], axis=1)
    dist = xp.linalg.norm(Z - (centres / counts[:, None])[L], axis=1)
    return np.asarray(backend.to_host(xp.where(ok, dist, xp.inf)), dtype=np.float64)


def duplicate_groups(backend, X, threshold: float, rank: np.ndarray, candidates: int = CANDIDATES,
                     **index_kw) -> Groups:
    """The groups (see the module docstring) of the rows of X (an array on the backend, or RowChunks); `rank`:
    each row's preference to be kept (lower first, ties by lowest position). index_kw go to NeighbourIndex."""
    from .neighbours import NeighbourIndex

    n = X.shape[0]
    empty = Groups(np.full(n, -1, np.int64), np.full(n, -1, np.int64), np.full(n, np.nan, np.float32))
    if n < 2:
        return empty
    nx = NeighbourIndex(backend, X, **index_kw)
    i, j, s = candidate_pairs(nx, threshold, candidates)
    comp = components(backend, n, i, j)
    order = np.lexsort((np.arange(n), np.asarray(rank)))  # best kept first, ties by lowest position
    return split_groups(nx, comp, order, threshold, (i, j, s), empty)


def candidate_pairs(nx, threshold: float, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, similarity) of the candidate pairs at or above the threshold; rows whose k-th candidate is still
    above it are searched again with twice as many, up to MAX_CANDIDATES."""
    to_host = nx.backend.to_host
    idx, sim = (np.asarray(to_host(a)) for a in nx.search(k))
    positions = np.arange(nx.n)
    parts = []
    while True:
        hit = (sim >= threshold - EPS) & (idx >= 0)
        parts.append((np.repeat(positions, hit.sum(axis=1)), idx[hit], sim[hit]))
        full = hit[:, -1] if hit.shape[1] else np.zeros(len(positions), bool)
        if not full.any() or k >= min(MAX_CANDIDATES, nx.n - 1):
            break
        k, positions = min(2 * k, MAX_CANDIDATES), positions[full]
        idx, sim = (np.asarray(to_host(a)) for a in nx.search(k, positions=positions))
    return tuple(np.concatenate(p) for p in zip(*parts))


def components(backend, n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """The connected component of each of n rows in the graph of pairs (i, j), by scipy on the host on both twins:
    cupyx.scipy.sparse.csgraph needs pylibcugraph, which the GPU install (cuML's wheels) does not bring, and the pairs
    are few (at most candidates x rows), so moving them costs little."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    i, j = (np.asarray(backend.to_host(a)) for a in (i, j))
    graph = coo_matrix((np.ones(len(i), np.float32), (i, j)), shape=(n, n))
    return connected_components(graph.tocsr(), directed=False)[1]


def split_groups(nx, comp: np.ndarray, order: np.ndarray, threshold: float, pairs, out: Groups) -> Groups:
    """Each component of two or more rows into groups whose members are all >= threshold similar to the kept row
    (greedy, best kept row first); groups numbered by size, largest first, then by kept row."""
    where = np.empty(len(order), np.int64)
    where[order] = np.arange(len(order))  # each position's place in the kept order
    sizes = np.bincount(comp)
    i, j, s = (p[sizes[comp[pairs[0]]] == 2] for p in pairs)  # a component of two is one pair: nothing to check
    _, first = np.unique(comp[i], return_index=True)
    i, j, s = i[first], j[first], s[first]
    swap = where[j] < where[i]
    kept2, other2 = np.where(swap, j, i), np.where(swap, i, j)
    big = np.flatnonzero(sizes[comp] > 2)
    found = _greedy(nx, big, comp[big], where, threshold) if len(big) else []
    size_all = np.concatenate([[len(g[0]) for g in found], np.full(len(kept2), 2)]).astype(np.int64)
    kept_all = np.concatenate([[g[1] for g in found], kept2]).astype(np.int64)
    gid = np.empty(len(kept_all), np.int64)
    gid[np.lexsort((kept_all, -size_all))] = np.arange(len(kept_all))
    for t, (members, kept, sims) in enumerate(found):
        out.group[members], out.kept[members], out.similarity[members] = gid[t], kept, sims
    g2 = gid[len(found):]
    out.group[kept2], out.group[other2] = g2, g2
    out.kept[kept2], out.kept[other2] = kept2, kept2
    out.similarity[kept2], out.similarity[other2] = 1.0, s
    return out


def _greedy(nx, positions: np.ndarray, comp: np.ndarray, where: np.ndarray, threshold: float) -> list:
    """[(member positions, kept position, similarities)] for the components of three or more rows: their sorted
    positions and components; `where`: each position's place in the kept order."""
    U = np.asarray(nx.backend.to_host(nx.rows(positions)))
    found = []
    by_comp = np.argsort(comp, kind="stable")
    bounds = np.flatnonzero(np.diff(comp[by_comp])) + 1
    for local in np.split(by_comp, bounds):
        remaining = local[np.argsort(where[positions[local]], kind="stable")]  # best kept first
        while len(remaining) >= 2:
            sims = U[remaining] @ U[remaining[0]]
            take = sims >= threshold - EPS
            take[0] = True
            if take.sum() >= 2:
                sims[0] = 1.0
                found.append((positions[remaining[take]], positions[remaining[0]], sims[take].astype(np.float32)))
            remaining = remaining[~take]
    return found


def groups_frame(groups: Groups, rows: np.ndarray, paths) -> "pd.DataFrame":  # noqa: F821
    """duplicates.parquet's table: group, row (dataset row), path (None without files), kept, similarity to the
    kept row; by group, the kept row first, then by similarity."""
    import pandas as pd

    pos = np.flatnonzero(groups.group >= 0)
    frame = pd.DataFrame({
        "group": groups.group[pos].astype(np.int64),
        "row": rows[pos].astype(np.int64),
        "path": [paths[int(r)] for r in rows[pos]] if paths is not None else [None] * len(pos),
        "kept": groups.kept[pos] == pos,
        "similarity": groups.similarity[pos].astype(np.float32),
    })
    frame = frame.sort_values(["group", "kept", "similarity", "row"], ascending=[True, False, False, True])
    return frame.reset_index(drop=True)
