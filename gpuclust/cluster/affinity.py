"""Affinity Propagation (Frey & Dueck 2007) written once against an array module: numpy is the CPU twin of
sklearn's AffinityPropagation, CuPy the GPU twin (cuML has none). Only S, R, A and one scratch n x n buffer live."""
from __future__ import annotations

import logging
from types import ModuleType

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin

log = logging.getLogger(__name__)

_DTYPES = ("float32", "float64")


def _array_module(X, xp):
    """The module to compute with: `xp` itself, its name resolved, or inferred from X."""
    if isinstance(xp, ModuleType):
        return xp
    if isinstance(xp, str):
        # A name keeps the estimator clonable: sklearn.base.clone deep-copies parameters,
        # and a module cannot be deep-copied.
        if xp not in ("numpy", "cupy"):
            raise ValueError(f"xp must be numpy, cupy, their name or None, got {xp!r}")
        return __import__(xp)
    if xp is not None:
        raise ValueError(f"xp must be numpy, cupy, their name or None, got {xp!r}")
    try:
        import cupy
    except ImportError:
        return np
    return cupy.get_array_module(X)


def _diag(M):
    """A writable strided view of the diagonal of the C-contiguous square matrix M."""
    return M.reshape(-1)[:: M.shape[0] + 1]


def _similarities(X, xp):
    """S = -||x_i - x_j||^2 in X's dtype, via ||x||^2 - 2 x.y + ||y||^2, clamped <= 0, diagonal 0."""
    sq = xp.sum(X * X, axis=1)
    S = X @ X.T  # the only n x n allocation here; the rest is in place
    S *= 2
    S -= sq[:, None]
    S -= sq[None, :]
    # Cancellation in the expansion can leave tiny positive values; a distance is never negative.
    xp.minimum(S, 0, out=S)
    _diag(S)[...] = 0
    return S


def _median(S, work, xp):
    """Median of all entries of S (diagonal included, as sklearn), partitioning a copy in `work`."""
    # xp.median(S) would allocate its own n x n copy; overwriting the scratch buffer does not.
    xp.copyto(work, S)
    return float(xp.median(work, overwrite_input=True))


def _equal_similarities(S, preference, xp) -> bool:
    """sklearn's degenerate case: all off-diagonal similarities equal and all preferences equal."""
    if not bool(xp.all(preference == preference.reshape(-1)[0])):
        return False
    # Fill the diagonal with an off-diagonal entry so that min == max tests only the off-diagonal
    # without a mask; the caller overwrites the diagonal with the preference next.
    _diag(S)[...] = S[0, 1]
    return bool(xp.max(S) == xp.min(S))


def _add_noise(S, noise, work, random_state, xp):
    """S += (eps*S + tiny*100) * N(0, 1), sklearn's tie-breaking noise, built in two scratch buffers."""
    finfo = np.finfo(S.dtype)
    rng = xp.random.default_rng(random_state)
    rng.standard_normal(size=noise.shape, dtype=noise.dtype, out=noise)
    xp.multiply(S, finfo.eps, out=work)
    work += finfo.tiny * 100
    noise *= work
    S += noise


def _responsibilities(S, A, R, tmp, damping, ind, xp):
    """R <- damping*R + (1-damping)*(S - max_{k' != k}(A + S)), sklearn's update, in place."""
    xp.add(A, S, out=tmp)
    best = xp.argmax(tmp, axis=1)
    first = tmp[ind, best]
    tmp[ind, best] = -xp.inf
    second = xp.max(tmp, axis=1)
    xp.subtract(S, first[:, None], out=tmp)
    tmp[ind, best] = S[ind, best] - second
    tmp *= 1 - damping
    R *= damping
    R += tmp


def _availabilities(A, R, tmp, damping, xp):
    """A <- damping*A + (1-damping)*Anew, sklearn's update, in place (tmp holds -Anew)."""
    xp.maximum(R, 0, out=tmp)
    tmp_diag = _diag(tmp)
    tmp_diag[...] = _diag(R)
    tmp -= xp.sum(tmp, axis=0)
    self_avail = tmp_diag.copy()  # the diagonal is exempt from the clip below
    xp.maximum(tmp, 0, out=tmp)
    tmp_diag[...] = self_avail
    tmp *= 1 - damping
    A *= damping
    A -= tmp


def _iterate(S, damping, max_iter, convergence_iter, xp):
    """Message passing until the exemplar set is stable; returns (exemplar mask, n_iter, converged)."""
    n = S.shape[0]
    A = xp.zeros_like(S)
    R = xp.zeros_like(S)
    tmp = xp.empty_like(S)
    ind = xp.arange(n)
    history = xp.zeros((n, convergence_iter), dtype=bool)
    A_diag, R_diag = _diag(A), _diag(R)
    for it in range(max_iter):
        _responsibilities(S, A, R, tmp, damping, ind, xp)
        _availabilities(A, R, tmp, damping, xp)
        E = (A_diag + R_diag) > 0
        history[:, it % convergence_iter] = E
        if it >= convergence_iter:
            # Converged when every point was an exemplar in all or none of the last
            # convergence_iter iterations and there is at least one exemplar (sklearn's test).
            se = xp.sum(history, axis=1)
            stable = xp.all((se == 0) | (se == convergence_iter)) & xp.any(E)
            if bool(stable):  # one scalar to the host per iteration
                return E, it + 1, True
    return E, max_iter, False


