import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_mutual_info_score

from gpuclust.cluster import cluster
from gpuclust.errors import UserError


@pytest.fixture(scope="module")
def blobs():
    from sklearn.datasets import make_blobs

    X, y = make_blobs(n_samples=1500, centers=6, n_features=8, cluster_std=0.6, random_state=1)
    return X.astype(np.float32), y


def test_kmeans_takes_k_from_classes(backend, blobs):
    X, y = blobs
    labels, twin, params = cluster(backend.asarray(X), "kmeans", None, {}, backend, seed=0, n_classes=6)
    assert params["n_clusters"] == 6 and twin == backend.name
    assert adjusted_mutual_info_score(y, backend.to_host(labels)) > 0.98


def test_kmeans_on_real_digits(backend):
    d = load_digits()
    X = PCA(20, random_state=0).fit_transform(d.data).astype(np.float32)
    labels, _, _ = cluster(backend.asarray(X), "kmeans", 10, {"n_init": 5}, backend, seed=0)
    assert 0.6 < adjusted_mutual_info_score(d.target, backend.to_host(labels))  # sklearn: ~0.7


def test_hdbscan_finds_blobs_and_noise(backend, blobs):
    X, y = blobs
    labels, twin, params = cluster(backend.asarray(X), "hdbscan", None, {"min_cluster_size": 25}, backend)
    host = backend.to_host(labels)
    assert len(set(host[host >= 0])) == 6
    assert adjusted_mutual_info_score(y, host) > 0.9 and twin == backend.name


@pytest.mark.parametrize("k,msg", [(0, "between 1"), (10_000, "between 1")])
def test_bad_k(backend, blobs, k, msg):
    with pytest.raises(UserError, match=msg):
        cluster(backend.asarray(blobs[0]), "kmeans", k, {}, backend)


def test_unknown_parameter(backend, blobs):
    with pytest.raises(UserError, match="hdbscan"):
        cluster(backend.asarray(blobs[0]), "hdbscan", None, {"min_clustre_size": 5}, backend)
