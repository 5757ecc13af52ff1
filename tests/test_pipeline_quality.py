"""Real data through the whole pipeline on the CPU twin: quality floors a broken stage would miss, and the run
directory a user reads. Fashion-MNIST test split, first 2,000 images (all 10 classes)."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from gpuclust.config import ClusterConfig, DataConfig, EncodeConfig, ReduceConfig, RunConfig
from gpuclust.pipeline import run_pipeline
from helpers import store_lock

N = 2000
# Measured on this pipeline (2,000 images, seed 0): EfficientNet-Lite0 0.687, pixels 0.604, MobileNetV2 0.664.
AMI_FLOOR_EFFNET = 0.64
AMI_FLOOR_PIXELS = 0.55


def _cfg(tmp_path, cache_dir, encoder="efficientnet_lite0", cluster="kmeans", params=None, name="run"):
    return RunConfig(
        data=DataConfig("fashion-mnist", limit=N),
        encode=EncodeConfig(spec=encoder, cache_dir=str(cache_dir)),
        reduce=ReduceConfig("umap", 50),
        cluster=ClusterConfig(cluster, params=params or {}),
        device="cpu",
        output=str(tmp_path / name),
    )


@pytest.fixture(scope="module")
def effnet_run(tmp_path_factory, cache_dir):
    with store_lock(cache_dir):
        return run_pipeline(_cfg(tmp_path_factory.mktemp("eff"), cache_dir), progress=False)


@pytest.fixture(scope="module")
def pixels_run(tmp_path_factory, cache_dir):
    with store_lock(cache_dir):
        return run_pipeline(_cfg(tmp_path_factory.mktemp("pix"), cache_dir, encoder="pixels"), progress=False)


def test_effnet_umap_kmeans_reaches_measured_ami(effnet_run):
    m = effnet_run.metrics
    assert m["ami"] >= AMI_FLOOR_EFFNET, m
    assert m["n_clusters"] == 10 and m["n_rows"] == N and m["noise_fraction"] == 0.0
    assert 0.0 < m["silhouette_umap"] <= 1.0
    assert effnet_run.twins == {"encode": "cpu", "reduce": "cpu", "cluster": "cpu", "evaluate": "cpu", "map": "cpu"}


def test_encoder_beats_pixels(effnet_run, pixels_run):
    assert pixels_run.metrics["ami"] >= AMI_FLOOR_PIXELS, pixels_run.metrics
    assert effnet_run.metrics["ami"] > pixels_run.metrics["ami"] + 0.03


def test_run_directory(effnet_run):
    out = effnet_run.output
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("ami", "ari", "nmi", "silhouette", "silhouette_umap", "n_clusters", "noise_fraction"):
        assert key in metrics
    config = json.loads((out / "config.json").read_text())
    assert config["encode"]["spec"] == "efficientnet_lite0" and config["reduce"]["dims"] == 50
    assert config["device"]["backend"] == "cpu" and "torch" in config["versions"]
    assert config["device"]["memory_bytes"] > 2**30 and config["device"]["cpu_count"] >= 1 and config["device"]["cpu"]
    timings = json.loads((out / "timings.json").read_text())
    for stage in ("data", "encode", "reduce", "cluster", "evaluate", "report", "total"):
        assert timings[stage] >= 0
    assert 100e6 < timings["peak_host_rss_bytes"] < 24e9  # torch alone is a few hundred MB
    table = pq.read_table(out / "labels.parquet").to_pandas()
    assert list(table.columns) == ["row", "path", "label_true", "class_true", "label_pred"]
    assert len(table) == N and table["row"].is_unique
    from gpuclust.data import load_dataset

    truth = load_dataset("fashion-mnist", limit=N).labels
    np.testing.assert_array_equal(table["label_true"].to_numpy(), truth[table["row"].to_numpy()])
    from gpuclust.data.packaged import FASHION_MNIST_CLASSES

    assert list(table["class_true"]) == [FASHION_MNIST_CLASSES[t] for t in table["label_true"]]
    page = (out / "report.html").read_text()
    for png in ("map.png", "contingency.png", "sizes.png"):
        assert f'src="{png}"' in page and (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"{metrics['ami']:.4f}" in page
    from sklearn.metrics import adjusted_mutual_info_score

    # The labels file reproduces the reported AMI (sklearn's own implementation).
    sk_ami = adjusted_mutual_info_score(table["label_true"], table["label_pred"])
    assert sk_ami == pytest.approx(metrics["ami"], abs=1e-9)


def test_second_run_reuses_the_store(effnet_run, tmp_path, cache_dir, monkeypatch):
    assert effnet_run.timings["rows_encoded"] + effnet_run.timings["rows_reused"] == N
    import gpuclust.reduce

    def no_refit(*a, **k):
        raise AssertionError("UMAP was fitted again")

    monkeypatch.setattr(gpuclust.reduce, "umap", no_refit)  # the stored UMAP space must be reused
    again = run_pipeline(_cfg(tmp_path, cache_dir, cluster="kmeans"), progress=False)
    assert again.timings["rows_encoded"] == 0 and again.timings["rows_reused"] == N
    assert again.metrics["ami"] == pytest.approx(effnet_run.metrics["ami"], abs=1e-12)  # same seed, same numbers


def test_a_space_stored_under_other_umap_defaults_is_fitted_again(effnet_run, tmp_path, cache_dir, monkeypatch):
    """UMAP's defaults are part of a stored space's key (spaces from before the 200-epoch default are not reused),
    and config.json records them so that a run's own space is found again."""
    import gpuclust.reduce
    from gpuclust.runinfo import read_run, stored_space

    assert effnet_run.config["resolved"]["umap_defaults"] == gpuclust.reduce.UMAP_DEFAULTS_RULE
    assert "n_epochs=200" in gpuclust.reduce.UMAP_DEFAULTS_RULE
    fits = []
    real = gpuclust.reduce.umap
    monkeypatch.setattr(gpuclust.reduce, "umap", lambda *a, **k: fits.append(1) or real(*a, **k))
    monkeypatch.setattr(gpuclust.reduce, "UMAP_DEFAULTS_RULE", "n_epochs=None (other defaults)")
    again = run_pipeline(_cfg(tmp_path, cache_dir, cluster="kmeans"), progress=False)
    assert fits == [1] and again.timings["rows_reused"] == N
    out = again.save(tmp_path / "run")
    assert read_run(out).config["resolved"]["umap_defaults"] == "n_epochs=None (other defaults)"
    np.testing.assert_array_equal(stored_space(read_run(out)), np.asarray(again.embedding))
    # A run made before the rule existed (no umap_defaults in config.json) finds the space stored without it.
    from gpuclust.pipeline import space_key
    from gpuclust.store import ReductionCache

    doc = json.loads((out / "config.json").read_text())
    del doc["resolved"]["umap_defaults"]
    (out / "config.json").write_text(json.dumps(doc))
    old_key = {k: v for k, v in space_key(read_run(out).cfg, False).items() if k != "umap_defaults"}
    old_space = np.asarray(again.embedding)[:, ::-1].copy()
    ReductionCache(doc["resolved"]["store"]).put({**old_key, "backend": "cpu"}, old_space, {"twin": "cpu"})
    np.testing.assert_array_equal(stored_space(read_run(out)), old_space)


def test_hdbscan_on_effnet_embeddings(tmp_path, cache_dir, effnet_run):
    r = run_pipeline(_cfg(tmp_path, cache_dir, cluster="hdbscan", params={"min_cluster_size": 30}), progress=False)
    m = r.metrics
    assert m["n_clusters"] >= 4 and 0.0 <= m["noise_fraction"] < 0.5
    # Noise is kept as a cluster of its own for AMI, as in the study.
    assert m["ami"] >= 0.45, m


def test_report_map_uses_the_two_principal_axes():
    """The map's projection matches the top two principal axes of a full SVD (up to sign) on a wide space."""
    from gpuclust.report.html import project_2d

    rng = np.random.default_rng(0)
    Z = rng.normal(size=(1500, 600)).astype(np.float32) @ np.diag(np.r_[6.0, 3.0, np.ones(598)]).astype(np.float32)
    P = project_2d(Z)
    Zc = Z - Z.mean(axis=0)
    _, _, vt = np.linalg.svd(Zc, full_matrices=False)
    want = Zc @ vt[:2].T
    for j in range(2):
        assert abs(np.corrcoef(P[:, j], want[:, j])[0, 1]) > 0.999
    assert project_2d(Z[:, :1]).shape == (1500, 2)
