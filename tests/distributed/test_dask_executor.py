"""The encode stage across a real distributed.LocalCluster (2 worker processes): the same store rows and the same
labels as the in-process run, and a worker killed with SIGKILL mid-extraction costs nothing but time."""
import dataclasses
import importlib.util
import json
import logging
import os
import signal
import threading
import time

import numpy as np
import pytest

pytest.importorskip("distributed")

from gpuclust.config import ClusterConfig, DataConfig, EncodeConfig, EvalConfig, ReduceConfig, RunConfig  # noqa: E402
from gpuclust.pipeline import run_pipeline  # noqa: E402
from gpuclust.store import EmbeddingStore  # noqa: E402
from helpers import run_cli  # noqa: E402


def _cfg(tmp_path, name, encoder="pixels", limit=None, **kw):
    return RunConfig(data=DataConfig("digits", limit=limit),
                     encode=EncodeConfig(encoder, cache_dir=str(tmp_path / f"cache-{name}"), shard_size=100,
                                         batch_size=50),
                     reduce=ReduceConfig("pca", 20), cluster=ClusterConfig("kmeans", k=10), device="cpu",
                     evaluate=EvalConfig(silhouette_umap=False),  # the executor is under test, not the metric
                     output=str(tmp_path / f"run-{name}"), **kw)


def _store_rows(cache: str) -> tuple[np.ndarray, np.ndarray]:
    (d,) = [p for p in os.scandir(cache) if os.path.isfile(os.path.join(p.path, "key.json"))]
    shards = sorted(f for f in os.listdir(d.path) if f.startswith("shard-"))
    rows, embs = [], []
    for f in shards:
        with np.load(os.path.join(d.path, f)) as z:
            rows.append(z["rows"])
            embs.append(z["emb"])
    return np.concatenate(rows), np.concatenate(embs)


def test_workers_give_the_same_store_and_labels_as_one_process(tmp_path, caplog):
    local = run_pipeline(_cfg(tmp_path, "local"), progress=False)
    caplog.set_level(logging.INFO, logger="gpuclust")
    dask = run_pipeline(_cfg(tmp_path, "dask", workers=2), progress=False)
    assert "over 2 Dask worker(s)" in caplog.text  # every worker counted (Client.nthreads)
    assert dask.timings["rows_encoded"] == 1797 and dask.timings["rows_reused"] == 0
    rows_a, emb_a = _store_rows(str(tmp_path / "cache-local"))
    rows_b, emb_b = _store_rows(str(tmp_path / "cache-dask"))
    assert np.array_equal(rows_a, np.arange(1797)) and np.array_equal(rows_a, rows_b)
    np.testing.assert_allclose(emb_a, emb_b, rtol=0, atol=1e-6)
    la = np.asarray(__import__("pandas").read_parquet(tmp_path / "run-local" / "labels.parquet")["label_pred"])
    lb = np.asarray(__import__("pandas").read_parquet(tmp_path / "run-dask" / "labels.parquet")["label_pred"])
    assert np.array_equal(la, lb)
    assert abs(local.metrics["ami"] - dask.metrics["ami"]) < 1e-12


