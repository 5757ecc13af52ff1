"""The GPU twin end to end (skipped without a CUDA GPU, CuPy and cuML): embeddings stay CuPy arrays from the encoder to
the metrics, and the GPU twin agrees with the CPU twin on the same embeddings."""
import numpy as np
import pytest

from gpuclust.config import ClusterConfig, DataConfig, EncodeConfig, ReduceConfig, RunConfig
from helpers import store_lock

pytestmark = pytest.mark.gpu
N = 2000


def _cfg(cache_dir, tmp_path, device, **kw):
    return RunConfig(data=DataConfig("fashion-mnist", limit=N), encode=EncodeConfig(cache_dir=str(cache_dir)),
                     reduce=ReduceConfig("umap", 50), cluster=ClusterConfig(kw.pop("cluster", "kmeans"), params=kw),
                     device=device, output=str(tmp_path / device))


def test_free_device_memory_is_the_drivers_count():
    import cupy

    from gpuclust.backend import device_free_bytes

    free, total = cupy.cuda.runtime.memGetInfo()
    got = device_free_bytes()
    assert 0 < got <= total and abs(got - free) < 2**30  # within 1 GiB of a moment ago


def test_dlpack_shares_torch_memory():
    import cupy
    import torch

    from gpuclust.backend import resolve_backend

    be = resolve_backend("gpu")
    t = torch.randn(64, 8, device="cuda")
    a = be.from_torch(t)
    assert isinstance(a, cupy.ndarray) and a.data.ptr == t.data_ptr()
    t.add_(1.0)
    torch.cuda.synchronize()
    np.testing.assert_allclose(cupy.asnumpy(a), t.cpu().numpy())


def test_stages_keep_cupy_arrays(cache_dir, tmp_path):
    import cupy

    from gpuclust.backend import resolve_backend
    from gpuclust.data import load_dataset
    from gpuclust.evaluate import evaluate
    from gpuclust.pipeline import cluster_stage, encode_stage, reduce_stage

    cfg = _cfg(cache_dir, tmp_path, "gpu")
    be = resolve_backend("gpu")
    ds = load_dataset("fashion-mnist", limit=N)
    emb, _ = encode_stage(ds, cfg, be, progress=False)
    assert isinstance(emb.X, cupy.ndarray) and emb.X.shape == (N, 1280)
    Z, twin = reduce_stage(emb.X, cfg, be)
    assert isinstance(Z, cupy.ndarray) and twin == "gpu"
    labels, twin, _ = cluster_stage(Z, cfg, be, 10)
    assert isinstance(labels, cupy.ndarray) and twin == "gpu"
    m = evaluate(be, Z, labels, cupy.asarray(ds.labels[emb.rows]), Z)
    assert m["ami"] > 0.6


def test_gpu_twin_agrees_with_cpu_twin(cache_dir, tmp_path):
    from gpuclust.pipeline import run_pipeline

    cpu = run_pipeline(_cfg(cache_dir, tmp_path, "cpu"), progress=False)
    gpu = run_pipeline(_cfg(cache_dir, tmp_path, "gpu"), progress=False)  # reuses the same stored embeddings
    assert gpu.timings["rows_reused"] == N
    assert set(gpu.twins.values()) == {"gpu"}
    assert abs(gpu.metrics["ami"] - cpu.metrics["ami"]) <= 0.02, (gpu.metrics, cpu.metrics)


def test_hdbscan_gpu_matches_sklearn_convention():
    import cupy
    from sklearn.cluster import HDBSCAN
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA
    from sklearn.metrics import adjusted_rand_score

    from gpuclust.backend import make_estimator, resolve_backend

    X = PCA(5, random_state=0).fit_transform(load_digits().data).astype(np.float32)
    be = resolve_backend("gpu")
    ref = {m: HDBSCAN(min_cluster_size=15, min_samples=m, copy=True).fit_predict(X) for m in range(4, 22)}
    scores = {}
    for m in (5, 10, 20):
        gpu = make_estimator("hdbscan", be, min_cluster_size=15, min_samples=m)
        ours = cupy.asnumpy(gpu.call("fit_predict", be, cupy.asarray(X)))
        scores[m] = {d: adjusted_rand_score(ref[m + d], ours) for d in (-1, 0, 1)}
    # On an H100 (cuML 26.10) m=5 gave ARI 0.976 against sklearn: a few border points flip between a cluster and
    # noise (float32). An off-by-one translation would land on sklearn's m-1 or m+1, which differ far more
    # (ARI 0.57 and 0.80 against m=5 on this data), so ours must sit closest to sklearn's own m.
    for m, s in scores.items():
        assert s[0] > 0.95 and s[0] > s[-1] and s[0] > s[1], (m, s)


