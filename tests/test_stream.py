"""Embeddings larger than memory: chunked readers, the reducer fitted on a sample and streamed over every chunk,
`embeddings:PATH`, the Dask transform, and a run whose embeddings are larger than the memory it is allowed."""
import json
import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_mutual_info_score as ami

from gpuclust.backend import cpu_backend
from gpuclust.errors import UserError
from gpuclust.store import EmbeddingStore, Shard
from gpuclust.stream import ArrayRows, NpyRows, StoreRows, column_stats
from helpers import run_cli


def blobs(n, d, k, seed=0, spread=3.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=spread, size=(k, d)).astype(np.float32)
    y = rng.integers(0, k, n)
    return (centres[y] + rng.standard_normal((n, d), dtype=np.float32)), y


def test_npy_rows_reads_every_row_in_chunks_and_samples(tmp_path):
    a, b = blobs(3000, 16, 3)[0], blobs(1000, 16, 3, seed=1)[0].astype(np.float16)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    full = np.concatenate([a, b.astype(np.float32)])
    m = NpyRows([tmp_path / "a.npy", tmp_path / "b.npy"], chunk_bytes=16 * 4 * 1024)  # 1024 rows per chunk
    assert m.shape == (4000, 16) and len(m.chunk_ids()) == 4
    got = np.concatenate([blk for _, blk in m.chunks()])
    np.testing.assert_array_equal(got, full)
    pos = np.sort(np.random.default_rng(0).choice(4000, 500, replace=False))
    np.testing.assert_array_equal(m.take(pos), full[pos])
    limited = NpyRows([tmp_path / "a.npy", tmp_path / "b.npy"], limit=3500)
    np.testing.assert_array_equal(np.concatenate([blk for _, blk in limited.chunks()]), full[:3500])


@pytest.mark.parametrize("bad,message", [
    (np.asfortranarray(np.ones((10, 4), np.float32)), "Fortran"),
    (np.ones(10, np.float32), "2-D"),
    (np.array([["a", "b"]]), "2-D numeric"),
])
def test_npy_rows_rejects_what_it_cannot_stream(tmp_path, bad, message):
    np.save(tmp_path / "x.npy", bad)
    with pytest.raises(UserError, match=message):
        NpyRows([tmp_path / "x.npy"])


def test_npy_rows_rejects_shards_of_different_widths(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((5, 4), np.float32))
    np.save(tmp_path / "b.npy", np.ones((5, 3), np.float32))
    with pytest.raises(UserError, match="3 columns"):
        NpyRows([tmp_path / "a.npy", tmp_path / "b.npy"])


def test_store_rows_reads_the_store_shard_by_shard(tmp_path):
    store = EmbeddingStore(tmp_path, {"t": 1}, n_rows=10, shard_size=4)
    X = np.arange(40, dtype=np.float32).reshape(10, 4)
    for i in range(store.n_shards):
        rows = np.array([r for r in store.shard_range(i) if r != 5])  # row 5 "failed to decode"
        bad = [5] if 5 in store.shard_range(i) else []
        reasons = np.array(["broken"] * len(bad))
        store.write(i, Shard(X[rows].astype(np.float16), rows, np.array(bad, np.int64), reasons))
    m = StoreRows(store)
    assert m.shape == (9, 4) and m.skipped == [(5, "broken")]
    np.testing.assert_array_equal(m.rows, [0, 1, 2, 3, 4, 6, 7, 8, 9])
    np.testing.assert_array_equal(np.concatenate([b for _, b in m.chunks()]), X[m.rows])
    shipped = pickle.loads(pickle.dumps(m))  # what a Dask task receives: no row index, same chunks
    assert shipped.rows is None
    np.testing.assert_array_equal(shipped.read(2), X[[8, 9]])


