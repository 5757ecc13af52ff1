"""AffinityPropagationXP against scikit-learn's AffinityPropagation on real data (digits), numpy and CuPy."""
import logging
import tracemalloc
import warnings

import numpy as np
import pytest
from sklearn.cluster import AffinityPropagation
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import adjusted_rand_score

from gpuclust.cluster.affinity import AffinityPropagationXP

# Few clusters: the median of S on this data is about -1742, so -20000 gives ~9 clusters against ~37.
LOW_PREFERENCE = -20000.0


@pytest.fixture(scope="module")
def digits():
    """The first 600 digits, PCA'd to 10 dims."""
    return PCA(10, random_state=0).fit_transform(load_digits().data)[:600]


@pytest.fixture(scope="module")
def ours(digits):
    """Our fit with sklearn's default preference (the median similarity), damping 0.9."""
    return AffinityPropagationXP(damping=0.9, random_state=0).fit(digits)


def _sklearn(X, **params):
    return AffinityPropagation(damping=0.9, random_state=0, **params).fit(X)


def _check_against(est, ref):
    """Same clustering as sklearn (measured: identical, ARI 1.0, same exemplars); and self-consistent."""
    k, k_ref = len(est.cluster_centers_indices_), len(ref.cluster_centers_indices_)
    assert abs(k - k_ref) <= 1
    assert adjusted_rand_score(ref.labels_, est.labels_) >= 0.99
    assert est.converged_ and 1 <= est.n_iter_ < 200
    assert est.labels_.dtype == np.int64 and est.cluster_centers_indices_.dtype == np.int64
    # Each exemplar carries its own cluster's label, and every label is used.
    np.testing.assert_array_equal(est.labels_[est.cluster_centers_indices_], np.arange(k))
    assert set(est.labels_.tolist()) == set(range(k))


def test_matches_sklearn_with_median_preference(digits, ours):
    ref = _sklearn(digits)
    _check_against(ours, ref)
    assert 20 <= len(ours.cluster_centers_indices_) <= 60  # measured 37 for both


def test_matches_sklearn_with_low_preference(digits, ours):
    est = AffinityPropagationXP(damping=0.9, preference=LOW_PREFERENCE, random_state=0).fit(digits)
    _check_against(est, _sklearn(digits, preference=LOW_PREFERENCE))
    assert len(est.cluster_centers_indices_) < len(ours.cluster_centers_indices_) // 2  # measured 9 vs 37


@pytest.mark.parametrize("params", [{"damping": 0.3}, {"damping": 1.0}, {"max_iter": 0}, {"convergence_iter": 0}])
def test_bad_parameters_raise(digits, params):
    with pytest.raises(ValueError, match=next(iter(params))):
        AffinityPropagationXP(**params).fit(digits)


def test_float64_gives_the_float32_labels(digits, ours):
    est = AffinityPropagationXP(damping=0.9, random_state=0, dtype="float64").fit(digits)
    np.testing.assert_array_equal(est.labels_, ours.labels_)
    np.testing.assert_array_equal(est.cluster_centers_indices_, ours.cluster_centers_indices_)


def test_fit_predict_returns_labels(digits, ours):
    est = AffinityPropagationXP(damping=0.9, random_state=0)
    np.testing.assert_array_equal(est.fit_predict(digits), ours.labels_)
    assert est.get_params()["damping"] == 0.9


def test_no_exemplars_gives_minus_one(caplog):
    # sklearn's own non-convergence case: one iteration at a very low preference finds no exemplar.
    X = np.array([[0.0, 0.0], [1.0, 1.0], [-2.0, -2.0]])
    with caplog.at_level(logging.WARNING, logger="gpuclust.cluster.affinity"):
        est = AffinityPropagationXP(preference=-10, max_iter=1).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = AffinityPropagation(preference=-10, max_iter=1, random_state=0).fit(X)
    np.testing.assert_array_equal(est.labels_, ref.labels_)
    assert est.cluster_centers_indices_.size == 0 and est.cluster_centers_indices_.dtype == np.int64
    assert not est.converged_ and est.n_iter_ == 1
    assert "no exemplars" in caplog.text


@pytest.mark.parametrize("preference,labels", [(None, [0, 0, 0, 0]), (1.0, [0, 1, 2, 3])])
def test_identical_points_like_sklearn(preference, labels):
    est = AffinityPropagationXP(preference=preference).fit(np.zeros((4, 2)))
    np.testing.assert_array_equal(est.labels_, labels)


def test_memory_is_four_square_buffers(digits):
    # S, R, A and one scratch buffer; an extra n x n copy per step would push the peak to 5.
    n = digits.shape[0]
    tracemalloc.start()
    try:
        AffinityPropagationXP(damping=0.9).fit(digits)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4.5 * n * n * 4  # measured 4.08


@pytest.mark.gpu
def test_cupy_matches_numpy(digits, ours):
    import cupy

    est = AffinityPropagationXP(damping=0.9, random_state=0).fit(cupy.asarray(digits))
    assert isinstance(est.labels_, cupy.ndarray) and est.labels_.dtype == cupy.int64
    assert est.converged_
    labels = cupy.asnumpy(est.labels_)
    assert abs(len(est.cluster_centers_indices_) - len(ours.cluster_centers_indices_)) <= 1
    assert adjusted_rand_score(ours.labels_, labels) >= 0.99