def test_metrics_agree_across_twins_on_the_same_labels():
    import cupy
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA

    from gpuclust.backend import resolve_backend
    from gpuclust.evaluate import evaluate

    d = load_digits()
    X = PCA(10, random_state=0).fit_transform(d.data).astype(np.float32)
    pred = np.where(np.arange(len(X)) % 7 == 0, -1, (d.target + (np.arange(len(X)) % 3 == 0)) % 10)
    cpu = evaluate(resolve_backend("cpu"), X, pred, d.target)
    gpu = evaluate(resolve_backend("gpu"), cupy.asarray(X), cupy.asarray(pred), cupy.asarray(d.target))
    for key in ("ami", "ari", "nmi", "silhouette", "n_clusters", "noise_fraction"):
        assert gpu[key] == pytest.approx(cpu[key], rel=1e-5, abs=1e-6), key


@pytest.fixture(scope="module")
def fashion_space(cache_dir):
    """The CPU twin's UMAP-50 space of 2,000 Fashion-MNIST EfficientNet-Lite0 embeddings, and the truth."""
    from gpuclust.backend import resolve_backend
    from gpuclust.data import load_dataset
    from gpuclust.pipeline import encode_stage, reduce_stage

    cpu = resolve_backend("cpu")
    cfg = RunConfig(data=DataConfig("fashion-mnist", limit=N), encode=EncodeConfig(cache_dir=str(cache_dir)),
                    device="cpu")
    ds = load_dataset("fashion-mnist", limit=N)
    with store_lock(cache_dir):
        emb, _ = encode_stage(ds, cfg, cpu, progress=False)
        Z, _ = reduce_stage(emb.X, cfg, cpu)
    return Z, ds.labels[emb.rows]


@pytest.mark.parametrize("method,k,params", [
    ("kmeans", 10, {}),
    ("hdbscan", None, {"min_cluster_size": 30}),
    ("agglomerative", 10, {"linkage": "single"}),
    ("agglomerative", 10, {"linkage": "single", "metric": "cosine"}),  # euclidean on unit rows, kNN connectivity
    ("agglomerative", 10, {"linkage": "single", "metric": "l1"}),  # cuML's pairwise connectivity
    ("affinity", None, {"damping": 0.9}),
    ("spectral", 10, {}),
    ("dbscan", None, {"eps": 0.3, "min_samples": 10}),
    ("dbscan", None, {"eps": 0.02, "min_samples": 10, "metric": "cosine"}),
])
def test_each_gpu_clusterer_matches_its_cpu_twin(fashion_space, method, k, params):
    import cupy

    from gpuclust.backend import resolve_backend
    from gpuclust.cluster import cluster
    from gpuclust.evaluate import ami

    Z, y = fashion_space
    cpu, gpu = resolve_backend("cpu"), resolve_backend("gpu")
    lc, tc, _ = cluster(Z, method, k, params, cpu, seed=0, n_classes=10)
    Zg = cupy.asarray(Z)
    before = Zg.copy()
    lg, tg, _ = cluster(Zg, method, k, params, gpu, seed=0, n_classes=10)
    assert tc == "cpu" and tg == "gpu" and isinstance(lg, cupy.ndarray)
    assert bool((Zg == before).all())  # the stage never lets an estimator rewrite its input
    a_cpu, a_gpu = ami(cpu, y, lc), ami(cpu, y, cupy.asnumpy(lg))
    assert abs(a_gpu - a_cpu) <= 0.05, (a_gpu, a_cpu)


