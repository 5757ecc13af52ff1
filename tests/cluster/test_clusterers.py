"""Every clusterer of the study on real embeddings: EfficientNet-Lite0 + UMAP-50 of 2,000 Fashion-MNIST test images.
Floors sit a little under what each reached when measured (in the comments); a broken clusterer lands far lower."""
import numpy as np
import pytest
import scipy.special

from gpuclust.backend import Backend, resolve_backend
from gpuclust.cluster import cluster, threshold_space
from gpuclust.config import DataConfig, EncodeConfig, RunConfig
from gpuclust.errors import UserError
from gpuclust.evaluate import ami
from helpers import store_lock


@pytest.fixture(scope="module")
def space(cache_dir):
    from gpuclust.data import load_dataset
    from gpuclust.pipeline import encode_stage, reduce_stage

    be = resolve_backend("cpu")
    cfg = RunConfig(data=DataConfig("fashion-mnist", limit=2000), encode=EncodeConfig(cache_dir=str(cache_dir)),
                    device="cpu")
    ds = load_dataset("fashion-mnist", limit=2000)
    with store_lock(cache_dir):
        emb, _ = encode_stage(ds, cfg, be, progress=False)
        Z, _ = reduce_stage(emb.X, cfg, be)
    return Z, ds.labels[emb.rows]


@pytest.mark.parametrize("method,k,params,floor", [
    ("kmeans", 10, {}, 0.64),                                          # measured 0.687
    ("faiss_kmeans", 10, {}, 0.62),                                    # 0.671
    ("agglomerative", 10, {}, 0.64),                                   # ward 0.683
    ("agglomerative", 10, {"linkage": "average"}, 0.64),               # 0.689
    ("agglomerative", 10, {"linkage": "single"}, 0.58),                # 0.644
    ("agglomerative", None, {"distance_threshold": 2.0}, 0.60),        # 14 clusters, 0.664
    ("affinity", None, {"damping": 0.9}, 0.62),                        # 12 clusters, 0.674
    ("spectral", 10, {}, 0.64),                                        # 0.687
    ("dbscan", None, {"eps": 0.3, "min_samples": 10}, 0.57),           # 12 clusters, 0.625
    ("hdbscan", None, {"min_cluster_size": 30}, 0.55),                 # 0.599
    ("gaussian_mixture", 10, {}, 0.62),                                # full covariance 0.668
    ("gaussian_mixture", 10, {"covariance_type": "diag"}, 0.62),       # 0.670
])
def test_clusterer_quality(space, method, k, params, floor):
    Z, y = space
    be = resolve_backend("cpu")
    labels, twin, resolved = cluster(Z, method, k, params, be, seed=0, n_classes=10)
    assert twin == "cpu" and labels.shape == y.shape
    assert ami(be, y, labels) >= floor


@pytest.mark.parametrize("k", [10, 60])
def test_cosine_single_linkage_is_euclidean_single_linkage_of_unit_rows(space, k):
    """The stage sends cosine single linkage as euclidean on unit rows (memory linear in the rows): the partition
    must be scikit-learn's own cosine single linkage, exactly (up to renaming the clusters)."""
    from sklearn.cluster import AgglomerativeClustering

    Z, y = space
    be = resolve_backend("cpu")
    labels, twin, resolved = cluster(Z, "agglomerative", k, {"linkage": "single", "metric": "cosine"}, be)
    direct = AgglomerativeClustering(k, linkage="single", metric="cosine").fit_predict(Z)
    pairs = set(zip(labels.tolist(), direct.tolist()))
    assert len(pairs) == len(set(labels.tolist())) == len(set(direct.tolist())) == k  # one-to-one
    assert resolved["metric"] == "euclidean" and resolved["rows_l2_normalised"] is True


def test_unit_rows_leave_a_zero_row_at_zero():
    from gpuclust.cluster import unit_rows

    be = resolve_backend("cpu")
    U = unit_rows(be, np.array([[3.0, 4.0], [0.0, 0.0], [-2.0, 0.0]]))
    assert U.tolist() == [[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]]


