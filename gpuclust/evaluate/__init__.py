"""The evaluate stage: labels (+ truth when known) -> metrics, all computed on the backend's device."""
from __future__ import annotations

import logging

from ..backend import Backend
from ..progress import step
from .metrics import ami, ari, calinski_harabasz, davies_bouldin, label_metrics, nmi
from .silhouette import METRICS as SILHOUETTE_METRICS
from .silhouette import silhouette_samples, silhouette_score

log = logging.getLogger(__name__)

__all__ = ["evaluate", "silhouette", "silhouette_samples", "label_metrics", "ami", "ari", "nmi",
           "SILHOUETTE_MAX_EXACT", "SILHOUETTE_METRICS"]

# Exact silhouette is O(n^2) work; above this many clustered rows it is estimated from a seeded sample of rows.
SILHOUETTE_MAX_EXACT = {"cpu": 30_000, "gpu": 200_000}
SILHOUETTE_SAMPLE = 10_000


def check_settings(evaluate_cfg) -> None:
    """The evaluate stage's own settings (`evaluate:` in YAML, --silhouette-metrics): distances it knows."""
    from ..errors import UserError

    metrics = evaluate_cfg.silhouette_metrics
    bad = [m for m in metrics if m not in SILHOUETTE_METRICS]
    if bad or not metrics:
        raise UserError(f"silhouette metrics {','.join(bad) or '(none)'}: choose from {', '.join(SILHOUETTE_METRICS)}")


def silhouette(backend: Backend, X, labels, metric: str = "euclidean", seed: int = 0) -> dict:
    """Silhouette of the clustered rows: {"value", "rows", "exact", "ci95"} (value None when undefined)."""
    return silhouette_score(backend, X, labels, metric, SILHOUETTE_MAX_EXACT[backend.name], SILHOUETTE_SAMPLE, seed)


def _silhouettes(backend, spaces: dict, labels, metrics, seed) -> dict:
    out, done = {}, {}
    for space, (Z, rows) in spaces.items():
        space_labels = labels if rows is None else labels[backend.asarray(rows)]
        for metric in metrics:
            key = "silhouette" + ("" if space == "clustered" else f"_{space}") + \
                ("" if metric == "euclidean" else f"_{metric}")
            if (id(Z), metric) not in done:  # a UMAP run clusters in its UMAP space: score it once
                with step(f"silhouette ({space} space, {metric})"):
                    done[(id(Z), metric)] = silhouette(backend, Z, space_labels, metric, seed)
            s = done[(id(Z), metric)]
            out[key] = s["value"]
            if space == "clustered" and metric == metrics[0]:
                out.update(silhouette_rows=s["rows"], silhouette_exact=s["exact"], silhouette_ci95=s["ci95"])
    return out


def evaluate(backend: Backend, Z, labels_pred, labels_true=None, Z_umap=None, seed: int = 0, X=None,
             silhouette_metrics=("euclidean",), umap_rows=None, X_rows=None) -> dict:
    """Flat metrics: label metrics when truth is known, label-free ones always.

    `Z` is the clustered space; `Z_umap` the UMAP space for the study's label-free proxy; `X` the original
    embeddings (silhouette there is optional: it is the costliest). `umap_rows` / `X_rows`: the row positions
    those spaces hold when they cover a sample of the rows (a streamed run), else None. Noise counts as one cluster
    in the label metrics (as in the study) and again without it under `*_clustered`; silhouettes, CH and DB use
    clustered rows, and `silhouette_all` / `silhouette_umap_all` count every row, noise as 0.
    """
    xp = backend.xp
    noise = labels_pred < 0
    clustered = ~noise
    m: dict = {
        "n_rows": int(labels_pred.shape[0]),
        "n_clusters": int(xp.unique(labels_pred[clustered]).shape[0]),
        "noise_fraction": float(noise.mean()),
    }
    if labels_true is not None:
        m.update(label_metrics(backend, labels_true, labels_pred))
        m["n_classes"] = int(xp.unique(labels_true).shape[0])
        if bool(clustered.any()):
            kept = label_metrics(backend, labels_true[clustered], labels_pred[clustered])
            m.update({f"{k}_clustered": v for k, v in kept.items()})
    spaces = {"clustered": (Z, None)}
    if Z_umap is not None:
        spaces["umap"] = (Z_umap, umap_rows)
    if X is not None:
        spaces["original"] = (X, X_rows)
    m.update(_silhouettes(backend, spaces, labels_pred, list(silhouette_metrics), seed))
    for key in ("silhouette", "silhouette_umap"):
        # Over every row, a noise row scoring 0: a run that leaves most rows as noise can have a high silhouette on
        # the few it clusters, and would otherwise win a label-free ranking.
        if m.get(key) is not None:
            m[f"{key}_all"] = m[key] * (1.0 - m["noise_fraction"])
    m["calinski_harabasz"] = calinski_harabasz(backend, Z[clustered], labels_pred[clustered])
    m["davies_bouldin"] = davies_bouldin(backend, Z[clustered], labels_pred[clustered])
    return m
