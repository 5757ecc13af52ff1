"""k-means at scale: scikit-learn / cuML KMeans (`--cluster kmeans`) against faiss (`--cluster faiss_kmeans`).

Gaussian blobs in `--dim` dimensions (like a UMAP-50 space) with `--k` centres, clustered into `--k` clusters by
each clusterer on every twin this machine can run, each seeded with n_init 1. Prints seconds, AMI against the
blobs' labels and the inertia relative to the best, and saves a CSV.

    python benchmarks/bench_kmeans.py --sizes 100000 1000000 --k 100 1000          # 2-core CPU: ~15 minutes
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_pipeline import blobs, device_name, timed  # noqa: E402
from sklearn.metrics import adjusted_mutual_info_score  # noqa: E402

from gpuclust.backend import gpu_available, resolve_backend  # noqa: E402
from gpuclust.cluster import cluster  # noqa: E402
from gpuclust.report import versions  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--k", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--dim", type=int, default=50)
    p.add_argument("--methods", nargs="+", default=["kmeans", "faiss_kmeans"])
    p.add_argument("--devices", nargs="+", default=None)
    p.add_argument("--sklearn-max-work", type=float, default=2e9,
                   help="skip scikit-learn's KMeans above rows x k beyond this (it takes minutes per 1e9 on 2 cores)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    devices = args.devices or (["cpu", "gpu"] if gpu_available()[0] else ["cpu"])
    rows = []
    print(f"{'method':>13} {'device':>6} {'twin':>4} {'rows':>10} {'k':>5} {'seconds':>9} {'AMI':>7} {'inertia':>8}",
          flush=True)
    for n in args.sizes:
        for k in args.k:
            X, y = blobs(n, args.dim, k, seed=4)
            here = []
            for dev in devices:
                be = resolve_backend(dev)
                Xd = be.asarray(X)
                for method in args.methods:
                    if method == "kmeans" and dev == "cpu" and n * k > args.sklearn_max_work:
                        print(f"{method:>13} {dev:>6}      {n:>10,} {k:>5}   skipped (--sklearn-max-work)", flush=True)
                        continue
                    (labels, twin, params), s = timed(be, cluster, Xd, method, k, {}, be, 0)
                    labels = np.asarray(be.to_host(labels))
                    r = {"method": method, "device": dev, "twin": twin, "n": n, "k": k, "dim": args.dim,
                         "seconds": s, "ami": adjusted_mutual_info_score(y, labels),
                         "inertia": _inertia(X, labels)}
                    here.append(r)
            best = min(r["inertia"] for r in here) if here else 1.0
            for r in here:
                r["inertia_vs_best"] = r["inertia"] / best
                rows.append(r)
                print(f"{r['method']:>13} {r['device']:>6} {r['twin']:>4} {n:>10,} {k:>5} {r['seconds']:9.2f} "
                      f"{r['ami']:7.4f} {r['inertia_vs_best']:8.4f}", flush=True)
    v = versions()
    tag = f"{device_name(devices)}-sklearn{v.get('scikit-learn', 'na')}-faiss{v.get('faiss-cpu', 'na')}"
    if "cuml-cu13" in v:
        tag += f"-cuml{v['cuml-cu13']}"
    out = Path(args.out) if args.out else RESULTS / f"kmeans-{tag}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["method", "device", "twin", "n", "k", "dim", "seconds", "ami", "inertia",
                                          "inertia_vs_best"])
        w.writeheader()
        w.writerows(rows)
    print(f"saved {out}")
    return 0


def _inertia(X: np.ndarray, labels: np.ndarray) -> float:
    """Sum of squared distances to each cluster's mean, computed the same way for every clusterer's labels."""
    k = int(labels.max()) + 1
    sums = np.zeros((k, X.shape[1]))
    np.add.at(sums, labels, X)
    counts = np.bincount(labels, minlength=k)[:, None]
    means = sums / np.maximum(counts, 1)
    return float(((X - means[labels]) ** 2).sum())


if __name__ == "__main__":
    raise SystemExit(main())