def test_column_stats_match_numpy_and_name_rows_with_nan(tmp_path):
    X = blobs(5000, 8, 2)[0]
    pos = np.sort(np.random.default_rng(1).choice(5000, 700, replace=False))
    mean, std, sample = column_stats(NpyRows_from(tmp_path, X), cpu_backend(), sample=pos)
    np.testing.assert_allclose(mean, X.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(std, X.astype(np.float64).std(axis=0), rtol=1e-5)
    np.testing.assert_array_equal(sample, X[pos])  # the sampled rows, gathered in the same pass
    X[1234, 3] = np.nan
    with pytest.raises(UserError, match="1234"):
        column_stats(NpyRows_from(tmp_path, X), cpu_backend())


def NpyRows_from(tmp_path, X, name="x.npy"):
    np.save(tmp_path / name, X)
    return NpyRows([tmp_path / name], chunk_bytes=X.shape[1] * 4 * 1024)


def test_streamed_pca_fitted_on_every_row_equals_in_memory_pca(tmp_path):
    from gpuclust.reduce import reduce, reduce_streamed

    X, _ = blobs(3000, 32, 5)
    be = cpu_backend()
    Z_mem, _ = reduce(X, "pca", 6, {}, be, seed=0)
    Z_str, twin = reduce_streamed(NpyRows_from(tmp_path, X), "pca", 6, {}, be, seed=0, fit_sample=3000)
    assert twin == "cpu" and Z_str.shape == (3000, 6)
    for j in range(6):  # components agree up to their sign
        assert abs(np.corrcoef(Z_mem[:, j], Z_str[:, j])[0, 1]) > 0.9999


@pytest.mark.parametrize("knn", ["auto", "library"])
def test_streamed_umap_transform_finds_exact_neighbours(tmp_path, knn):
    """Beyond 4,096 fitted rows umap-learn's transform searches an approximate index, which on 768-d blobs put about
    a third of the new rows among another class; the stand-in exact index must place them in their own, both after
    a fit on the exact graph (`auto` here) and after one on umap-learn's own (pynndescent)."""
    from gpuclust.reduce import reduce_streamed
    from gpuclust.stream import sample_positions

    X, y = blobs(9000, 768, 100, spread=0.87)  # classes close enough that approximate neighbours go astray
    fit = 4500
    Z, _ = reduce_streamed(NpyRows_from(tmp_path, X), "umap", 10, {"knn": knn}, cpu_backend(), seed=0,
                           fit_sample=fit)
    fitted = np.zeros(len(y), bool)
    fitted[sample_positions(len(y), fit, 0)] = True
    centres = np.stack([Z[fitted & (y == c)].mean(axis=0) for c in range(100)])
    nearest = ((Z[~fitted][:, None, :] - centres[None]) ** 2).sum(axis=2).argmin(axis=1)
    assert (nearest == y[~fitted]).mean() > 0.95


def test_streamed_reduce_accepts_in_memory_arrays():
    from gpuclust.reduce import reduce_streamed

    X, y = blobs(2000, 16, 4)
    Z, _ = reduce_streamed(ArrayRows(X, chunk_rows=512), "pca", 3, {}, cpu_backend(), seed=0, fit_sample=500)
    assert Z.shape == (2000, 3) and np.isfinite(Z).all()


def _embeddings_dir(tmp_path, n=6000, d=48, k=8):
    X, y = blobs(n, d, k, spread=1.5)
    folder = tmp_path / "emb"
    folder.mkdir()
    for j, a in enumerate(range(0, n, 2500)):  # three shards, as clip-retrieval writes them
        np.save(folder / f"part-{j:03d}.npy", X[a:a + 2500])
    np.save(folder / "labels.npy", y)
    return folder, y


def test_embeddings_spec_streamed_and_in_memory_runs(tmp_path):
    folder, y = _embeddings_dir(tmp_path)
    for name, extra in [("streamed", ["--fit-sample", "1500"]), ("memory", [])]:
        out = tmp_path / name
        r = run_cli("--dataset", f"embeddings:{folder}", "--reduce", "pca", "--dims", "8", "--output", str(out),
                    "--no-silhouette-umap", "-q", *extra)
        assert r.returncode == 0, r.stderr
        m = json.loads((out / "metrics.json").read_text())
        t = json.loads((out / "timings.json").read_text())
        assert t["streamed"] is (name == "streamed")
        assert m["n_rows"] == 6000 and m["twins"]["encode"] == "none"
        assert m["ami"] > 0.95, (name, m["ami"])
        labels = pd.read_parquet(out / "labels.parquet")
        np.testing.assert_array_equal(labels["label_true"], y)


@pytest.mark.parametrize("args,message", [
    (["--reduce", "none", "--fit-sample", "100"], "--fit-sample applies to --reduce pca or umap"),
    (["--reduce", "pca", "--fit-sample", "100", "--k", "auto"], "--k auto"),
    (["--reduce", "umap", "--fit-sample", "1", "--dims", "2"], "at least 2"),
])
def test_fit_sample_misuse_is_one_line_exit_2(tmp_path, args, message):
    folder, _ = _embeddings_dir(tmp_path, n=300)
    r = run_cli("--dataset", f"embeddings:{folder}", "--output", str(tmp_path / "o"), "-q", *args)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_embeddings_spec_errors(tmp_path):
    r = run_cli("--dataset", f"embeddings:{tmp_path / 'missing.npy'}", "-q")
    assert r.returncode == 2 and "no such file" in r.stderr
    np.save(tmp_path / "x.npy", np.ones((20, 4), np.float32))
    np.save(tmp_path / "x.labels.npy", np.ones(7, np.int64))
    r = run_cli("--dataset", f"embeddings:{tmp_path / 'x.npy'}", "--output", str(tmp_path / "o"), "-q")
    assert r.returncode == 2 and "one label per row" in r.stderr


def test_streamed_store_run_on_real_images_across_dask_workers_matches_in_process(tmp_path):
    """Digits through the pixels encoder into a 6-shard store; UMAP fitted on half the rows, the rest transformed
    chunk by chunk: in this process, and on 2 Dask worker processes that read the shards themselves."""
    from gpuclust.config import ClusterConfig, DataConfig, EncodeConfig, EvalConfig, ReduceConfig, RunConfig
    from gpuclust.pipeline import run_pipeline

    runs = {}
    for name, workers in [("local", None), ("dask", 2)]:
        # its own cache each, so the Dask run's transform is not read back from the first run's reduction cache
        cfg = RunConfig(data=DataConfig("digits"),
                        encode=EncodeConfig("pixels", cache_dir=str(tmp_path / f"cache-{name}"), shard_size=300),
                        reduce=ReduceConfig("umap", 10, fit_sample=900), cluster=ClusterConfig("kmeans"),
                        evaluate=EvalConfig(silhouette_umap=False), workers=workers, output=str(tmp_path / name))
        result = run_pipeline(cfg, progress=False)
        assert result.timings["streamed"] is True
        runs[name] = (result, pd.read_parquet(tmp_path / name / "labels.parquet"))
    assert runs["dask"][0].timings["rows_encoded"] == 1797  # the workers encoded every shard
    assert runs["local"][0].metrics["ami"] > 0.7  # in-memory UMAP reaches ~0.8 on raw digit pixels
    assert ami(runs["local"][1]["label_pred"], runs["dask"][1]["label_pred"]) > 0.99


def test_run_larger_than_its_memory_budget_completes(tmp_path):
    """1.3 GB of float32 embeddings, a 600 MB budget for the whole process: the run streams them from disk in
    chunks and never holds them (the peak resident memory is measured by the run itself, as the OS reports it)."""
    n, d, k = 420_000, 768, 10
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=0.5, size=(k, d)).astype(np.float32)
    y = rng.integers(0, k, n)
    path = tmp_path / "big.npy"
    X = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    for a in range(0, n, 50_000):
        b = min(50_000, n - a)
        X[a:a + b] = centres[y[a:a + b]] + rng.standard_normal((b, d), dtype=np.float32)
    X.flush()
    del X
    np.save(tmp_path / "big.labels.npy", y)
    size = path.stat().st_size
    budget = 600 << 20
    assert size > 2 * budget
    out = tmp_path / "run"
    r = run_cli("--dataset", f"embeddings:{path}", "--reduce", "pca", "--dims", "5", "--fit-sample", "20000",
                "--no-silhouette-umap", "--output", str(out), "-q")
    assert r.returncode == 0, r.stderr
    t = json.loads((out / "timings.json").read_text())
    m = json.loads((out / "metrics.json").read_text())
    assert t["streamed"] is True and m["n_rows"] == n
    assert t["peak_host_rss_bytes"] < budget, t["peak_host_rss_after"]
    assert m["ami"] > 0.99


