"""The cluster stage: reduced embeddings -> labels (KMeans, HDBSCAN). HDBSCAN's noise is labelled -1."""
from __future__ import annotations

import logging

from ..backend import Backend, make_estimator
from ..errors import UserError

log = logging.getLogger(__name__)

CLUSTERERS = {
    "kmeans": "KMeans with --k clusters (default: the number of classes); sklearn / cuML",
    "hdbscan": "HDBSCAN, finds the number of clusters; noise labelled -1; sklearn / cuML",
}


def cluster(Z, method: str, k: int | None, params: dict, backend: Backend, seed: int = 0, n_classes: int | None = None):
    """Returns (labels as an xp int64 array, twin that ran, resolved parameters)."""
    if method not in CLUSTERERS:
        raise UserError(f"unknown clusterer {method!r}; known: {', '.join(CLUSTERERS)}")
    n = Z.shape[0]
    params = dict(params)
    if method == "kmeans":
        k = k if k is not None else params.pop("n_clusters", n_classes)
        if k is None:
            raise UserError("kmeans needs --k N: the dataset has no labels to take the number of classes from")
        if not 1 <= k <= n:
            raise UserError(f"--k {k}: must be between 1 and the number of images ({n})")
        p = {"n_clusters": int(k), "random_state": seed, **params}
        est = make_estimator("kmeans", backend, **p)
    else:
        if k is not None:
            log.warning("hdbscan finds the number of clusters itself; --k %s is ignored", k)
        p = dict(params)
        if n < 2:
            raise UserError("hdbscan needs at least 2 images")
        est = make_estimator("hdbscan", backend, **p)
    labels = est.call("fit_predict", backend, Z)
    return backend.xp.asarray(labels).astype(backend.xp.int64), est.twin, est.params
