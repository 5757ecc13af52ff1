"""How the cluster stages scale with N: seconds and peak memory per stage, and AMI, from 100k to 10M embeddings.

Synthetic embeddings with known labels (Gaussian blobs, 768-d, k centres; made on the GPU when there is one, so the
CPU twin on that machine gets the same rows) go through the run's own stage code: UMAP to 50 dimensions (fitted on
all rows up to --fit-sample, beyond that on a seeded sample with the rest transformed chunk by chunk, exactly as
`gpuclust.run --fit-sample` does), KMeans on the UMAP output, and the evaluation (AMI, sampled silhouette). Each
(device, N) runs in a fresh process so its peak memory is its own. Prints a table, saves a CSV named with the device
and library versions and a log-log plot of seconds against N under benchmarks/results/. Rows already in that CSV
for other (device, N, dim, k, fit sample) stay, so one size can be measured again without the rest (--replace drops
them).

    python benchmarks/bench_scale.py --sizes 20000 100000 --k 100 --devices cpu               # what 2 cores manage
    python benchmarks/bench_scale.py --sizes 100000 1000000 10000000 --k 1000 --devices gpu   # on a GPU machine
    python benchmarks/bench_scale.py --sizes 1000000 --k 1000 --devices gpu cpu               # GPU vs CPU twin
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS = Path(__file__).resolve().parent / "results"
STAGES = ("generate", "umap", "kmeans", "evaluate")


def make_blobs(xp, n: int, dim: int, k: int, seed: int = 0, spread: float = 6.0):
    """n float32 points around k centres (unit noise) with their labels, generated with `xp` in blocks."""
    rng = xp.random.RandomState(seed)
    centres = (rng.standard_normal((k, dim)) * (spread / dim**0.5 * 4)).astype(xp.float32)
    y = rng.randint(0, k, n)
    X = xp.empty((n, dim), dtype=xp.float32)
    for a in range(0, n, 1 << 16):  # float64 draws of 64k rows at a time, not of the whole matrix
        b = min(n, a + (1 << 16))
        X[a:b] = centres[y[a:b]] + rng.standard_normal((b - a, dim)).astype(xp.float32)
    return X, y


def _gpu_peak():
    """Peak device bytes since the last reset (RMM's statistics, which cuML's allocations go through), or None."""
    try:
        import rmm.statistics

        return int(rmm.statistics.get_statistics().peak_bytes)
    except Exception:  # no RMM, or statistics not enabled
        return None


def one(device: str, n: int, dim: int, k: int, fit_sample: int, seed: int, gen: str, seeded: str) -> dict:
    """One (device, N) row; runs in its own process."""
    from gpuclust.backend import resolve_backend
    from gpuclust.cluster import cluster
    from gpuclust.evaluate import evaluate
    from gpuclust.pipeline import peak_rss_bytes
    from gpuclust.reduce import reduce, reduce_streamed, umap_seed
    from gpuclust.stream import ArrayRows

    be = resolve_backend(device)
    if be.is_gpu:
        try:
            import rmm.statistics

            rmm.statistics.enable_statistics()
        except Exception:
            pass
    row = {"device": device, "n": n, "dim": dim, "k": k, "fit_sample": min(n, fit_sample), "umap_seeded": None}

    def stage(name, fn):
        be.synchronize()
        t = time.perf_counter()
        out = fn()
        be.synchronize()
        row[f"{name}_s"] = round(time.perf_counter() - t, 3)
        row[f"{name}_peak_host_gb"] = round((peak_rss_bytes() or 0) / 1e9, 3)
        gpu = _gpu_peak() if be.is_gpu else None
        if gpu is not None:
            row[f"{name}_peak_gpu_gb"] = round(gpu / 1e9, 3)
        print(f"  {device} n={n:,} {name}: {row[f'{name}_s']:.2f}s", file=sys.stderr, flush=True)
        return out

    def generate():
        if gen == "gpu" or (gen == "auto" and be.is_gpu):
            import cupy

            X, y = make_blobs(cupy, n, dim, k, seed)
            return (X, y) if be.is_gpu else (cupy.asnumpy(X), cupy.asnumpy(y))
        import numpy as np

        X, y = make_blobs(np, n, dim, k, seed)
        return be.asarray(X), be.asarray(y)

    X, y = stage("generate", generate)

    # By default what a run does (gpuclust.reduce.umap_seed: seeded on the CPU twin, and on the GPU twin up to
    # GPU_SEEDED_UMAP_MAX_ROWS fitted rows); --umap-seed always/never overrides it.
    params = {"pipeline": {}, "always": {"random_state": seed}, "never": {"random_state": None}}[seeded]
    row["umap_seeded"] = umap_seed(min(n, fit_sample), params, seed, be) is not None

    def umap(X=X):
        if n <= fit_sample:
            return reduce(X, "umap", 50, params, be, seed)
        return reduce_streamed(ArrayRows(X, 1 << 18), "umap", 50, params, be, seed, fit_sample)

    Z, _ = stage("umap", umap)
    del X, umap  # the 768-d rows are not needed past the reducer
    labels, _, _ = stage("kmeans", lambda: cluster(Z, "kmeans", k, {}, be, seed))
    m = stage("evaluate", lambda: evaluate(be, Z, labels, y, None, seed))
    row.update(ami=round(m["ami"], 4), silhouette=round(m["silhouette"], 4) if m["silhouette"] is not None else None,
               total_s=round(sum(row[f"{s}_s"] for s in STAGES if s != "generate"), 3))
    return row


def run_isolated(args, device: str, n: int) -> dict | None:
    cmd = [sys.executable, __file__, "--one", device, str(n), "--dim", str(args.dim), "--k", str(args.k),
           "--fit-sample", str(args.fit_sample), "--seed", str(args.seed), "--gen", args.gen,
           "--umap-seed", args.umap_seed]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=args.timeout)
    if p.returncode != 0:
        print(f"{device} n={n:,}: failed (exit {p.returncode})", file=sys.stderr)
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])


ROW_KEY = ("device", "n", "dim", "k", "fit_sample", "umap_seeded")  # what makes two rows the same measurement


def read_rows(path: Path) -> list[dict]:
    """The rows of an earlier CSV, numbers as numbers (csv gives strings), or [] when there is none."""
    if not path.exists():
        return []

    def value(text: str):
        if text in ("", "None"):
            return None
        if text in ("True", "False"):
            return text == "True"
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        return text

    with open(path, newline="") as f:
        return [{key: value(v) for key, v in r.items()} for r in csv.DictReader(f)]


def merge_rows(old: list[dict], new: list[dict]) -> list[dict]:
    """Earlier rows that this run did not measure again, then this run's rows: re-running one size keeps the others
    (a 1M-row CPU row costs half an hour). Sorted by device and N."""
    fresh = {tuple(r.get(c) for c in ROW_KEY) for r in new}
    kept = [r for r in old if tuple(r.get(c) for c in ROW_KEY) not in fresh]
    return sorted(kept + new, key=lambda r: (str(r["device"]), int(r["n"])))


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for device in sorted({r["device"] for r in rows}):
        for stage, style in (("umap", "o-"), ("kmeans", "s--"), ("evaluate", "^:"), ("total", "D-")):
            pts = sorted((r["n"], r[f"{stage}_s"]) for r in rows if r["device"] == device)
            if pts:
                ax.loglog(*zip(*pts), style, label=f"{device} {stage}")
    ax.set_xlabel("rows N")
    ax.set_ylabel("seconds")
    ax.set_title("gpuclust stages against N (768-d blobs)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    ap.add_argument("--devices", nargs="+", default=None, help="cpu and/or gpu (default: gpu if present, and cpu)")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--fit-sample", type=int, default=1_000_000, help="UMAP fits on at most this many rows")
    ap.add_argument("--cpu-max", type=int, default=1_000_000, help="skip the CPU twin above this N")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gen", choices=["auto", "cpu", "gpu"], default="auto", help="where the blobs are made")
    ap.add_argument("--umap-seed", choices=["pipeline", "always", "never"], default="pipeline",
                    help="UMAP's seed: as a run seeds it (default), always (repeatable, much slower on a GPU at "
                         "large N) or never")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds allowed per (device, N)")
    ap.add_argument("--out-dir", default=str(RESULTS), help="where the CSV and plot go")
    ap.add_argument("--replace", action="store_true",
                    help="write only this run's rows (default: keep an existing CSV's rows for other sizes)")
    ap.add_argument("--one", nargs=2, metavar=("DEVICE", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.dim, args.k, args.fit_sample, args.seed, args.gen,
                             args.umap_seed)))
        return 0

    from bench_pipeline import device_name

    from gpuclust.backend import gpu_available
    from gpuclust.report import versions

    devices = args.devices or (["gpu", "cpu"] if gpu_available()[0] else ["cpu"])
    rows = []
    for n in args.sizes:
        for device in devices:
            if device == "cpu" and n > args.cpu_max:
                continue
            row = run_isolated(args, device, n)
            if row:
                rows.append(row)
                print(f"{device:>4} n={n:>11,}  umap {row['umap_s']:>9.2f}s  kmeans {row['kmeans_s']:>8.2f}s  "
                      f"evaluate {row['evaluate_s']:>8.2f}s  peak host {row['evaluate_peak_host_gb']:.2f} GB  "
                      f"AMI {row['ami']:.4f}", flush=True)
    if not rows:
        return 1
    v = versions()
    tag = f"{device_name(devices)}-sklearn{v.get('scikit-learn', 'na')}-umap{v.get('umap-learn', 'na')}"
    if "cuml-cu13" in v:
        tag += f"-cuml{v['cuml-cu13']}"
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"scale-{tag}"
    if not args.replace:
        rows = merge_rows(read_rows(Path(f"{stem}.csv")), rows)
    fields = sorted({key for r in rows for key in r}, key=lambda c: (c not in ("device", "n", "dim", "k"), c))
    with open(f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    plot(rows, Path(f"{stem}.png"))
    print(f"saved {stem}.csv and {stem}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