def test_a_worker_killed_mid_extraction_costs_only_time(tmp_path):
    """Two workers encode 1,000 digits with MobileNetV2 (10 shards of 100 rows, seconds each); once the first shard
    is in the store, one worker process is killed with SIGKILL. Dask reruns its shards elsewhere; every row exactly
    once."""
    from distributed import Client, LocalCluster

    from gpuclust.data import load_dataset
    from gpuclust.distributed import fill_store
    from gpuclust.encode import build_encoder

    cfg = _cfg(tmp_path, "kill", encoder="mobilenetv2", limit=1000, workers=2)
    ds = load_dataset("digits", limit=1000)
    enc = build_encoder("mobilenetv2")
    key = {**enc.key, "dataset": ds.spec, "rows": ds.fingerprint(), "precision": "fp32", "store_dtype": "float32"}
    store = EmbeddingStore(cfg.encode.cache_dir, key, len(ds), 100)
    killed = {}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.WARNING) as cluster, \
            Client(cluster) as client:
        pids = client.run(os.getpid)

        def killer():
            while not any(store.has(i) for i in range(store.n_shards)):
                time.sleep(0.2)
            victim = sorted(pids.values())[0]
            os.kill(victim, signal.SIGKILL)
            killed["pid"] = victim
            killed["done_then"] = sum(store.has(i) for i in range(store.n_shards))

        t = threading.Thread(target=killer, daemon=True)
        t.start()
        fill_store(client, cfg, store, progress=False)
        t.join(timeout=60)
    assert killed and killed["done_then"] < store.n_shards  # the kill happened mid-extraction
    assert store.missing() == []
    rows, emb = _store_rows(cfg.encode.cache_dir)
    assert np.array_equal(rows, np.arange(len(ds))) and emb.shape == (len(ds), 1280)
    # The same numbers as one process computes for a shard.
    from gpuclust.backend import resolve_backend
    from gpuclust.distributed import _NoBar
    from gpuclust.encode.extract import _encode_shard, prepare_forward

    be = resolve_backend("cpu")
    fwd = prepare_forward(enc, be, 50)
    X, kept, _ = _encode_shard(ds, enc, fwd, be, range(900, 1000), 50, 0, _NoBar())
    np.testing.assert_allclose(emb[900:], X, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(importlib.util.find_spec("cuml") is not None, reason="cuML is installed here")
def test_without_cuml_the_real_import_fails_and_says_so():
    from gpuclust import distributed

    assert "cuml" in distributed.cuml_dask_missing()


def test_multi_gpu_kmeans_without_cuml_dask_runs_on_the_clients_gpu(monkeypatch, caplog):
    """cuml.dask needs dask-cudf and raft-dask (cuML's [dask] extra). Without them a --gpus N run still clusters,
    on its own GPU, and says why and what to install; with them KMeans goes to the workers."""
    import scipy.special

    from gpuclust import distributed
    from gpuclust.backend import Backend
    from gpuclust.pipeline import multi_gpu

    gpu = Backend("gpu", np, scipy.special)  # a GPU run's decision, with numpy standing in for CuPy
    cfg = RunConfig(cluster=ClusterConfig("kmeans", k=10), gpus=2)
    client = object()
    monkeypatch.setattr(distributed, "cuml_dask_missing", lambda: "No module named 'dask_cudf'")
    assert not multi_gpu(cfg, gpu, client)
    assert "dask_cudf" in caplog.text and "cuml-cu13[dask]" in caplog.text
    monkeypatch.setattr(distributed, "cuml_dask_missing", lambda: None)
    monkeypatch.setattr(distributed, "workers_have_gpus", lambda c: True)
    assert multi_gpu(cfg, gpu, client)
    assert not multi_gpu(cfg, Backend("cpu", np, scipy.special), client)
    assert not multi_gpu(RunConfig(cluster=ClusterConfig("hdbscan"), gpus=2), gpu, client)
    assert not multi_gpu(cfg, gpu, None)
    elkan = RunConfig(cluster=ClusterConfig("kmeans", k=10, params={"algorithm": "elkan"}), gpus=2)
    assert not multi_gpu(elkan, gpu, client)  # scikit-learn's alone: the CPU twin, as on one GPU
    assert "cuML's KMeans lacks parameter(s) algorithm" in caplog.text


def test_cpu_workers_of_an_existing_cluster_do_not_get_the_multi_gpu_kmeans(monkeypatch, caplog):
    """--scheduler-address on a GPU run may reach plain CPU workers: they are asked first, and KMeans then runs on
    the client's GPU instead of failing on the workers after the encode and reduce stages."""
    import scipy.special
    from distributed import Client, LocalCluster

    from gpuclust import distributed
    from gpuclust.backend import Backend
    from gpuclust.pipeline import multi_gpu

    monkeypatch.setattr(distributed, "cuml_dask_missing", lambda: None)
    cfg = RunConfig(cluster=ClusterConfig("kmeans", k=10), scheduler_address="tcp://x:1")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as lc, \
            Client(lc) as client:
        assert distributed.workers_have_gpus(client) is False  # this machine's workers: no GPU (nor CuPy)
        assert not multi_gpu(cfg, Backend("gpu", np, scipy.special), client)
    assert "not every Dask worker has a GPU" in caplog.text


def test_executor_flags_are_checked(tmp_path):
    r = run_cli("-q", "--dataset", "digits", "--encoder", "pixels", "--workers", "0", "--output", str(tmp_path / "a"))
    assert r.returncode == 2 and "--workers 0" in r.stderr
    r = run_cli("-q", "--dataset", "digits", "--encoder", "pixels", "--workers", "2", "--scheduler-address",
                "tcp://127.0.0.1:1", "--output", str(tmp_path / "b"))
    assert r.returncode == 2 and "choose one of" in r.stderr
    r = run_cli("-q", "--dataset", "digits", "--encoder", "pixels", "--reduce", "pca", "--device", "cpu",
                "--scheduler-address", "tcp://127.0.0.1:1", "--output", str(tmp_path / "c"), timeout=120)
    assert r.returncode == 2 and "cannot connect" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_cli_workers_run_writes_the_usual_results(tmp_path):
    out = tmp_path / "run"
    r = run_cli("-q", "--dataset", "digits", "--encoder", "pixels", "--reduce", "pca", "--dims", "20", "--k", "10",
                "--device", "cpu", "--workers", "2", "--shard-size", "300", "--cache-dir", str(tmp_path / "cache"),
                "--no-silhouette-umap", "--output", str(out))
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "metrics.json").read_text())
    t = json.loads((out / "timings.json").read_text())
    assert m["n_rows"] == 1797 and m["ami"] > 0.5 and t["rows_encoded"] == 1797


def test_workers_take_rows_earlier_stores_hold_and_encode_the_rest(tmp_path):
    """--limit 900 after --limit 500: the workers encode the 400 new rows and copy the 500 others into the shards."""
    first = _cfg(tmp_path, "grow", limit=500)
    run_pipeline(first, progress=False)
    grown = run_pipeline(dataclasses.replace(_cfg(tmp_path, "grow", limit=900, workers=2),
                                             output=str(tmp_path / "run-grown")), progress=False)
    assert grown.timings["rows_encoded"] == 400 and grown.timings["rows_reused"] == 500
    fresh = run_pipeline(_cfg(tmp_path, "fresh", limit=900), progress=False)
    store = json.loads((grown.output / "config.json").read_text())["resolved"]["store"]
    rows_f, emb_f = _store_rows(str(tmp_path / "cache-fresh"))
    shards = sorted(f for f in os.listdir(store) if f.startswith("shard-"))
    rows_g = np.concatenate([np.load(os.path.join(store, f))["rows"] for f in shards])
    emb_g = np.concatenate([np.load(os.path.join(store, f))["emb"] for f in shards])
    assert np.array_equal(rows_g, rows_f) and np.array_equal(emb_g, emb_f)
    assert fresh.timings["rows_encoded"] == 900