def _assign(S, E, xp):
    """sklearn's labelling: nearest exemplar, then each cluster's exemplar re-chosen as its medoid."""
    exemplars = xp.flatnonzero(E)
    k = exemplars.size
    c = xp.argmax(S[:, exemplars], axis=1)
    c[exemplars] = xp.arange(k)
    # sklearn loops over clusters and takes argmax_j sum_{i in k} S[i, j] over j in k. The same
    # quantity for every j at once is sum_i S[i, j] [c_i == c_j]: one pass, no Python loop and no
    # host sync per cluster. Its n x n product and mask fit in the room A, R and tmp have left.
    score = xp.sum(S * (c[:, None] == c[None, :]), axis=0)
    # The best j per cluster: sort by (cluster, -score), both sorts stable so ties go to the
    # lowest index as argmax does, and take the first of each cluster's run.
    order = xp.argsort(-score, kind="stable")
    order = order[xp.argsort(c[order], kind="stable")]
    exemplars = order[xp.searchsorted(c[order], xp.arange(k))]
    c = xp.argmax(S[:, exemplars], axis=1)
    c[exemplars] = xp.arange(k)
    labels = exemplars[c]
    centers = xp.unique(labels)
    return centers.astype(xp.int64), xp.searchsorted(centers, labels).astype(xp.int64)


class AffinityPropagationXP(ClusterMixin, BaseEstimator):
    """Affinity Propagation on euclidean similarities, numpy or CuPy; mirrors sklearn's AffinityPropagation.

    `preference` is a float or an array of shape (n_samples,); `xp` is numpy, cupy, their name, or None to follow X.
    """

    def __init__(
        self, damping=0.5, max_iter=200, convergence_iter=15, preference=None, random_state=0, xp=None, dtype="float32"
    ):
        self.damping = damping
        self.max_iter = max_iter
        self.convergence_iter = convergence_iter
        self.preference = preference
        self.random_state = random_state
        self.xp = xp
        self.dtype = dtype

    def _validate(self):
        """Raise ValueError on out-of-range parameters."""
        if not 0.5 <= self.damping < 1:
            raise ValueError(f"damping must be in [0.5, 1), got {self.damping!r}")
        if int(self.max_iter) != self.max_iter or self.max_iter < 1:
            raise ValueError(f"max_iter must be an integer >= 1, got {self.max_iter!r}")
        if int(self.convergence_iter) != self.convergence_iter or self.convergence_iter < 1:
            raise ValueError(f"convergence_iter must be an integer >= 1, got {self.convergence_iter!r}")
        if str(np.dtype(self.dtype)) not in _DTYPES:
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype!r}")

    def _input(self, X, xp):
        """X as a C-contiguous 2-D xp array of self.dtype, checked finite and non-empty."""
        X = xp.ascontiguousarray(xp.asarray(X, dtype=self.dtype))
        if X.ndim != 2 or X.shape[0] < 1:
            raise ValueError(f"X must be 2-D with at least one row, got shape {X.shape}")
        if not bool(xp.all(xp.isfinite(X))):
            raise ValueError("X contains NaN or infinity")
        return X

    def _preference(self, S, work, xp):
        """The preference as an xp array (scalar or per point), defaulting to the median of S."""
        n = S.shape[0]
        if self.preference is None:
            return xp.asarray(_median(S, work, xp), dtype=S.dtype)
        p = xp.asarray(self.preference, dtype=S.dtype)
        if p.shape not in ((), (n,)):
            raise ValueError(f"preference must be a float or have shape ({n},), got shape {p.shape}")
        return p

    def _set_result(self, centers, labels, n_iter, converged):
        """Store the fitted attributes."""
        self.cluster_centers_indices_ = centers
        self.labels_ = labels
        self.n_iter_ = int(n_iter)
        self.converged_ = bool(converged)
        return self

    def fit(self, X, y=None):
        """Cluster the rows of X (n_samples, n_features); `y` is ignored."""
        self._validate()
        xp = _array_module(X, self.xp)
        X = self._input(X, xp)
        n = X.shape[0]
        S = _similarities(X, xp)
        tmp = xp.empty_like(S)  # the one scratch buffer, reused for median and noise
        preference = self._preference(S, tmp, xp)
        if n == 1 or _equal_similarities(S, preference, xp):
            return self._degenerate(S, preference, xp)
        _diag(S)[...] = preference
        # The noise needs a second scratch buffer; both are freed before _iterate allocates A, R and
        # tmp, so at most four n x n arrays are ever alive.
        work = xp.empty_like(S)
        _add_noise(S, tmp, work, self.random_state, xp)
        del tmp, work
        E, n_iter, converged = _iterate(S, float(self.damping), int(self.max_iter), int(self.convergence_iter), xp)
        if not bool(xp.any(E)):
            log.warning("Affinity propagation did not converge and found no exemplars; all labels are -1")
            return self._set_result(xp.empty(0, dtype=xp.int64), xp.full(n, -1, dtype=xp.int64), n_iter, converged)
        if not converged:
            log.warning("Affinity propagation did not converge in %d iterations; clusters may be degenerate", n_iter)
        centers, labels = _assign(S, E, xp)
        return self._set_result(centers, labels, n_iter, converged)

    def _degenerate(self, S, preference, xp):
        """sklearn's answer when all similarities and preferences are equal: one cluster or n."""
        n = S.shape[0]
        log.warning("All samples have mutually equal similarities; returning arbitrary cluster center(s)")
        if float(preference.reshape(-1)[0]) > float(S[0, n - 1]):
            ids = xp.arange(n, dtype=xp.int64)
            return self._set_result(ids, ids.copy(), 0, True)
        return self._set_result(xp.zeros(1, dtype=xp.int64), xp.zeros(n, dtype=xp.int64), 0, True)

    def fit_predict(self, X, y=None):
        """Fit and return labels_ (an xp int64 array, -1 everywhere if no exemplar was found)."""
        return self.fit(X).labels_