def test_threshold_normalisation_carries_across_scales(space):
    # The same threshold gives the same clustering when the space is scaled or gains dimensions.
    Z, y = space
    be = resolve_backend("cpu")
    a, _, _ = cluster(Z, "agglomerative", None, {"distance_threshold": 2.0}, be)
    b, _, _ = cluster(Z * 37.0 + 5.0, "agglomerative", None, {"distance_threshold": 2.0}, be)
    assert ami(be, a, b) > 0.999
    T = threshold_space(be, Z)
    d = Z.shape[1]
    assert np.abs(T.mean(axis=0)).max() < 1e-5  # centred, mean per-dimension spread 1/sqrt(d)
    assert float(T.std(axis=0).mean()) == pytest.approx(1 / np.sqrt(d), rel=1e-4)


def test_gpu_twin_gaps_fall_back_to_cpu(caplog):
    fake_gpu = Backend("gpu", np, scipy.special)  # numpy arrays: runs anywhere, exercises the decision only
    X = np.random.default_rng(0).normal(size=(80, 4)).astype(np.float32)
    for method, params in [("agglomerative", {"linkage": "ward"}), ("agglomerative", {"distance_threshold": 1.0}),
                           ("hdbscan", {"metric": "l1"}), ("dbscan", {"metric": "chebyshev"}),
                           ("spectral", {"assign_labels": "cluster_qr"})]:
        k = None if "distance_threshold" in params or method in ("hdbscan", "dbscan") else 3
        labels, twin, _ = cluster(X, method, k, params, fake_gpu)
        assert twin == "cpu" and labels.shape == (80,), method
    assert caplog.text.count("runs on the CPU twin") == 5


@pytest.mark.parametrize("method,k,params,msg", [
    ("kmeans", -3, {}, "--k -3"),
    ("kmeans", 5000, {}, "--k 5000"),
    ("affinity", None, {"damping": 0.3}, "damping=0.3"),
    ("affinity", None, {"damping": 1.0}, "damping=1.0"),
    ("agglomerative", 3, {"linkage": "centroid"}, "linkage=centroid"),
    ("agglomerative", 3, {"linkage": "ward", "metric": "cosine"}, "ward linkage needs"),
    ("dbscan", None, {"eps": 0}, "eps=0"),
    ("hdbscan", None, {"min_cluster_size": 1}, "min_cluster_size=1"),
    ("spectral", 3, {"assign_labels": "nope"}, "assign_labels=nope"),
    ("kmeans", 3, {"no_such": 1}, "kmeans"),
])
def test_bad_parameters(method, k, params, msg):
    X = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    with pytest.raises(UserError, match=msg.replace("[", r"\[")):
        cluster(X, method, k, params, resolve_backend("cpu"))


def test_spectral_on_a_graph_in_pieces_says_what_to_change(caplog, recwarn):
    # Twelve tight blobs far apart: the 10-neighbour graph has at least twelve pieces, which scikit-learn only warns
    # about (a raw UserWarning); the run's log says what it means and which parameter joins the pieces.
    from sklearn.datasets import make_blobs

    X, _ = make_blobs(n_samples=240, centers=12, n_features=5, cluster_std=0.05, center_box=(-100, 100),
                      random_state=0)
    be = resolve_backend("cpu")
    cluster(X.astype(np.float32), "spectral", 6, {}, be, seed=0)
    assert "10-neighbour graph of the rows falls apart" in caplog.text
    assert "--cluster-param n_neighbors=30" in caplog.text
    assert not [w for w in recwarn if "not fully connected" in str(w.message)]
    caplog.clear()
    cluster(X.astype(np.float32), "spectral", 6, {"n_neighbors": 200}, be, seed=0)
    assert "falls apart" not in caplog.text  # 200 of 240 rows: any two rows share neighbours


def test_other_clusterer_warnings_still_reach_the_user():
    X = np.zeros((30, 2), np.float32)  # every row the same: scikit-learn's KMeans warns it found fewer clusters
    with pytest.warns(Warning, match="distinct clusters"):
        cluster(X, "kmeans", 3, {}, resolve_backend("cpu"), seed=0)
