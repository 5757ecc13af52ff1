"""Rows shared between stores: a folder that gains files, a larger --limit, another subsample or a set of shards
with one more shard encodes only the images no earlier store of the same encoder settings holds, and the result is
bit for bit what an empty store would have computed."""
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from gpuclust.config import ClusterConfig, DataConfig, EncodeConfig, EvalConfig, ReduceConfig, RunConfig
from gpuclust.encode.extract import _Rows
from gpuclust.pipeline import run_pipeline
from helpers import write_digit_images, write_digit_shard


@pytest.fixture
def encoded(monkeypatch):
    """The dataset rows that actually went through the encoder (decoded and transformed), in this process."""
    seen = []
    original = _Rows.__getitem__

    def spy(self, j):
        seen.append(int(self.rows[j]))
        return original(self, j)

    monkeypatch.setattr(_Rows, "__getitem__", spy)
    return seen


def _run(spec, cache, out, store_dtype="float32", shard_size=64, **data):
    cfg = RunConfig(data=DataConfig(spec, **data),
                    encode=EncodeConfig("pixels", cache_dir=str(cache), shard_size=shard_size, store_dtype=store_dtype),
                    reduce=ReduceConfig("none"), cluster=ClusterConfig("kmeans", k=3),
                    evaluate=EvalConfig(silhouette_umap=False), device="cpu", output=str(out), gallery=0)
    return run_pipeline(cfg, progress=False)


def _stored(result) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, rows) as the run's store holds them, shard by shard."""
    store = Path(json.loads((result.output / "config.json").read_text())["resolved"]["store"])
    shards = [np.load(p) for p in sorted(store.glob("shard-*.npz"))]
    return np.concatenate([s["emb"] for s in shards]), np.concatenate([s["rows"] for s in shards])


def _same_as_fresh(result, spec, tmp_path, **data):
    fresh = _run(spec, tmp_path / "fresh-cache", tmp_path / "fresh", **data)
    (a, ra), (b, rb) = _stored(result), _stored(fresh)
    return np.array_equal(ra, rb) and np.array_equal(a, b) and a.dtype == b.dtype


def test_a_larger_limit_and_another_subsample_encode_only_new_rows(tmp_path, encoded):
    cache = tmp_path / "cache"
    first = _run("digits", cache, tmp_path / "a", limit=300)
    assert sorted(encoded) == list(range(300))
    encoded.clear()
    grown = _run("digits", cache, tmp_path / "b", limit=600)
    assert not list(cache.glob("*/.donated-*"))  # the gathered rows' memory map is gone once the store is whole
    assert sorted(encoded) == list(range(300, 600))  # rows 0-299 came from the first store
    assert grown.timings["rows_encoded"] == 300 and grown.timings["rows_reused"] == 300
    assert _same_as_fresh(grown, "digits", tmp_path, limit=600)
    encoded.clear()
    strat = _run("digits", cache, tmp_path / "c", limit=900, subsample="stratified")
    from gpuclust.data import load_dataset

    picked = load_dataset("digits", 900, subsample="stratified", seed=0)  # the run's seed
    images = {load_dataset("digits").images[i].tobytes(): i for i in range(600)}
    shared = sum(picked.images[i].tobytes() in images for i in range(900))
    assert 0 < shared < 900 and len(encoded) == 900 - shared
    assert strat.timings["rows_reused"] == shared
    assert first.metrics["n_rows"] == 300


def test_a_folder_that_gained_files_and_changed_one_encodes_those_alone(tmp_path, encoded):
    root = tmp_path / "imgs"
    write_digit_images(root, n_per_class=10, classes=(0, 1))
    cache = tmp_path / "cache"
    _run(f"imagefolder:{root}", cache, tmp_path / "a")
    write_digit_images(root, n_per_class=10, classes=(7,))  # a new class folder, sorted last
    changed = root / "class_0" / "003.png"
    Image.open(root / "class_1" / "005.png").save(changed)  # other pixels, a newer modification time
    os.utime(changed, ns=(os.stat(changed).st_atime_ns, os.stat(changed).st_mtime_ns + 10**9))
    encoded.clear()
    grown = _run(f"imagefolder:{root}", cache, tmp_path / "b")
    assert sorted(encoded) == [3] + list(range(20, 30))
    assert _same_as_fresh(grown, f"imagefolder:{root}", tmp_path)


