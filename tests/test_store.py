"""The embedding store: atomic shards, keys, reuse, and resumption after kill -9 (a real subprocess)."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

from gpuclust.store import EmbeddingStore, Shard
from helpers import ROOT


def _shard(rows):
    rows = np.asarray(rows)
    return Shard(np.random.default_rng(0).random((len(rows), 4), dtype=np.float32), rows, np.zeros(0, np.int64),
                 np.zeros(0, str))


def test_key_decides_the_directory(tmp_path):
    a = EmbeddingStore(tmp_path, {"encoder": "e", "preprocess": {"input_size": [3, 224, 224]}}, 10)
    b = EmbeddingStore(tmp_path, {"encoder": "e", "preprocess": {"input_size": [3, 256, 256]}}, 10)
    c = EmbeddingStore(tmp_path, {"encoder": "e", "preprocess": {"input_size": [3, 224, 224]}}, 10)
    assert a.dir != b.dir  # image size is part of the key
    assert a.dir == c.dir


def test_shards_roundtrip_and_layout_is_kept(tmp_path):
    s = EmbeddingStore(tmp_path, {"k": 1}, n_rows=10, shard_size=4)
    assert s.n_shards == 3 and list(s.shard_range(2)) == [8, 9] and s.missing() == [0, 1, 2]
    s.write(1, _shard([4, 5, 7]))
    assert s.missing() == [0, 2]
    got = s.read(1)
    np.testing.assert_array_equal(got.rows, [4, 5, 7])
    # Reopened with another requested shard size, the existing layout wins.
    again = EmbeddingStore(tmp_path, {"k": 1}, n_rows=10, shard_size=5)
    assert again.shard_size == 4 and again.missing() == [0, 2]
    assert not any(p.name.endswith(".tmp") for p in s.dir.iterdir())


def _store_rows(cache):
    (store,) = [p for p in cache.iterdir() if p.is_dir()]
    parts = [np.load(p) for p in sorted(store.glob("shard-*.npz"))]
    return np.concatenate([z["rows"] for z in parts]), np.concatenate([z["emb"] for z in parts])


def _run(cache, out, *extra):
    return [sys.executable, "-m", "gpuclust.run", "--dataset", "fashion-mnist", "--limit", "3000", "--encoder",
            "pixels", "--reduce", "none", "--shard-size", "250", "--cache-dir", str(cache), "--output", str(out),
            "--no-silhouette-umap", "-q", *extra]


def test_kill_9_during_extraction_resumes(tmp_path):
    cache = tmp_path / "cache"
    # Slow the encoder down (one image per batch) so the kill lands mid-extraction.
    proc = subprocess.Popen(_run(cache, tmp_path / "r1", "--batch-size", "1"), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline:
        shards = list(cache.glob("*/shard-*.npz"))
        if len(shards) >= 2:
            break
        assert proc.poll() is None, "run ended before it could be killed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(cache.glob("*/shard-*.npz")))
    assert 2 <= done_before < 12 and not list(cache.glob("*/complete.json"))

    resumed = subprocess.run(_run(cache, tmp_path / "r2"), cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr

    timings = json.loads((tmp_path / "r2" / "timings.json").read_text())
    assert timings["rows_reused"] == 250 * done_before and timings["rows_encoded"] == 3000 - 250 * done_before
    rows, emb = _store_rows(cache)
    np.testing.assert_array_equal(rows, np.arange(3000))  # every row exactly once, in order

    fresh = tmp_path / "fresh"
    subprocess.run(_run(fresh, tmp_path / "r3"), cwd=ROOT, check=True, capture_output=True)
    rows2, emb2 = _store_rows(fresh)
    np.testing.assert_array_equal(rows2, rows)
    np.testing.assert_array_equal(emb2, emb)  # a resumed store equals an uninterrupted one


def test_float16_store_halves_the_shards_and_is_exact_on_reuse(tmp_path):
    from gpuclust.config import ClusterConfig, DataConfig, EncodeConfig, EvalConfig, ReduceConfig, RunConfig
    from gpuclust.pipeline import run_pipeline

    def cfg(dtype, out):
        return RunConfig(data=DataConfig("digits"), encode=EncodeConfig("pixels", cache_dir=str(tmp_path / "c"),
                                                                        store_dtype=dtype),
                         reduce=ReduceConfig("pca", 10), cluster=ClusterConfig("kmeans"), device="cpu",
                         evaluate=EvalConfig(silhouette_umap=False), output=str(tmp_path / out))

    a = run_pipeline(cfg("float16", "run-a"), progress=False)
    b = run_pipeline(cfg("float16", "run-b"), progress=False)  # reuses the float16 shards
    c = run_pipeline(cfg("float32", "run-c"), progress=False)  # another key: its own store
    assert b.timings["rows_reused"] == 1797 and c.timings["rows_encoded"] == 1797
    assert a.metrics["ami"] == b.metrics["ami"]  # fresh rows were rounded exactly as stored ones
    sizes = {}
    for store in (tmp_path / "c").iterdir():
        meta = json.loads((store / "key.json").read_text())
        sizes[meta["store_dtype"]] = sum(p.stat().st_size for p in store.glob("shard-*.npz"))
    assert sizes["float16"] < 0.55 * sizes["float32"]


def test_kill_9_during_reduction_then_rerun_equals_uninterrupted(tmp_path):
    def argv(cache, out):
        return [sys.executable, "-m", "gpuclust.run", "--dataset", "digits", "--encoder", "pixels", "--dims", "10",
                "--cache-dir", str(cache), "--output", str(out), "--no-silhouette-umap", "-q"]

    cache = tmp_path / "cache"
    proc = subprocess.Popen(argv(cache, tmp_path / "killed"), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not list(cache.glob("*/complete.json")):  # encoding done: the UMAP fit is under way
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not list(cache.glob("*/reduced/*.json")) and not (tmp_path / "killed" / "metrics.json").exists()
    subprocess.run(argv(cache, tmp_path / "rerun"), cwd=ROOT, check=True, capture_output=True)
    subprocess.run(argv(tmp_path / "other", tmp_path / "clean"), cwd=ROOT, check=True, capture_output=True)
    rerun = json.loads((tmp_path / "rerun" / "metrics.json").read_text())
    clean = json.loads((tmp_path / "clean" / "metrics.json").read_text())
    assert rerun["ami"] == clean["ami"] and rerun["silhouette"] == clean["silhouette"]
    timings = json.loads((tmp_path / "rerun" / "timings.json").read_text())
    assert timings["rows_reused"] == 1797  # the killed run's embeddings were kept
