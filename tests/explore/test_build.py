"""What the explorer reads of a finished run (gpuclust/explore/build.py), on real runs of the packaged digits."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest

import gpuclust as gc
from gpuclust.errors import UserError
from gpuclust.explore import build
from helpers import run_cli

ARGS = ["--dataset", "digits", "--encoder", "pixels", "--reduce", "pca", "--dims", "20", "--k", "10", "--device",
        "cpu", "--no-silhouette-umap", "--gallery", "0", "--outliers", "0.02", "-q"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("explore-build")
    out = root / "run"
    r = run_cli(*ARGS, "--output", str(out), env={"GPUCLUST_CACHE": str(root / "cache")})
    assert r.returncode == 0, r.stderr
    return out, root / "cache"


def test_a_run_as_the_explorer_sees_it(run, monkeypatch):
    out, cache = run
    monkeypatch.setenv("GPUCLUST_CACHE", str(cache))
    got = build.from_run(out, thumbnails=300, neighbours=5, thumb_cache=cache / "thumbs")
    d, labels = got.data, pd.read_parquet(out / "labels.parquet")
    assert len(d) == 1797 and np.array_equal(d.rows, labels["row"]) and np.array_equal(d.cluster, labels["label_pred"])
    assert d.classes == [str(i) for i in range(10)] and np.array_equal(d.label_true, labels["label_true"])
    # The map is the run's own map.parquet; outliers are among the rows with a thumbnail.
    m = pd.read_parquet(out / "map.parquet")
    assert np.array_equal(d.x, m["x"]) and np.array_equal(d.y, m["y"])
    assert d.thumbs.sum() == 300 and d.thumbs[d.columns["outlier"]].all()
    assert all(p.is_file() for p in got.thumb_files.values()) and set(got.thumb_files) == set(d.rows[d.thumbs])
    # Neighbours: positions into the rows, most similar first, never the row itself; they share its digit mostly.
    assert d.neighbours.shape == (1797, 5) and (d.neighbours != np.arange(1797)[:, None]).all()
    assert (np.diff(d.neighbour_sim, axis=1) <= 1e-6).all()
    assert (d.label_true[d.neighbours[:, 0]] == d.label_true).mean() > 0.9
    # Each row's silhouette (the outlier stage's silhouette_row) in [-1, 1].
    assert d.silhouette is not None and np.nanmin(d.silhouette) >= -1 and np.nanmax(d.silhouette) <= 1


def test_a_run_made_before_the_map_stage_gets_its_map(run, tmp_path, monkeypatch):
    out, cache = run
    monkeypatch.setenv("GPUCLUST_CACHE", str(cache))
    old = tmp_path / "old"
    shutil.copytree(out, old)
    (old / "map.parquet").unlink()
    got = build.from_run(old, thumbnails=0, neighbours=0)
    assert (old / "map.parquet").is_file() and "map.parquet computed" in " ".join(got.notes)
    assert not got.data.thumbs.any() and got.data.neighbours is None
    # ...unless its embeddings are gone too: one line saying how to get it.
    cfg = json.loads((old / "config.json").read_text())
    cfg["resolved"]["store"] = str(tmp_path / "gone")
    (old / "config.json").write_text(json.dumps(cfg))
    (old / "map.parquet").unlink()
    with pytest.raises(UserError, match="no map.parquet and its embeddings are gone; rerun it"):
        build.from_run(old, thumbnails=0, neighbours=0)


def test_a_sweep_directory_opens_its_best_run(run, tmp_path):
    out, _ = run
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "best.json").write_text(json.dumps({"rank_by": "ami", "best": {"ami": {"run_dir": str(out)}}}))
    assert build.resolve_run(sweep) == out
    (sweep / "best.json").write_text(json.dumps({"rank_by": "ami", "best": {"ami": None}}))
    with pytest.raises(UserError, match="no finished run"):
        build.resolve_run(sweep)


def test_a_folder_of_runs_opens_its_newest(run, tmp_path):
    import os

    out, _ = run
    for name, age in (("older", 100), ("newer", 0)):
        shutil.copytree(out, tmp_path / name)
        t = os.path.getmtime(out / "metrics.json") - age
        os.utime(tmp_path / name / "metrics.json", (t, t))
    assert build.resolve_run(tmp_path) == tmp_path / "newer"


def test_not_a_run(tmp_path):
    with pytest.raises(UserError, match="not a gpuclust run directory"):
        build.from_run(tmp_path)


def test_a_result_in_memory_as_a_notebook_shows_it(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUCLUST_CACHE", str(tmp_path / "cache"))
    model = gc.Clusterer(reducer="pca", n_components=20, clusterer="kmeans", n_clusters=10, device="cpu")
    res = gc.cluster_images("digits", encoder="pixels", clusterer=model, progress=False)
    assert res.map_xy is not None and res.map_xy.shape == (len(res.labels), 2)
    view = res.explore(thumbnails=100, neighbours=3)
    assert len(view.data) == len(res.labels) and view.data.thumbs.sum() == 100
    uris = view.inline_thumbnails()
    assert sum(u.startswith("data:image/webp;base64,") for u in uris) == 100 and uris.count("") == len(uris) - 100
    # What a notebook displays: the standalone page in an iframe, its thumbnails inline.
    shown = view._repr_html_()
    assert shown.startswith("<iframe srcdoc=") and "Bokeh" in shown and "data:image/webp;base64," in shown


def test_an_unlabelled_folder_run_opens(tmp_path, monkeypatch):
    """folder: data has no labels (label_true all null in labels.parquet): the map opens without classes."""
    from helpers import write_digit_images

    write_digit_images(tmp_path / "imgs", n_per_class=10)
    monkeypatch.setenv("GPUCLUST_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    r = run_cli("--dataset", f"folder:{tmp_path / 'imgs'}", "--encoder", "pixels", "--reduce", "pca", "--dims", "5",
                "--k", "3", "--device", "cpu", "--gallery", "0", "-q", "--output", str(out),
                env={"GPUCLUST_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr
    got = build.from_run(out, thumbnails=10, neighbours=3, thumb_cache=tmp_path / "thumbs")
    assert got.data.label_true is None and got.data.classes is None and len(got.data) == 30
    from gpuclust.explore.page import page_html

    assert "30 images" in page_html(got.data)


def test_another_reduced_space_of_a_streamed_run_is_another_map(tmp_path):
    from gpuclust.explore import layout

    cpu_rows = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
    from gpuclust.backend import resolve_backend

    cpu = resolve_backend("cpu")
    a, _ = layout.map_2d(cpu_rows, {}, cpu, store_dir=str(tmp_path), source={"dims": 8})
    b, _ = layout.map_2d(cpu_rows[:, :3], {}, cpu, store_dir=str(tmp_path), source={"dims": 3})
    assert not np.array_equal(a, b)  # not the cached map of the other space
