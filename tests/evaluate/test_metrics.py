"""Metrics against scikit-learn on real labels, on every backend the machine has (the GPU twin uses CuPy)."""
import numpy as np
import pytest
from sklearn import metrics as skm

from gpuclust.data import load_dataset
from gpuclust.evaluate import ami, ari, evaluate, nmi, silhouette


@pytest.fixture(scope="module")
def truth():
    return load_dataset("fashion-mnist").labels  # 10,000 real labels


def _predictions(truth):
    rng = np.random.default_rng(0)
    n = len(truth)
    noisy = np.where(rng.random(n) < 0.3, rng.integers(0, 10, n), truth)
    merged = np.where(truth >= 7, 7, truth)  # three classes merged
    with_noise = np.where(rng.random(n) < 0.15, -1, (truth * 3 + rng.integers(0, 3, n)))  # split, plus noise
    return {"noisy": noisy, "merged": merged, "split_with_noise": with_noise, "random": rng.integers(0, 25, n),
            "one_cluster": np.zeros(n, int), "perfect": truth.copy()}


@pytest.mark.parametrize("case", ["noisy", "merged", "split_with_noise", "random", "one_cluster", "perfect"])
def test_label_metrics_match_sklearn(backend, truth, case):
    pred = _predictions(truth)[case]
    t, p = backend.asarray(truth), backend.asarray(pred)
    assert ami(backend, t, p) == pytest.approx(skm.adjusted_mutual_info_score(truth, pred), rel=1e-5, abs=1e-9)
    assert ari(backend, t, p) == pytest.approx(skm.adjusted_rand_score(truth, pred), rel=1e-5, abs=1e-9)
    assert nmi(backend, t, p) == pytest.approx(skm.normalized_mutual_info_score(truth, pred), rel=1e-5, abs=1e-9)


def test_degenerate_labelings_follow_sklearn(backend):
    for a, b in [([0, 0, 0], [1, 1, 1]), ([0, 1, 2], [0, 1, 2]), ([0, 1, 2, 3], [0, 0, 0, 0]), ([5], [3])]:
        A, B = backend.asarray(np.array(a)), backend.asarray(np.array(b))
        assert ami(backend, A, B) == pytest.approx(skm.adjusted_mutual_info_score(a, b), abs=1e-9)
        assert ari(backend, A, B) == pytest.approx(skm.adjusted_rand_score(a, b), abs=1e-9)
        assert nmi(backend, A, B) == pytest.approx(skm.normalized_mutual_info_score(a, b), abs=1e-9)


def test_ami_chunks_the_expected_mutual_information(backend, truth, monkeypatch):
    import gpuclust.evaluate.metrics as M

    pred = _predictions(truth)["split_with_noise"]
    whole = ami(backend, backend.asarray(truth), backend.asarray(pred))
    monkeypatch.setattr(M, "EMI_CHUNK", 997)  # many uneven chunks must give the same sum
    assert ami(backend, backend.asarray(truth), backend.asarray(pred)) == pytest.approx(whole, rel=1e-12)


@pytest.fixture(scope="module")
def digits_space():
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA

    d = load_digits()
    return PCA(10, random_state=0).fit_transform(d.data).astype(np.float32), d.target


def test_silhouette_matches_sklearn_and_ignores_noise(backend, digits_space):
    X, y = digits_space
    s, n = silhouette(backend, backend.asarray(X), backend.asarray(y))
    assert n == len(y) and s == pytest.approx(skm.silhouette_score(X, y), rel=1e-5)
    y_noise = np.where(np.arange(len(y)) % 5 == 0, -1, y)
    s2, n2 = silhouette(backend, backend.asarray(X), backend.asarray(y_noise))
    keep = y_noise >= 0
    assert n2 == keep.sum() and s2 == pytest.approx(skm.silhouette_score(X[keep], y_noise[keep]), rel=1e-5)


def test_silhouette_undefined_cases(backend, digits_space):
    X, _ = digits_space
    assert silhouette(backend, backend.asarray(X), backend.asarray(np.zeros(len(X), int)))[0] is None
    assert silhouette(backend, backend.asarray(X), backend.asarray(-np.ones(len(X), int)))[0] is None


def test_silhouette_sample_beyond_exact_limit(backend, digits_space, monkeypatch):
    import gpuclust.evaluate as E

    X, y = digits_space
    monkeypatch.setitem(E.SILHOUETTE_MAX_EXACT, backend.name, 800)
    s, n = silhouette(backend, backend.asarray(X), backend.asarray(y), seed=3)
    assert n == 800 and s == pytest.approx(skm.silhouette_score(X, y), abs=0.03)


def test_evaluate_reports_noise_and_clusters(backend, digits_space):
    X, y = digits_space
    pred = np.where(np.arange(len(y)) % 10 == 0, -1, y)
    m = evaluate(backend, backend.asarray(X), backend.asarray(pred), backend.asarray(y))
    assert m["n_clusters"] == 10 and m["noise_fraction"] == pytest.approx(0.1, abs=0.001)
    assert m["ami"] == pytest.approx(skm.adjusted_mutual_info_score(y, pred), rel=1e-5)
    assert "silhouette_umap" not in m  # no UMAP space given
