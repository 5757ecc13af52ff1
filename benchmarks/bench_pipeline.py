"""Stage throughput of the CPU and GPU twins on the same embeddings, with the quality they reach.

Synthetic embeddings with known labels (Gaussian blobs in D dimensions, k centres) go through reduce -> cluster ->
evaluate on every twin this machine can run. Prints a table (seconds per stage, GPU/CPU speed-up, AMI) and saves
a CSV named with the device and library versions under benchmarks/results/.

    python benchmarks/bench_pipeline.py --sizes 5000 20000 --dim 768 --k 50
    python benchmarks/bench_pipeline.py --sizes 100000 1000000 --devices gpu     # on a GPU machine
"""
from __future__ import annotations

import argparse
import csv
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpuclust.backend import gpu_available, resolve_backend  # noqa: E402
from gpuclust.cluster import cluster  # noqa: E402
from gpuclust.evaluate import evaluate  # noqa: E402
from gpuclust.reduce import reduce  # noqa: E402
from gpuclust.report import versions  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def blobs(n: int, dim: int, k: int, seed: int = 0, spread: float = 6.0):
    """n points around k random centres in `dim` dimensions (unit noise), float32, with their labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=spread / np.sqrt(dim) * 4, size=(k, dim)).astype(np.float32)
    y = rng.integers(0, k, n)
    X = centres[y] + rng.normal(size=(n, dim)).astype(np.float32)
    return X.astype(np.float32), y


def timed(backend, fn, *args, **kwargs):
    backend.synchronize()
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    backend.synchronize()
    return out, time.perf_counter() - t


def run_device(device: str, X, y, reducer: str, dims: int, clusterers: list[str], k: int, seed: int,
               hdbscan_max: int | None = None) -> list[dict]:
    """One reduction, then every clusterer on it (the reduction's time is charged to each row)."""
    be = resolve_backend(device)
    Xd, yd = be.asarray(X), be.asarray(y)
    (Z, rtwin), t_reduce = timed(be, reduce, Xd, reducer, dims, {}, be, seed)
    rows = []
    for clusterer in clusterers:
        if clusterer == "hdbscan" and hdbscan_max is not None and len(X) > hdbscan_max:
            continue
        params = {"min_cluster_size": max(10, len(X) // (4 * k))} if clusterer == "hdbscan" else {}
        (labels, ctwin, _), t_cluster = timed(be, cluster, Z, clusterer, k if clusterer == "kmeans" else None,
                                              params, be, seed)
        m, t_eval = timed(be, evaluate, be, Z, labels, yd, None, seed)
        rows.append({"device": device, "clusterer": clusterer, "reduce_s": t_reduce, "cluster_s": t_cluster,
                     "evaluate_s": t_eval, "total_s": t_reduce + t_cluster + t_eval, "ami": m["ami"],
                     "n_clusters": m["n_clusters"], "twins": f"{rtwin}/{ctwin}"})
    return rows


def save(out: Path, rows: list[dict]) -> None:
    fields = ["n", "dim", "k", "reducer", "clusterer", "device", "twins", "reduce_s", "cluster_s", "evaluate_s",
              "total_s", "speedup_vs_cpu", "ami", "n_clusters"]
    tmp = out.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    tmp.replace(out)


def device_name(devices) -> str:
    if "gpu" in devices:
        import cupy

        name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
        return (name.decode() if isinstance(name, bytes) else name).replace(" ", "-")
    return f"cpu{__import__('os').cpu_count()}-{platform.machine()}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000])
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--reducers", nargs="+", default=["pca", "umap"])
    p.add_argument("--dims", type=int, default=50)
    p.add_argument("--clusterers", nargs="+", default=["kmeans", "hdbscan"])
    p.add_argument("--devices", nargs="+", default=None, help="cpu and/or gpu (default: all available)")
    p.add_argument("--cpu-max", type=int, default=100_000, help="largest size the CPU twin is run at")
    p.add_argument("--hdbscan-max", type=int, default=None, help="largest size HDBSCAN is run at")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="CSV path (default: results/pipeline-<device>-<versions>.csv)")
    args = p.parse_args(argv)
    devices = args.devices or (["cpu", "gpu"] if gpu_available()[0] else ["cpu"])
    v = versions()
    tag = f"{device_name(devices)}-sklearn{v.get('scikit-learn', 'na')}-umap{v.get('umap-learn', 'na')}"
    if "cuml-cu13" in v:
        tag += f"-cuml{v['cuml-cu13']}"
    out = Path(args.out) if args.out else RESULTS / f"pipeline-{tag}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.sizes:
        X, y = blobs(n, args.dim, args.k, args.seed)
        for reducer in args.reducers:
            by_key = {}
            for device in devices:
                if device == "cpu" and n > args.cpu_max:
                    continue
                for r in run_device(device, X, y, reducer, args.dims, args.clusterers, args.k, args.seed,
                                    args.hdbscan_max):
                    r.update(n=n, dim=args.dim, k=args.k, reducer=reducer)
                    by_key[(device, r["clusterer"])] = r
                    rows.append(r)
                    print(f"n={n:>9,} {reducer:>5} {r['clusterer']:>8} {device}: total {r['total_s']:8.2f}s "
                          f"(reduce {r['reduce_s']:.2f}, cluster {r['cluster_s']:.2f}, eval {r['evaluate_s']:.2f}) "
                          f"AMI {r['ami']:.4f}", flush=True)
            for (device, clusterer), r in by_key.items():
                if device == "gpu" and ("cpu", clusterer) in by_key:
                    r["speedup_vs_cpu"] = by_key[("cpu", clusterer)]["total_s"] / r["total_s"]
            save(out, rows)  # after every size: a run stopped at its time limit keeps what it measured
    print(f"\n{'n':>9} {'reducer':>7} {'clusterer':>9} {'device':>6} {'total s':>9} {'speedup':>8} {'AMI':>7}")
    for r in rows:
        sp = f"{r['speedup_vs_cpu']:.1f}x" if "speedup_vs_cpu" in r else ""
        print(f"{r['n']:>9,} {r['reducer']:>7} {r['clusterer']:>9} {r['device']:>6} {r['total_s']:>9.2f} {sp:>8} "
              f"{r['ami']:>7.4f}")
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
