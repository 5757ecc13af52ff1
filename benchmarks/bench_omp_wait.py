"""OpenMP's wait policy on a shared machine: the same CPU-twin work (29 small KMeans fits for --k auto, KMeans on
10,000 x 50, faiss's exact 30-NN on 10,000 x 1,280) in fresh processes with OMP_WAIT_POLICY unset (the OpenMP
runtime's default: libgomp's threads spin a while before they sleep) and PASSIVE (they sleep at once; what `import
gpuclust` sets unless the user set it), alone and beside `--busy N` processes that keep N cores busy (other work on
the machine).

    python benchmarks/bench_omp_wait.py --busy 0 2 --repeats 2

Prints seconds per setting with the ratio default / PASSIVE and writes benchmarks/results/omp-wait-<machine>.csv.
"""
from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORK = r"""
import time, numpy as np
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
import faiss
Z = PCA(5, random_state=0).fit_transform(load_digits().data)
t = time.perf_counter()
for k in range(2, 31):
    KMeans(k, n_init=1, random_state=0).fit(Z)
small = time.perf_counter() - t
rng = np.random.default_rng(0)
X = rng.standard_normal((10000, 1280)).astype(np.float32)
Y = rng.standard_normal((10000, 50)).astype(np.float32)
t = time.perf_counter()
KMeans(10, n_init=3, random_state=0).fit(Y)
big = time.perf_counter() - t
t = time.perf_counter()
index = faiss.IndexFlatL2(1280); index.add(X); index.search(X, 30)
knn = time.perf_counter() - t
print(small, big, knn)
"""


def _spin(stop) -> None:
    while not stop.is_set():
        pass


def measure(policy: str) -> list[float]:
    """(29 small fits, KMeans 10k, faiss 30-NN) seconds in a fresh process under `policy`."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy != "default":
        env["OMP_WAIT_POLICY"] = policy
    out = subprocess.run([sys.executable, "-c", WORK], env=env, capture_output=True, text=True, check=True).stdout
    return [float(v) for v in out.split()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--busy", type=int, nargs="+", default=[0, 2], help="cores kept busy beside the work")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                         f"omp-wait-cpu{os.cpu_count()}-{platform.machine()}.csv"))
    args = p.parse_args()
    rows = []
    for busy in args.busy:
        stop = mp.Event()
        spinners = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(busy)]
        for s in spinners:
            s.start()
        time.sleep(1)
        try:
            for rep in range(args.repeats):
                for policy in ("default", "PASSIVE"):  # interleaved, so drift in the machine's load hits both
                    small, big, knn = measure(policy)
                    rows.append({"busy": busy, "repeat": rep, "policy": policy, "kmeans_29_small_s": small,
                                 "kmeans_10k_s": big, "faiss_knn_s": knn})
        finally:
            stop.set()
            for s in spinners:
                s.join()
    keys = ("kmeans_29_small_s", "kmeans_10k_s", "faiss_knn_s")
    print(f"{'busy':>4} {'task':>18} {'default s':>9} {'PASSIVE s':>9} {'ratio':>7}")
    for busy in args.busy:
        for key in keys:
            med = {pol: sorted(r[key] for r in rows if r["busy"] == busy and r["policy"] == pol)
                   for pol in ("default", "PASSIVE")}
            a, b = (v[len(v) // 2] for v in med.values())
            print(f"{busy:>4} {key:>18} {a:>9.2f} {b:>9.2f} {a / b:>6.1f}x")
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
