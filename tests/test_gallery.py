"""report.html's cluster gallery: the images nearest each cluster's centre, largest clusters first, noise last, on
real images, with the rows and files it shows listed in gallery/gallery.csv."""
import csv
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from gpuclust.config import ClusterConfig, DataConfig, EncodeConfig, EvalConfig, ReduceConfig, RunConfig
from gpuclust.pipeline import run_pipeline
from gpuclust.report.gallery import THUMB, representatives
from helpers import write_digit_images


def test_representatives_are_each_clusters_rows_nearest_its_mean(backend):
    rng = np.random.default_rng(0)
    sizes = {2: 50, 0: 30, 1: 20}
    Z = np.concatenate([rng.normal(10.0 * c, 1.0, size=(n, 4)) for c, n in sizes.items()] +
                       [rng.normal(100.0, 1.0, size=(5, 4))]).astype(np.float32)
    labels = np.concatenate([np.full(n, c) for c, n in sizes.items()] + [np.full(5, -1)])
    groups = representatives(backend, backend.asarray(Z), backend.asarray(labels), per_cluster=6, seed=0)
    assert [(c, n) for c, n, _ in groups] == [(2, 50), (0, 30), (1, 20), (-1, 5)]
    for c, _, pos in groups[:3]:
        members = np.flatnonzero(labels == c)
        d = ((Z[members] - Z[members].mean(axis=0)) ** 2).sum(axis=1)
        np.testing.assert_array_equal(pos, members[np.argsort(d)[:6]])
    assert sorted(groups[3][2].tolist()) == list(range(100, 105))  # all 5 noise rows: fewer than 6
    capped = representatives(backend, backend.asarray(Z), backend.asarray(labels), per_cluster=3, max_clusters=2)
    assert [c for c, _, _ in capped] == [2, 0, -1] and all(len(p) == 3 for _, _, p in capped)


def _digits_run(tmp_path, name, cluster="kmeans", params=None, gallery=8):
    cfg = RunConfig(data=DataConfig("digits"), encode=EncodeConfig("pixels", cache_dir=str(tmp_path / "cache")),
                    reduce=ReduceConfig("pca", 20), cluster=ClusterConfig(cluster, params=params or {}),
                    evaluate=EvalConfig(silhouette_umap=False), device="cpu", output=str(tmp_path / name),
                    gallery=gallery)
    return run_pipeline(cfg, progress=False).output


def test_gallery_shows_typical_members_of_every_cluster_on_real_digits(tmp_path):
    out = _digits_run(tmp_path, "kmeans")
    shown = pd.read_csv(out / "gallery" / "gallery.csv")
    labels = pd.read_parquet(out / "labels.parquet")
    assert sorted(shown.cluster.unique()) == list(range(10)) and len(shown) == 80
    assert (shown.groupby("cluster")["rank"].apply(list) == [list(range(8))] * 10).all()
    # each shown row is a member of its cluster, with its own true label
    by_row = labels.set_index("row")
    assert (by_row.loc[shown.row, "label_pred"].to_numpy() == shown.cluster.to_numpy()).all()
    assert (by_row.loc[shown.row, "label_true"].to_numpy() == shown.label_true.to_numpy()).all()
    # Rows nearest the centre are typical: they carry their cluster's majority class far more often than the
    # cluster's members at large. Measured: 0.925 shown, 0.66 over all members, 0.84 for each cluster's first 8 rows.
    majority = labels.groupby("label_pred").label_true.agg(lambda s: s.value_counts().idxmax())
    purity = (labels.label_true == labels.label_pred.map(majority)).mean()
    assert purity < 0.75 and (shown.label_true == shown.cluster.map(majority)).mean() >= 0.88
    strip = Image.open(out / "gallery" / "cluster-0000.jpg")
    assert strip.format == "JPEG" and strip.size == (8 * (THUMB + 4) - 4, THUMB)
    page = (out / "report.html").read_text()
    figures = re.findall(r'<figcaption>cluster (\d+): ([\d,]+) images', page)
    sizes = labels.label_pred.value_counts()
    assert [int(c) for c, _ in figures] == sizes.index.tolist()  # largest first
    assert [int(n.replace(",", "")) for _, n in figures] == sizes.tolist()
    assert "every cluster, largest first" in page


