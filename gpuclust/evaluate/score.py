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
    from ..errors import UserError
    from ..estimator import backend_for
    from . import evaluate
    from .metrics import label_metrics

    backend = backend_for(X if X is not None else labels_pred, device)
    xp = backend.xp
    pred = xp.asarray(backend.asarray(labels_pred)).astype(xp.int64)
    true = None if labels_true is None else backend.asarray(labels_true).astype(xp.int64)
    if true is not None and true.shape != pred.shape:
        raise UserError(f"labels_true has {true.shape[0]} rows, labels_pred {pred.shape[0]}")
    if X is not None:
        return evaluate(backend, backend.asarray(X), pred, true, None if X_umap is None else backend.asarray(X_umap),
                        random_state, silhouette_metrics=tuple(silhouette_metrics))
    noise = pred < 0
    m = {"n_rows": int(pred.shape[0]), "n_clusters": int(xp.unique(pred[~noise]).shape[0]),
         "noise_fraction": float(noise.mean())}
    return {**m, **({} if true is None else label_metrics(backend, true, pred))}