def test_small_fit_transforms_through_the_exact_index_with_the_same_result():
    """umap-learn fitted on its own small-set search (under 4,096 rows) transforms by one Python call per distance;
    `_exact_transform` swaps in the exact index, which must find the same neighbours, so that the transformed rows
    come out as umap-learn's own did (float32 distances instead of float64 move a few rows of the seeded layout)."""
    import umap
    from sklearn.metrics import pairwise_distances

    from gpuclust.reduce import _exact_transform
    from gpuclust.reduce.knn import ExactQueryIndex

    X, _ = blobs(700, 16, 4)
    model = umap.UMAP(n_components=2, n_neighbors=10, random_state=0).fit(X[:400])
    assert model._small_data
    own = model.transform(X[400:])
    _exact_transform(model)
    assert not model._small_data and isinstance(model._knn_search_index, ExactQueryIndex)
    idx, dist = model._knn_search_index.query(X[400:], 10)
    D = pairwise_distances(X[400:], X[:400])
    np.testing.assert_array_equal(np.sort(idx, axis=1), np.sort(np.argsort(D, axis=1)[:, :10], axis=1))
    np.testing.assert_allclose(dist, np.sort(D, axis=1)[:, :10], atol=1e-4)
    swapped = model.transform(X[400:])
    assert np.median(np.abs(swapped - own)) < 1e-3
    for j in range(2):
        assert np.corrcoef(swapped[:, j], own[:, j])[0, 1] > 0.999


def test_a_metric_only_umap_learn_knows_keeps_its_own_transform():
    import umap

    from gpuclust.reduce import _exact_transform

    X, _ = blobs(300, 8, 3)
    model = umap.UMAP(n_components=2, n_neighbors=10, metric="hellinger", random_state=0).fit(np.abs(X[:200]))
    _exact_transform(model)
    assert model._small_data  # scikit-learn has no hellinger: umap-learn's own search stays
    assert model.transform(np.abs(X[200:])).shape == (100, 2)