def test_seeded_pca_runs_on_the_gpu_and_matches_the_cpu_twin(fashion_space):
    """The pipeline always seeds PCA; cuML 26.10's PCA has no random_state. The GPU twin must run it (not exit 2),
    and give the CPU twin's components up to sign."""
    import cupy

    from gpuclust.backend import resolve_backend
    from gpuclust.reduce import reduce

    Z, _ = fashion_space
    cpu, gpu = resolve_backend("cpu"), resolve_backend("gpu")
    Zc, tc = reduce(Z, "pca", 5, {}, cpu, seed=0)
    Zg, tg = reduce(cupy.asarray(Z), "pca", 5, {}, gpu, seed=0)
    assert tc == "cpu" and tg == "gpu" and isinstance(Zg, cupy.ndarray)
    corr = np.abs(np.sum(Zc * cupy.asnumpy(Zg), axis=0)) / (np.linalg.norm(Zc, axis=0) * np.linalg.norm(
        cupy.asnumpy(Zg), axis=0))
    assert np.all(corr > 0.999), corr


def test_sklearn_only_kmeans_parameter_runs_on_the_cpu_twin_of_a_gpu_run(fashion_space):
    import cupy

    from gpuclust.backend import resolve_backend
    from gpuclust.cluster import cluster

    Z, _ = fashion_space
    labels, twin, _ = cluster(cupy.asarray(Z), "kmeans", 10, {"algorithm": "elkan"}, resolve_backend("gpu"))
    assert twin == "cpu" and isinstance(labels, cupy.ndarray)


@pytest.mark.parametrize("metric", ["euclidean", "l1", "chebyshev", "cosine"])
def test_gpu_silhouette_at_scale_matches_cpu_sample(metric):
    """Exact on the device at 50,000 rows; the CPU twin's sampled estimate must fall inside its own interval."""
    import cupy

    from gpuclust.backend import resolve_backend
    from gpuclust.evaluate import silhouette

    rng = np.random.default_rng(0)
    centres = rng.normal(scale=3, size=(20, 16))
    y = rng.integers(0, 20, 50_000)
    X = (centres[y] + rng.normal(size=(50_000, 16))).astype(np.float32)
    g = silhouette(resolve_backend("gpu"), cupy.asarray(X), cupy.asarray(y), metric)
    c = silhouette(resolve_backend("cpu"), X, y, metric)
    assert g["exact"] and not c["exact"]
    assert abs(g["value"] - c["value"]) <= c["ci95"] * 1.5


def test_device_jpeg_decode_matches_cpu_decode():
    import io

    import torch
    from PIL import Image
    from sklearn.datasets import load_sample_images

    from gpuclust.encode.device_decode import DevicePreprocess, decode_batch

    datas = []
    for img in load_sample_images().images:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        datas.append(torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8))
    datas.append(torch.frombuffer(bytearray(b"no jpeg here" * 50), dtype=torch.uint8))
    prep = DevicePreprocess()
    gpu, failed_gpu = decode_batch(datas, prep, "cuda")
    cpu, failed_cpu = decode_batch(datas, prep, "cpu")
    assert gpu.is_cuda and failed_gpu == failed_cpu == [2]
    # nvJPEG and libjpeg differ by rounding in the IDCT and colour conversion: about a grey level at most.
    assert float((gpu.cpu() - cpu).abs().mean()) < 0.02


def test_bf16_extraction_close_to_fp32_and_stored_apart(cache_dir, tmp_path):
    import cupy

    from gpuclust.backend import resolve_backend
    from gpuclust.data import load_dataset
    from gpuclust.pipeline import encode_stage

    be = resolve_backend("gpu")
    ds = load_dataset("fashion-mnist", limit=512)
    out = {}
    for precision in ("fp32", "bf16"):
        cfg = RunConfig(data=DataConfig("fashion-mnist", limit=512),
                        encode=EncodeConfig(cache_dir=str(tmp_path / "store"), precision=precision), device="gpu")
        emb, info = encode_stage(ds, cfg, be, progress=False)
        out[precision] = (cupy.asnumpy(emb.X), info["store"])
    (a, store_a), (b, store_b) = out["fp32"], out["bf16"]
    assert store_a != store_b
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() > 0.98 and not np.array_equal(a, b)


