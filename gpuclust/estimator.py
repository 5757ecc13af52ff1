"""`gpuclust.Clusterer`: reduce, then cluster, as one scikit-learn estimator, on either twin.

The same stage functions as `python -m gpuclust.run` (gpuclust.reduce.reduce, gpuclust.cluster.cluster and
choose_k) do the work, so a notebook gets the CLI's numbers for the CLI's settings. Names choose an algorithm from the
twin records; a ready object (anything with `fit_transform`, or `fit_predict`) runs as it is.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin

from .backend import Backend, backend_for, is_device_array
from .errors import UserError

__all__ = ["Clusterer", "call_ready", "backend_for", "is_device_array"]


def call_ready(obj: Any, method: str, X, backend: Backend):
    """`obj.method(X)` for a user's ready object, with X where the object computes, the result back on `backend`."""
    if not hasattr(obj, method):
        raise UserError(f"{type(obj).__name__} has no {method}(); give a name or an object that has one")
    out = getattr(obj, method)(X if backend.takes_device_arrays(obj) else backend.to_host(X))
    return backend.asarray(out)


class Clusterer(ClusterMixin, BaseEstimator):
    """Reduce the rows (UMAP, PCA, z-score or none), then cluster them, on the CPU or the GPU twin.

    Parameters
    ----------
    reducer : "umap", "pca", "zscore", "none", None, or an object with fit_transform (umap.UMAP, cuml PCA, ...).
    n_components : dimensions to reduce to (for PCA also a share of variance, 0 < n_components < 1).
    clusterer : a registered clusterer name (gpuclust.list_clusterers()), an object with fit_predict, or None to
        reduce only (then use fit_transform).
    n_clusters : k for the clusterers that take one; None takes the number of classes in `y` when fit is given
        labels, "auto" chooses k by the silhouette in UMAP space (the study's label-free proxy) within `k_range`.
    reducer_params, clusterer_params : keyword arguments in the CPU library's names (scikit-learn, umap-learn); the
        GPU twin receives them translated (see docs/twins.md).
    zscore : z-score the rows before reducing; None does so before PCA only (the study's default).
    normalize : after reducing: "none", "l2", "zscore" or "spherical".
    device : "auto" (the GPU twin when CuPy and cuML can run, and for CuPy input), "cpu" or "gpu".
    random_state : the seed of every seeded step.

    Attributes (after fit)
    ----------------------
    labels_ : cluster per row, -1 for noise; numpy for numpy input, CuPy for CuPy input.
    embedding_ : the reduced rows the clusterer saw, in the same array type.
    twins_ : {"reduce": ..., "cluster": ...}: which twin ran each step ("cpu", "gpu", "none", or "object").
    n_clusters_ : clusters found (noise excluded).
    params_ : the clusterer's resolved keyword arguments (when k was chosen: k_auto, k_auto_scores, k_auto_ps,
        k_auto_prediction_strength, k_auto_low_confidence).
    """

    def __init__(self, reducer: Any = "umap", n_components: int | float = 50, clusterer: Any = "kmeans",
                 n_clusters: int | str | None = None, *, reducer_params: dict | None = None,
                 clusterer_params: dict | None = None, zscore: bool | None = None, normalize: str = "none",
                 k_range: tuple[int, int] = (2, 30), device: str = "auto", random_state: int = 0):
        self.reducer = reducer
        self.n_components = n_components
        self.clusterer = clusterer
        self.n_clusters = n_clusters
        self.reducer_params = reducer_params
        self.clusterer_params = clusterer_params
        self.zscore = zscore
        self.normalize = normalize
        self.k_range = k_range
        self.device = device
        self.random_state = random_state

    def fit(self, X, y=None) -> "Clusterer":
        """Reduce and cluster X (n_rows x n_features). `y`, when given, only supplies k = its number of classes for
        a clusterer that takes k and was given none."""
        self.check_settings()
        backend = backend_for(X, self.device)
        Xb = _as_rows(X, backend)
        y = _labels(y, Xb.shape[0])
        Z, reduce_twin = self._reduce(Xb, backend)
        if self.clusterer is None:
            return self._set_fitted(backend, Z, None, {"reduce": reduce_twin}, {}, not is_device_array(X))
        labels, cluster_twin, params = self._cluster(Xb, Z, backend, y)
        return self._set_fitted(backend, Z, labels, {"reduce": reduce_twin, "cluster": cluster_twin}, params,
                                not is_device_array(X))

    def _set_fitted(self, backend: Backend, Z, labels, twins: dict, params: dict, host: bool) -> "Clusterer":
        """The fitted attributes, as numpy (`host`) or in the backend's own array type."""
        out = (lambda A: np.asarray(backend.to_host(A))) if host else (lambda A: A)
        self.embedding_, self.twins_, self.params_ = out(Z), twins, params
        if labels is not None:
            self.labels_ = out(labels)
            self.n_clusters_ = int(len(np.unique(backend.to_host(labels[labels >= 0]))))
        return self

    def fit_predict(self, X, y=None):
        """`fit(X, y)` and return `labels_`."""
        if self.clusterer is None:
            raise UserError("clusterer=None reduces only: use fit_transform(X), or name a clusterer")
        return self.fit(X, y).labels_

    def fit_transform(self, X, y=None):
        """`fit(X, y)` and return `embedding_` (the reduced rows)."""
        return self.fit(X, y).embedding_

    def check_settings(self) -> None:
        """The named steps' settings, checked before any work (one-line UserError): an unknown name, a keyword the
        class does not take, a bad value, k given twice."""
        from .cluster.settings import check_settings as check_cluster
        from .config import ClusterConfig, ReduceConfig
        from .reduce.settings import check_settings as check_reduce

        if self.reducer is None or isinstance(self.reducer, str):
            check_reduce(ReduceConfig(method=self.reducer or "none", dims=self.n_components,
                                      params=dict(self.reducer_params or {}), normalize=self.normalize))
        if isinstance(self.clusterer, str):
            params = dict(self.clusterer_params or {})
            check_cluster(ClusterConfig(method=self.clusterer, k=self.n_clusters, k_range=tuple(self.k_range),
                                        params=params))
            from .cluster import CLUSTERERS

            key = CLUSTERERS[self.clusterer].k_param
            if self.n_clusters is not None and key in params:
                raise UserError(f"{self.clusterer}: k given twice (n_clusters={self.n_clusters} and "
                                f"clusterer_params {key}={params[key]}); give one")

    def _reduce(self, X, backend: Backend):
        from .reduce import reduce

        if self.reducer is None or isinstance(self.reducer, str):
            method = self.reducer or "none"
            return reduce(X, method, self.n_components, dict(self.reducer_params or {}), backend,
                          self.random_state, self.zscore, self.normalize)
        from .reduce import normalize, zscore

        if self.zscore:
            X = zscore(backend.xp, X)
        Z = call_ready(self.reducer, "fit_transform", X, backend)
        return normalize(backend, Z, self.normalize), "object"

    def _cluster(self, X, Z, backend: Backend, y):
        from .cluster import choose_k, cluster

        if not isinstance(self.clusterer, str):
            return call_ready(self.clusterer, "fit_predict", Z, backend).astype(backend.xp.int64), "object", {}
        from .cluster import CLUSTERERS

        params, k, extra = dict(self.clusterer_params or {}), self.n_clusters, {}
        n_classes = None if y is None else int(len(np.unique(y)))
        algo = CLUSTERERS.get(self.clusterer)
        if algo is not None and algo.needs_k(params) and k is None and n_classes is None \
                and algo.k_param not in params:
            raise UserError(f"{self.clusterer} needs n_clusters (a number, or 'auto'), or fit(X, y) with labels to "
                            "take the number of classes from")
        if k == "auto":
            choice = choose_k(Z, self._umap_space(X, Z, backend), self.clusterer, params, backend,
                              self.random_state, tuple(self.k_range))
            k, extra = choice.k, choice.record()
        labels, twin, resolved = cluster(Z, self.clusterer, k, params, backend, self.random_state, n_classes)
        return labels, twin, {**resolved, **extra}

    def _umap_space(self, X, Z, backend: Backend):
        """Where `n_clusters="auto"` scores k: this model's own UMAP output, else the study's UMAP of X."""
        from .reduce import umap

        if self.reducer == "umap":
            return Z
        return umap(X, min(50, X.shape[0] - 2), {}, backend, self.random_state)[0]


def _as_rows(X, backend: Backend):
    """X as a 2-D floating array on the backend's device."""
    xp = backend.xp
    Xb = backend.asarray(X)
    if Xb.ndim != 2:
        raise UserError(f"expected a 2-D array of rows x features, got shape {tuple(Xb.shape)}")
    if Xb.shape[0] < 2:
        raise UserError(f"expected at least 2 rows to cluster, got {Xb.shape[0]}")
    if not xp.issubdtype(Xb.dtype, xp.floating):
        Xb = Xb.astype(xp.float32)
    return Xb


def _labels(y, n_rows: int) -> np.ndarray | None:
    """y on the host (any label type: numbers or names), checked against the rows."""
    if y is None:
        return None
    y = np.asarray(y.get() if is_device_array(y) else y)
    if y.ndim != 1 or y.shape[0] != n_rows:
        raise UserError(f"y: expected one label per row ({n_rows}), got shape {tuple(y.shape)}")
    return y
