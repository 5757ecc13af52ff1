"""Outliers (issue 23): on a folder of one class with a few images of other classes mixed in, the mixed-in images rank
first; `--outliers FRACTION` marks about that fraction in labels.parquet and shows them in report.html."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from helpers import run_cli

N_MAIN, MIXED = 200, {"bag": 8, "trouser": 1}  # Fashion-MNIST classes mixed in, 3 of each
N_EACH = 3


def _write_folder(root) -> None:
    """200 Fashion-MNIST sneakers and 3 bags and 3 trousers as PNG files in one folder, the mixed-in ones named
    mixed-*.png."""
    import gpuclust as gc
    from PIL import Image

    ds = gc.load_dataset("fashion-mnist")
    root.mkdir()
    for j, i in enumerate(np.flatnonzero(ds.labels == 7)[:N_MAIN]):
        Image.fromarray(ds.images[i]).save(root / f"sneaker-{j:03d}.png")
    for name, c in MIXED.items():
        for j, i in enumerate(np.flatnonzero(ds.labels == c)[:N_EACH]):
            Image.fromarray(ds.images[i]).save(root / f"mixed-{name}-{j}.png")


@pytest.fixture(scope="module")
def outlier_run(tmp_path_factory, cache_dir):
    """The CLI run on that folder with --outliers 0.03 (k = 2 clusters, PCA for speed)."""
    root = tmp_path_factory.mktemp("outliers")
    _write_folder(root / "imgs")
    out = root / "run"
    r = run_cli("--dataset", f"folder:{root / 'imgs'}", "--encoder", "efficientnet_lite0", "--device", "cpu",
                "--reduce", "pca", "--dims", "10", "--k", "2", "--outliers", "0.03", "--no-silhouette-umap", "-q",
                "--cache-dir", str(cache_dir), "--output", str(out))
    assert r.returncode == 0, r.stderr
    return root, out


def _truth(paths) -> np.ndarray:
    return np.array(["mixed-" in str(p) for p in paths])


def test_mixed_in_images_rank_first(outlier_run, cache_dir):
    import gpuclust as gc
    from sklearn.metrics import roc_auc_score

    root, _ = outlier_run
    X, rows = gc.embed(str(root / "imgs"), cache_dir=str(cache_dir), device="cpu", progress=False, return_rows=True)
    paths = np.array(sorted((root / "imgs").iterdir()))  # folder: lists files sorted
    truth = _truth(paths[rows])
    scores = gc.outlier_scores(X)
    assert isinstance(scores, np.ndarray) and scores.shape == (len(X),) and np.all(scores >= 0)
    top = np.argsort(-scores)[:truth.sum()]
    # a score unrelated to the images would put ~3% of mixed-in images in the top 6; this one puts at least 5 of 6
    assert truth[top].mean() >= 5 / 6, truth[top]
    assert roc_auc_score(truth, scores) > 0.97


def test_cli_marks_the_fraction_writes_columns_and_strip(outlier_run):
    _, out = outlier_run
    labels = pd.read_parquet(out / "labels.parquet")
    n = len(labels)
    assert {"outlier_score", "outlier", "silhouette_row"} <= set(labels.columns)
    assert labels["outlier"].dtype == bool and labels["outlier"].sum() == round(0.03 * n)
    # the marked rows are the highest scores, and mostly the mixed-in images
    marked = labels[labels["outlier"]]
    assert marked["outlier_score"].min() >= labels.loc[~labels["outlier"], "outlier_score"].max()
    assert _truth(marked["path"]).mean() >= 5 / 6, marked["path"].tolist()
    s = labels["silhouette_row"]
    assert s.notna().all() and s.between(-1, 1).all()
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_outliers"] == round(0.03 * n) and abs(m["outliers_fraction"] - 0.03) < 0.01
    html = (out / "report.html").read_text()
    assert "Outliers" in html and "top outliers 1-6" in html
    assert list((out / "curate").glob("outliers-*.jpg"))


@pytest.mark.parametrize("value", ["0", "1", "-0.1", "1.5", "abc"])
def test_bad_fraction_exits_2_with_one_line(tmp_path, value):
    r = run_cli("--dataset", "digits", "--encoder", "pixels", "--outliers", value, "-q",
                "--output", str(tmp_path / "r"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--outliers" in r.stderr
    assert not (tmp_path / "r").exists()


def test_streamed_run_scores_chunk_by_chunk(outlier_run, cache_dir, tmp_path):
    """Embeddings on disk in shards with --fit-sample: the scores equal the in-memory ones, read chunk by chunk."""
    import gpuclust as gc

    root, _ = outlier_run
    X = gc.embed(str(root / "imgs"), cache_dir=str(cache_dir), device="cpu", progress=False)
    folder = tmp_path / "emb"
    folder.mkdir()
    for j, a in enumerate(range(0, len(X), 80)):
        np.save(folder / f"part-{j:03d}.npy", X[a:a + 80])
    out = tmp_path / "run"
    r = run_cli("--dataset", f"embeddings:{folder}", "--reduce", "pca", "--dims", "8", "--fit-sample", "100",
                "--k", "2", "--outliers", "0.03", "--no-silhouette-umap", "-q", "--output", str(out))
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "timings.json").read_text())["streamed"] is True
    labels = pd.read_parquet(out / "labels.parquet")
    np.testing.assert_allclose(labels["outlier_score"], gc.outlier_scores(X), atol=1e-5)


def test_row_chunks_are_never_loaded_whole(outlier_run, cache_dir, monkeypatch):
    import gpuclust as gc
    from gpuclust.backend import cpu_backend
    from gpuclust.curate.outliers import knn_distance
    from gpuclust.stream import ArrayRows, RowChunks

    root, _ = outlier_run
    X = gc.embed(str(root / "imgs"), cache_dir=str(cache_dir), device="cpu", progress=False)
    monkeypatch.setattr(RowChunks, "load", lambda *a: pytest.fail("RowChunks loaded whole"))
    for k in (1, 10):
        chunked = knn_distance(cpu_backend(), ArrayRows(X, chunk_rows=37), k)
        np.testing.assert_allclose(chunked, gc.outlier_scores(X, k=k), atol=1e-6)


def test_large_streamed_rows_take_the_shared_ivf_search_without_loading(monkeypatch):
    """From IVF_MIN_ROWS rows a streamed X goes through neighbours.py's faiss IVF search (read chunk by chunk), not
    the chunk x chunk exact pass; with every list probed IVF is exact, so the scores equal the in-memory ones."""
    pytest.importorskip("faiss")
    from sklearn.datasets import load_digits

    import gpuclust.curate.neighbours as neighbours
    import gpuclust.curate.outliers as outliers
    from gpuclust.backend import cpu_backend
    from gpuclust.stream import ArrayRows, RowChunks

    X = load_digits().data.astype(np.float32) + 1.0  # no zero rows
    monkeypatch.setattr(outliers, "IVF_MIN_ROWS", 500)
    monkeypatch.setattr(neighbours, "IVF_MIN_ROWS", 500)
    monkeypatch.setattr(neighbours, "NPROBE", 10_000)  # every list: the IVF search is exact
    monkeypatch.setattr(RowChunks, "load", lambda *a: pytest.fail("RowChunks loaded whole"))
    monkeypatch.setattr(outliers, "_knn_distance_chunks", lambda *a: pytest.fail("the chunk x chunk pass ran"))
    streamed = outliers.knn_distance(cpu_backend(), ArrayRows(X, chunk_rows=300), 10)
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    S = U @ U.T
    np.fill_diagonal(S, -np.inf)
    exact = 1.0 - np.sort(S, axis=1)[:, -10]
    np.testing.assert_allclose(streamed, exact, atol=1e-5)


@pytest.mark.parametrize("X,k,message", [
    (np.ones((1, 4)), 10, "at least 2 rows"), (np.ones(5), 10, "2-D"), (np.ones((5, 4)), 0, "k=0"),
    (np.ones((5, 4)), True, "k=True"), (np.ones((5, 4)), 2.5, "k=2.5"),
])
def test_outlier_scores_bad_input_is_a_user_error(X, k, message):
    import gpuclust as gc

    with pytest.raises(gc.UserError, match=message):
        gc.outlier_scores(X, k=k)


def _stage(backend):
    """outliers_stage on the digits' pixels (real rows), a few rows as noise."""
    from sklearn.datasets import load_digits

    from gpuclust.curate import Curation
    from gpuclust.curate.outliers import outliers_stage

    d = load_digits()
    X, y = d.data[:400].astype(np.float32), d.target[:400].astype(np.int64)
    y[:5] = -1
    cur = Curation()
    xp = backend.xp
    outliers_stage(cur, 0.05, xp.asarray(X), xp.asarray(X[:, :10]), xp.asarray(y), np.arange(400), None, backend)
    return cur, X


def test_stage_on_either_twin(backend):
    import gpuclust as gc

    cur, X = _stage(backend)
    cols = cur.columns
    assert all(isinstance(v, np.ndarray) for v in cols.values())
    np.testing.assert_allclose(cols["outlier_score"], gc.outlier_scores(X, device="cpu"), atol=1e-5)
    assert cols["outlier"].sum() == 20 and cur.metrics["n_outliers"] == 20
    assert np.isnan(cols["silhouette_row"][:5]).all() and np.isfinite(cols["silhouette_row"][5:]).all()
    title, strips = cur.strips[0]
    assert title == "Outliers" and [len(rows) for _, rows in strips] == [8, 8]
    top = np.argsort(-cols["outlier_score"], kind="stable")[:16]
    assert [r for _, rows in strips for r in rows] == top.tolist()
