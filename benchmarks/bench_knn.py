"""Where UMAP's neighbour graph should come from on the CPU twin: each search, and UMAP end to end, in a fresh process.

umap-learn searches with pynndescent above 4,096 rows, and numba compiles pynndescent on its first use in every
process, so what a run (or a fanned-out sweep child) pays is the compile plus the search. This times, each in its own
new Python process on the same seeded Gaussian blobs:

- `faiss`, `sklearn`: the exact searches gpuclust can hand UMAP (`--reduce-param knn=exact`);
- `pynndescent`: its first call (compile included) and a second call in the same process;
- `umap:<knn>`: gpuclust's seeded UMAP-50 with `--reduce-param knn=<knn>`, whole, compile included.

It prints a table and saves a CSV; the `knn=auto` budget in gpuclust/reduce/__init__.py is set from these numbers.

    python benchmarks/bench_knn.py --sizes 6000 10000 30000 --dim 1280                  # ~10 minutes on 2 cores
    python benchmarks/bench_knn.py --sizes 10000 --dim 1280 --umap auto library         # UMAP end to end too
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]

# Runs in the fresh process: argv = n, dim, k, task; prints one JSON line.
CHILD = r"""
import json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[5])
from bench_pipeline import blobs
n, dim, k, task = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
X, y = blobs(n, dim, 50, seed=0)
X = np.ascontiguousarray(X, dtype=np.float32)
out = {}
t = time.perf_counter()
if task == "faiss":
    from gpuclust.backend import cpu_backend
    from gpuclust.reduce.knn import faiss_knn
    faiss_knn(X, k, cpu_backend())
elif task == "sklearn":
    from gpuclust.backend import cpu_backend
    from gpuclust.reduce.knn import brute_knn
    brute_knn(X, k, cpu_backend())
elif task == "pynndescent":
    from pynndescent import NNDescent
    NNDescent(X, n_neighbors=k, random_state=0)
    out["first_s"] = time.perf_counter() - t
    t = time.perf_counter()
    NNDescent(X, n_neighbors=k, random_state=1)
    out["second_s"] = time.perf_counter() - t
elif task.startswith("umap:"):
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_mutual_info_score
    from gpuclust.backend import cpu_backend
    from gpuclust.reduce import reduce
    Z, _ = reduce(X, "umap", 50, {"n_neighbors": k, "knn": task[5:]}, cpu_backend(), seed=0)
    out["seconds"] = time.perf_counter() - t
    out["ami"] = adjusted_mutual_info_score(y, KMeans(50, n_init=1, random_state=0).fit_predict(Z))
out.setdefault("seconds", out.get("first_s", time.perf_counter() - t))
print(json.dumps(out))
"""


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "na"


def run_child(n: int, dim: int, k: int, task: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(n), str(dim), str(k), task, str(ROOT / "benchmarks")],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{task} at n={n} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[6000, 10000, 30000])
    p.add_argument("--dim", type=int, default=1280, help="embedding width (EfficientNet-Lite0: 1280)")
    p.add_argument("--k", type=int, default=30, help="neighbours (the study's UMAP: 30)")
    p.add_argument("--searches", nargs="*", default=["faiss", "sklearn", "pynndescent"])
    p.add_argument("--umap", nargs="*", default=[], metavar="KNN", help="also UMAP-50 end to end with these knn=")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    rows = []
    print(f"{'task':>14} {'rows':>8} {'dim':>5} {'seconds':>9} {'2nd call':>9} {'AMI':>7}", flush=True)
    for n in args.sizes:
        for task in [*args.searches, *[f"umap:{k}" for k in args.umap]]:
            r = {"task": task, "n": n, "dim": args.dim, "k": args.k, **run_child(n, args.dim, args.k, task)}
            rows.append(r)
            second = f"{r['second_s']:9.2f}" if "second_s" in r else f"{'':>9}"
            ami = f"{r['ami']:7.4f}" if "ami" in r else f"{'':>7}"
            print(f"{task:>14} {n:>8,} {args.dim:>5} {r['seconds']:9.2f} {second} {ami}", flush=True)
    tag = f"cpu{os.cpu_count()}-{platform.machine()}" + "".join(
        f"-{short}{_version(dist)}" for short, dist in [("umap", "umap-learn"), ("pynndescent", "pynndescent"),
                                                         ("faiss", "faiss-cpu")])
    out = Path(args.out) if args.out else RESULTS / f"knn-{tag}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["task", "n", "dim", "k", "seconds", "first_s", "second_s", "ami"])
        w.writeheader()
        w.writerows(rows)
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
