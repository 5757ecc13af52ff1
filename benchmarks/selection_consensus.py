"""Criteria that compare a set's candidates with each other (benchmarks/study_selection.py): the candidate's labels
scored in every encoder's UMAP space (the cross-space silhouette), and its agreement with the other candidates (the
consensus: mean ARI to them). Both need only the finished runs' labels and reduced spaces, which a sweep has.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import adjusted_rand_score, pairwise_distances

import selection_criteria as sc
import selection_sets as ss


def candidate_labels(name: str, encoders, candidates) -> dict[str, np.ndarray]:
    """{candidate id: labels} of a set's candidates (refitted with seed 0: the labels of the main study), cached."""
    path = ss.cache_dir() / "selection-labels" / f"{name}.npz"
    if path.exists():
        f = np.load(path)
        return {k: f[k] for k in f.files}
    out = {}
    for enc in encoders:
        Z, y, _ = ss.umap_space(name, enc)
        for method, params, takes_k in candidates:
            k = len(np.unique(y)) if takes_k else None
            out[f"{name}|{enc}|{method}|{params}"] = sc.fit(Z, method, k, params, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **out)
    return out


def cross_space_rows(name: str, encoders, labels: dict) -> dict[str, np.ndarray]:
    """{candidate id: per-row silhouette averaged over every encoder's UMAP-50 space} (noise 0)."""
    spaces = [ss.umap_space(name, enc)[0] for enc in encoders]
    dists = [pairwise_distances(Z) for Z in spaces]
    return {cid: np.mean([sc.silhouette_rows(Z, lab, D) for Z, D in zip(spaces, dists)], axis=0)
            for cid, lab in labels.items()}


def consensus(labels: list[np.ndarray], rows: np.ndarray | None = None, groups=None) -> tuple[np.ndarray, np.ndarray]:
    """Each candidate's mean ARI to the other candidates, and to those of the other encoders only (`groups`: the
    encoder of each; a partition another encoder's space also finds is less likely an artefact of one space); on
    `rows` when given; noise as one cluster."""
    n = len(labels)
    if rows is not None:
        labels = [lab[rows] for lab in labels]
    m = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            m[i, j] = m[j, i] = adjusted_rand_score(labels[i], labels[j])
    allm = (m.sum(axis=1) - 1) / max(n - 1, 1)
    if groups is None:
        return allm, allm
    g = np.asarray(groups)
    other = g[:, None] != g[None, :]
    return allm, np.where(other.any(1), (m * other).sum(1) / np.maximum(other.sum(1), 1), allm)