def test_a_row_the_new_source_marks_bad_is_not_taken_from_a_store_that_kept_it(tmp_path):
    root = tmp_path / "imgs"
    write_digit_images(root, n_per_class=10, classes=(0, 1))
    cache = tmp_path / "cache"
    _run(f"folder:{root}", cache, tmp_path / "a")  # unlabelled: every file kept
    files = sorted(str(p) for p in root.rglob("*.png"))
    lines = ["path,label"] + [f"{f},{'' if i == 4 else Path(f).parent.name}" for i, f in enumerate(files)]
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    result = _run(f"csv:{tmp_path / 'list.csv'}", cache, tmp_path / "b")
    assert result.timings["rows_reused"] == 19 and result.n_skipped == 1
    skipped = pd.read_csv(tmp_path / "b" / "skipped.csv")
    assert skipped.row.tolist() == [4] and skipped.reason.tolist() == ["row has no label"]
    assert 4 not in pd.read_parquet(tmp_path / "b" / "labels.parquet").row.tolist()


def test_stores_of_other_encoder_settings_do_not_share_rows(tmp_path, encoded):
    cache = tmp_path / "cache"
    _run("digits", cache, tmp_path / "a", limit=200)
    encoded.clear()
    half = _run("digits", cache, tmp_path / "b", store_dtype="float16", limit=300)
    assert len(encoded) == 300 and half.timings["rows_reused"] == 0  # float16 rows differ from float32 ones
    encoded.clear()
    again = _run("digits", cache, tmp_path / "c", store_dtype="float16", limit=400)
    assert sorted(encoded) == list(range(300, 400)) and again.timings["rows_reused"] == 300
    fresh16 = _run("digits", tmp_path / "fresh16", tmp_path / "f16", store_dtype="float16", limit=400)
    assert np.array_equal(_stored(again)[0], _stored(fresh16)[0])


def test_one_more_webdataset_shard_encodes_its_members_alone(tmp_path, encoded):
    shards = tmp_path / "shards"
    shards.mkdir()
    write_digit_shard(shards / "d-000.tar", 0, 100)
    write_digit_shard(shards / "d-001.tar", 100, 100)
    cache = tmp_path / "cache"
    _run(f"webdataset:{shards}", cache, tmp_path / "a")
    write_digit_shard(shards / "d-002.tar", 200, 100)
    encoded.clear()
    grown = _run(f"webdataset:{shards}", cache, tmp_path / "b")
    assert sorted(encoded) == list(range(200, 300)) and grown.timings["rows_reused"] == 200
    assert _same_as_fresh(grown, f"webdataset:{shards}", tmp_path)


def test_a_donor_with_other_shards_and_a_skipped_image_gives_each_row_its_own_embedding(tmp_path, encoded):
    """The donor's shards are 7 rows and one of its images is unreadable: the rows after that one sit one place
    earlier in the donor's shard than their row number says, and must still be matched by row."""
    root = tmp_path / "imgs"
    write_digit_images(root, n_per_class=12, classes=(0, 1))
    (root / "class_0" / "004.png").write_bytes(b"not an image")
    cache = tmp_path / "cache"
    first = _run(f"folder:{root}", cache, tmp_path / "a", shard_size=7)
    assert first.n_skipped == 1
    write_digit_images(root, n_per_class=12, classes=(7,))
    encoded.clear()
    grown = _run(f"folder:{root}", cache, tmp_path / "b")
    assert sorted(encoded) == [4] + list(range(24, 36))  # the unreadable one is tried again
    assert grown.timings["rows_reused"] == 23 and grown.n_skipped == 1
    assert _same_as_fresh(grown, f"folder:{root}", tmp_path)


def test_gather_removes_the_memory_maps_killed_runs_left(tmp_path):
    import subprocess
    import sys

    from gpuclust.store import Donors

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".donated-{gone.stdout.strip()}.npy"
    running = tmp_path / f".donated-{os.getppid()}.npy"  # another process's, still at work
    stale.write_bytes(b"left by a killed run")
    running.write_bytes(b"in use")
    empty = np.zeros(0, np.int64)
    Donors(empty, [], empty, empty).gather(tmp_path)
    assert not stale.exists() and running.exists()