def test_cuda_out_of_memory_halves_the_batch():
    import torch

    from gpuclust.encode.extract import _Forward
    from gpuclust.encode.models import build_encoder

    enc = build_encoder("efficientnet_lite0")
    model = enc.model.cuda().to(memory_format=torch.channels_last)
    x = torch.randn(512, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        ref = torch.cat([model(x[i:i + 32]).float() for i in range(0, 512, 32)])
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.empty_cache()
    # Allow this process ~1.5 GiB beyond what it holds: batch 512 of EfficientNet-Lite0 needs several GiB.
    torch.cuda.set_per_process_memory_fraction(min(1.0, (torch.cuda.memory_allocated() + (3 << 29)) / total))
    try:
        fwd = _Forward(model, 512)
        with torch.inference_mode():
            got = fwd(x)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert fwd.limit < 512
    torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-3)


def test_pipeline_decodes_jpegs_with_nvjpeg(tmp_path):
    import cupy

    from gpuclust.backend import resolve_backend
    from gpuclust.data import load_dataset
    from gpuclust.pipeline import encode_stage
    from helpers import write_digit_images

    root = tmp_path / "imgs"
    write_digit_images(root, n_per_class=30, classes=(0, 1, 7), ext=".jpg")
    (root / "class_1" / "zz-broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 50)
    ds = load_dataset(f"imagefolder:{root}")
    be = resolve_backend("gpu")
    out = {}
    for decode in ("cpu", "device"):
        cfg = RunConfig(data=DataConfig(f"imagefolder:{root}"),
                        encode=EncodeConfig("mobilenetv2", cache_dir=str(tmp_path / "store"), decode=decode),
                        device="gpu")
        emb, _ = encode_stage(ds, cfg, be, progress=False)
        out[decode] = (cupy.asnumpy(emb.X), emb.rows, emb.skipped)
    (a, ra, sa), (b, rb, sb) = out["cpu"], out["device"]
    assert np.array_equal(ra, rb) and len(ra) == len(ds) - 1 and len(sb) == len(sa) == 1
    na, nb = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
    assert ((nb @ na.T).argmax(1) == np.arange(len(nb))).mean() >= 0.9


def _device_blobs(n=20_000, d=32, k=10, seed=0):
    import cupy

    rng = cupy.random.RandomState(seed)
    centres = rng.normal(scale=3.0, size=(k, d)).astype(cupy.float32)
    y = rng.randint(0, k, n)
    return centres[y] + rng.standard_normal((n, d), dtype=cupy.float32), y


@pytest.fixture(scope="module")
def cuda_client():
    """A LocalCUDACluster with one worker per GPU present (one is enough), as --gpus N starts it."""
    dask_cuda = pytest.importorskip("dask_cuda")
    distributed = pytest.importorskip("distributed")
    cluster = dask_cuda.LocalCUDACluster(threads_per_worker=1, dashboard_address=None)
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


def test_dask_kmeans_across_gpus_matches_single_gpu_kmeans(cuda_client):
    import cupy
    from sklearn.metrics import adjusted_mutual_info_score as ami

    from gpuclust.backend import resolve_backend
    from gpuclust.cluster import cluster
    from gpuclust.distributed import dask_kmeans

    be = resolve_backend("gpu")
    X, y = _device_blobs()
    labels, twin, params = dask_kmeans(cuda_client, X, 10, {}, be, 0, None)
    single, _, _ = cluster(X, "kmeans", 10, {}, be, 0)
    assert twin == "gpu-dask" and params["n_clusters"] == 10 and isinstance(labels, cupy.ndarray)
    assert ami(cupy.asnumpy(labels), cupy.asnumpy(single)) > 0.99
    assert ami(cupy.asnumpy(y), cupy.asnumpy(labels)) > 0.99


def test_streamed_umap_on_gpu_and_on_cuda_workers(tmp_path, cuda_client):
    """UMAP fitted by cuML on a sample, the rest transformed chunk by chunk here and on the Dask-CUDA workers."""
    import cupy
    from sklearn.metrics import adjusted_mutual_info_score as ami

    from gpuclust.backend import resolve_backend
    from gpuclust.cluster import cluster
    from gpuclust.reduce import reduce_streamed
    from gpuclust.stream import NpyRows

    X, y = _device_blobs(n=30_000, d=64, k=8)
    np.save(tmp_path / "x.npy", cupy.asnumpy(X))
    matrix = NpyRows([tmp_path / "x.npy"], chunk_bytes=64 * 4 * 4096)
    be = resolve_backend("gpu")
    for client in (None, cuda_client):
        Z, twin = reduce_streamed(matrix, "umap", 5, {}, be, seed=0, fit_sample=5000, client=client)
        assert twin == "gpu" and isinstance(Z, cupy.ndarray) and Z.shape == (30_000, 5)
        labels, _, _ = cluster(Z, "kmeans", 8, {}, be, 0)
        assert ami(cupy.asnumpy(y), cupy.asnumpy(labels)) > 0.95


def test_streamed_umap_after_an_nn_descent_fit(tmp_path):
    """`--fit-sample` with `build_algo=nn_descent` (docs/scaling.md's recipe for fit samples larger than device memory):
    cuML keeps the fitted rows in host memory after an nn_descent fit, and the streamed path then transforms every
    other chunk. In a child process, so that a crash inside cuML (an illegal memory access spoils the process's
    CUDA context) fails this test alone."""
    import os
    import subprocess
    import sys

    from helpers import ROOT

    code = f"""
import cupy, numpy as np
from sklearn.metrics import adjusted_mutual_info_score as ami
from gpuclust.backend import resolve_backend
from gpuclust.cluster import cluster
from gpuclust.reduce import reduce_streamed
from gpuclust.stream import NpyRows
rng = np.random.default_rng(0)
centres = rng.normal(scale=3.0, size=(8, 64)).astype(np.float32)
y = rng.integers(0, 8, 80_000)
np.save({str(tmp_path / "x.npy")!r}, centres[y] + rng.standard_normal((80_000, 64), dtype=np.float32))
be = resolve_backend("gpu")
matrix = NpyRows([{str(tmp_path / "x.npy")!r}], chunk_bytes=64 * 4 * 8192)
Z, twin = reduce_streamed(matrix, "umap", 5, {{"build_algo": "nn_descent"}}, be, seed=0, fit_sample=60_000)
assert twin == "gpu" and Z.shape == (80_000, 5), (twin, Z.shape)
labels, _, _ = cluster(Z, "kmeans", 8, {{}}, be, 0)
print("ami", ami(y, cupy.asnumpy(labels)))  # 20,000 of the 80,000 rows placed by the transform
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-3000:]
    assert float(r.stdout.split("ami")[-1]) > 0.95, r.stdout


def test_pipeline_on_an_existing_dask_cuda_cluster(tmp_path, cuda_client):
    """--scheduler-address with GPU workers: shards encoded on the workers, KMeans by cuML's multi-GPU KMeans."""
    from gpuclust.pipeline import run_pipeline

    cfg = RunConfig(data=DataConfig("digits"), encode=EncodeConfig("pixels", cache_dir=str(tmp_path / "store"),
                                                                   shard_size=300),
                    reduce=ReduceConfig("pca", 20), cluster=ClusterConfig("kmeans"), device="gpu",
                    scheduler_address=cuda_client.scheduler.address, output=str(tmp_path / "run"))
    result = run_pipeline(cfg, progress=False)
    assert result.twins["cluster"] == "gpu-dask"
    assert result.timings["rows_encoded"] == 1797
    assert result.metrics["ami"] > 0.5


def test_sweep_fanned_out_over_the_gpus(tmp_path):
    """`gpuclust.sweep --gpus N` with every GPU here: each run is a child that sees one GPU and runs the GPU twin."""
    import csv

    from gpuclust.sweep import main, visible_gpus

    n = len(visible_gpus())
    out = tmp_path / "s"
    rc = main(["--dataset", "digits", "--encoder", "pixels", "--reduce", "pca", "--dims", "10", "--seed", "0,1",
               "--device", "gpu", "--cache-dir", str(tmp_path / "cache"), "--output", str(out), "--gpus", str(n),
               "-q"])
    assert rc == 0
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert all("cluster=gpu" in r["twins"] and float(r["ami"]) > 0.5 for r in rows)
    for r in rows:
        log = (out / r["run_dir"] / "log.txt").read_text()
        assert "backend: gpu twin" in log