def test_gallery_ends_with_noise_and_can_be_turned_off(tmp_path):
    out = _digits_run(tmp_path, "hdbscan", cluster="hdbscan", params={"min_cluster_size": 20})
    page = (out / "report.html").read_text()
    captions = re.findall(r"<figcaption>([^<]*)</figcaption>", page)
    labels = pd.read_parquet(out / "labels.parquet")
    n_noise = int((labels.label_pred < 0).sum())
    assert n_noise > 0 and captions[-1].startswith(f"noise: {n_noise:,} images")
    assert (out / "gallery" / "cluster-noise.jpg").is_file()
    off = _digits_run(tmp_path, "off", gallery=0)
    assert not (off / "gallery").exists() and "<h2>clusters</h2>" not in (off / "report.html").read_text()


def test_gallery_says_when_everything_is_noise_and_skips_unreadable_rows(tmp_path, caplog):
    from gpuclust.backend import resolve_backend
    from gpuclust.data.base import SkipImage
    from gpuclust.report.gallery import write_gallery

    def load(row):
        if row == 3:
            raise SkipImage("truncated")
        return Image.new("L", (28, 28), color=row * 20)

    labels = np.full(6, -1)
    groups = representatives(resolve_backend("cpu"), np.zeros((6, 2), np.float32), labels, per_cluster=8)
    section = write_gallery(tmp_path, groups, load, np.arange(6), labels, None, None, n_clusters=0)
    assert "No clusters were found" in section and "noise: 6 images" in section
    with open(tmp_path / "gallery" / "gallery.csv", newline="") as f:
        shown = list(csv.DictReader(f))
    assert [int(r["row"]) for r in shown] == [0, 1, 2, 4, 5] and [r["rank"] for r in shown] == list("01234")
    assert Image.open(tmp_path / "gallery" / "cluster-noise.jpg").size == (5 * (THUMB + 4) - 4, THUMB)
    assert "1 gallery image(s) could not be read" in caplog.text


def test_gallery_rows_and_files_stay_right_past_a_skipped_image(tmp_path):
    root = tmp_path / "photos"
    write_digit_images(root, n_per_class=15, classes=(0, 1, 7))
    (root / "class_1" / "000-broken.png").write_bytes(b"not a png")  # sorts first: every later row shifts
    cfg = RunConfig(data=DataConfig(f"imagefolder:{root}"),
                    encode=EncodeConfig("pixels", cache_dir=str(tmp_path / "cache")),
                    reduce=ReduceConfig("pca", 10), cluster=ClusterConfig("kmeans", k=3), device="cpu",
                    output=str(tmp_path / "run"), gallery=4)
    out = run_pipeline(cfg, progress=False).output
    with open(out / "gallery" / "gallery.csv", newline="") as f:
        shown = list(csv.DictReader(f))
    labels = pd.read_parquet(out / "labels.parquet").set_index("row")
    assert len(shown) == 12 and not any("broken" in r["path"] for r in shown)
    for r in shown:
        row = int(r["row"])
        assert labels.loc[row, "path"] == r["path"]  # the file shown is the row's own file
        assert Path(r["path"]).parent.name == labels.loc[row, "class_true"]
        assert int(r["cluster"]) == labels.loc[row, "label_pred"]


def test_no_gallery_without_images(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "emb.npy", rng.normal(size=(300, 16)).astype(np.float32))
    cfg = RunConfig(data=DataConfig(f"embeddings:{tmp_path / 'emb.npy'}"), reduce=ReduceConfig("pca", 5),
                    cluster=ClusterConfig("kmeans", k=3), evaluate=EvalConfig(silhouette_umap=False), device="cpu",
                    output=str(tmp_path / "run"))
    out = run_pipeline(cfg, progress=False).output
    assert (out / "report.html").is_file() and not (out / "gallery").exists()


@pytest.mark.parametrize("value", ["-1", "101", "x"])
def test_gallery_flag_is_checked(tmp_path, value):
    from helpers import run_cli

    r = run_cli("--dataset", "digits", "--encoder", "pixels", "--gallery", value, "--output", str(tmp_path / "r"))
    assert r.returncode == 2 and "--gallery" in r.stderr and len(r.stderr.strip().splitlines()) == 1
