"""Metrics against scikit-learn on real labels, on every backend the machine has (the GPU twin uses CuPy)."""
import numpy as np
import pytest
from sklearn import metrics as skm

from gpuclust.data import load_dataset
from gpuclust.evaluate import ami, ari, evaluate, nmi, silhouette, silhouette_samples


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


@pytest.mark.parametrize("metric,sk_metric", [("euclidean", "euclidean"), ("l1", "manhattan"),
                                               ("chebyshev", "chebyshev"), ("cosine", "cosine")])
def test_silhouette_matches_sklearn_every_metric(backend, digits_space, metric, sk_metric):
    X, y = digits_space
    s = silhouette(backend, backend.asarray(X), backend.asarray(y), metric)
    assert s["exact"] and s["rows"] == len(y)
    assert s["value"] == pytest.approx(skm.silhouette_score(X, y, metric=sk_metric), rel=1e-5)


def test_silhouette_ignores_noise_and_scores_singletons_zero(backend, digits_space):
    X, y = digits_space
    y_noise = np.where(np.arange(len(y)) % 5 == 0, -1, y)
    y_noise[1] = 42  # a singleton cluster
    s = silhouette(backend, backend.asarray(X), backend.asarray(y_noise))
    keep = y_noise >= 0
    assert s["rows"] == keep.sum()
    assert s["value"] == pytest.approx(skm.silhouette_score(X[keep], y_noise[keep]), rel=1e-5)


def test_silhouette_undefined_cases(backend, digits_space):
    X, _ = digits_space
    assert silhouette(backend, backend.asarray(X), backend.asarray(np.zeros(len(X), int)))["value"] is None
    assert silhouette(backend, backend.asarray(X), backend.asarray(-np.ones(len(X), int)))["value"] is None


def test_silhouette_sample_beyond_exact_limit_has_a_confidence_interval(backend, digits_space, monkeypatch):
    import gpuclust.evaluate as E

    X, y = digits_space
    exact = skm.silhouette_score(X, y)
    monkeypatch.setitem(E.SILHOUETTE_MAX_EXACT, backend.name, 1000)
    monkeypatch.setattr(E, "SILHOUETTE_SAMPLE", 600)
    hits = 0
    for seed in range(10):
        s = silhouette(backend, backend.asarray(X), backend.asarray(y), seed=seed)
        assert s["rows"] == 600 and not s["exact"] and 0 < s["ci95"] < 0.05
        hits += abs(s["value"] - exact) <= s["ci95"]
    assert hits >= 8  # a 95% interval should cover the exact value for nearly every seed


def test_silhouette_samples_are_sklearns(backend, digits_space):
    X, y = digits_space
    ours = backend.to_host(silhouette_samples(backend, backend.asarray(X), backend.asarray(y), "euclidean"))
    # sklearn computes float32 input in float32; ours in float64: agreement to float32 precision
    np.testing.assert_allclose(ours, skm.silhouette_samples(X, y), rtol=1e-5, atol=1e-6)


def test_more_label_metrics_and_dispersion_match_sklearn(backend, digits_space, truth):
    from gpuclust.evaluate.metrics import calinski_harabasz, davies_bouldin, fowlkes_mallows, homogeneity_completeness

    pred = _predictions(truth)["noisy"]
    t, p = backend.asarray(truth), backend.asarray(pred)
    np.testing.assert_allclose(homogeneity_completeness(backend, t, p),
                               skm.homogeneity_completeness_v_measure(truth, pred), rtol=1e-7)
    assert fowlkes_mallows(backend, t, p) == pytest.approx(skm.fowlkes_mallows_score(truth, pred), rel=1e-7)
    X, y = digits_space
    yp = np.where(np.arange(len(y)) % 4 == 0, (y + 1) % 10, y)
    Xd, yd = backend.asarray(X), backend.asarray(yp)
    assert calinski_harabasz(backend, Xd, yd) == pytest.approx(skm.calinski_harabasz_score(X, yp), rel=1e-6)
    assert davies_bouldin(backend, Xd, yd) == pytest.approx(skm.davies_bouldin_score(X, yp), rel=1e-6)


def test_evaluate_reports_noise_and_clusters(backend, digits_space):
    X, y = digits_space
    pred = np.where(np.arange(len(y)) % 10 == 0, -1, y)
    m = evaluate(backend, backend.asarray(X), backend.asarray(pred), backend.asarray(y),
                 silhouette_metrics=("euclidean", "cosine"))
    assert m["n_clusters"] == 10 and m["noise_fraction"] == pytest.approx(0.1, abs=0.001)
    assert m["ami"] == pytest.approx(skm.adjusted_mutual_info_score(y, pred), rel=1e-5)
    keep = pred >= 0
    assert m["ami_clustered"] == pytest.approx(skm.adjusted_mutual_info_score(y[keep], pred[keep]), rel=1e-5)
    assert m["silhouette_cosine"] == pytest.approx(skm.silhouette_score(X[keep], pred[keep], metric="cosine"),
                                                   rel=1e-5)
    assert m["calinski_harabasz"] == pytest.approx(skm.calinski_harabasz_score(X[keep], pred[keep]), rel=1e-6)
    assert "silhouette_umap" not in m  # no UMAP space given
    # over every row, noise scoring 0: the clustered rows' silhouette times their share
    assert m["silhouette_all"] == pytest.approx(skm.silhouette_score(X[keep], pred[keep]) * keep.mean(), rel=1e-5)
    assert "silhouette_umap_all" not in m


@pytest.mark.parametrize("metric", ["l1", "chebyshev"])
def test_cpu_twin_takes_l1_and_chebyshev_from_compiled_pairwise_code(digits_space, metric, monkeypatch):
    """The (chunk, n, d) broadcast is memory-bound on a CPU: the CPU twin asks scikit-learn's pairwise_distances
    (scipy's compiled loops), in (chunk, n) blocks, and gets scikit-learn's silhouette."""
    import sklearn.metrics

    from gpuclust.backend import resolve_backend
    import importlib

    sil_module = importlib.import_module("gpuclust.evaluate.silhouette")

    X, y = digits_space
    want = skm.silhouette_score(X, y, metric={"l1": "manhattan"}.get(metric, metric))
    calls = []
    real = sklearn.metrics.pairwise_distances
    monkeypatch.setattr(sklearn.metrics, "pairwise_distances",
                        lambda A, B, metric, n_jobs: calls.append((A.shape, B.shape, metric)) or real(A, B, metric))
    monkeypatch.setitem(sil_module.BLOCK_ELEMENTS, "cpu", 500 * 1000)  # several blocks of rows
    s = silhouette(resolve_backend("cpu"), X, y, metric)
    assert s["value"] == pytest.approx(want, rel=1e-6)
    assert len(calls) > 1 and all(b == (len(X), X.shape[1]) and a[0] <= 500 for a, b, _ in calls)
