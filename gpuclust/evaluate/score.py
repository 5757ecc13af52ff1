"""`gpuclust.score`: the run's metrics for any labels, with the code the CLI reports them with."""
from __future__ import annotations

from typing import Any, Sequence


def score(labels_true: Any, labels_pred: Any, X: Any = None, *, X_umap: Any = None,
          silhouette_metrics: Sequence[str] = ("euclidean",), device: str = "auto", random_state: int = 0) -> dict:
    """Metrics of a clustering, as metrics.json holds them.

    `labels_true` may be None (label-free metrics only). `X` is the space the labels were found in (silhouette,
    Calinski-Harabasz, Davies-Bouldin there); `X_umap` a UMAP space for the study's label-free proxy
    (`silhouette_umap`). Label metrics count noise (-1) as one cluster, as the study did, and again without it
    under `*_clustered`. Arrays may be numpy or CuPy; `device="auto"` follows them.
    """
    from ..backend import backend_for
    from ..errors import UserError
    from . import evaluate
    from .metrics import label_metrics

    backend = backend_for(X if X is not None else labels_pred, device)
    xp = backend.xp
    pred = backend.asarray(_codes(backend, labels_pred, "labels_pred"))
    true = None if labels_true is None else backend.asarray(_codes(backend, labels_true, "labels_true"))
    n = pred.shape[0]
    if true is not None and true.shape[0] != n:
        raise UserError(f"labels_true has {true.shape[0]} rows, labels_pred {n}")
    if X is not None and (getattr(X, "ndim", 0) != 2 or X.shape[0] != n):
        raise UserError(f"X: expected {n} rows (one per label), got shape {tuple(getattr(X, 'shape', ()))}")
    if X is not None:
        return evaluate(backend, backend.asarray(X), pred, true, None if X_umap is None else backend.asarray(X_umap),
                        random_state, silhouette_metrics=tuple(silhouette_metrics))
    noise = pred < 0
    m = {"n_rows": int(n), "n_clusters": int(xp.unique(pred[~noise]).shape[0]), "noise_fraction": float(noise.mean())}
    return {**m, **({} if true is None else label_metrics(backend, true, pred))}


def _codes(backend, labels: Any, name: str):
    """Labels as int64 codes: integers as they are (-1 stays noise), any other labels (names) numbered."""
    import numpy as np

    from ..errors import UserError

    host = np.asarray(backend.to_host(labels) if hasattr(labels, "__cuda_array_interface__") else labels)
    if host.ndim != 1 or host.shape[0] == 0:
        raise UserError(f"{name}: expected a non-empty 1-D array of labels, got shape {host.shape}")
    if np.issubdtype(host.dtype, np.integer):
        return host.astype(np.int64)
    return np.unique(host, return_inverse=True)[1].astype(np.int64)
