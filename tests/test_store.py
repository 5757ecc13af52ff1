"""The embedding store: atomic shards, keys, reuse, and resumption after kill -9 (a real subprocess)."""
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
    import json

    timings = json.loads((tmp_path / "r2" / "timings.json").read_text())
    assert timings["rows_reused"] == 250 * done_before and timings["rows_encoded"] == 3000 - 250 * done_before
    rows, emb = _store_rows(cache)
    np.testing.assert_array_equal(rows, np.arange(3000))  # every row exactly once, in order

    fresh = tmp_path / "fresh"
    subprocess.run(_run(fresh, tmp_path / "r3"), cwd=ROOT, check=True, capture_output=True)
    rows2, emb2 = _store_rows(fresh)
    np.testing.assert_array_equal(rows2, rows)
    np.testing.assert_array_equal(emb2, emb)  # a resumed store equals an uninterrupted one
