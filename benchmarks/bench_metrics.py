"""The heavy parts of the study's protocol at sizes its code could not afford: Affinity Propagation and the exact
silhouette, on every twin this machine can run, with each twin's result set against the other's.

Points are Gaussian blobs in `--dim` dimensions (like a UMAP-50 space). Prints a table and saves a CSV.

    python benchmarks/bench_metrics.py --ap-sizes 2000 --sil-sizes 5000 20000          # CPU, a few minutes
    python benchmarks/bench_metrics.py --ap-sizes 5000 20000 50000 --sil-sizes 20000 200000 --cpu-max 20000
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_pipeline import blobs, device_name, timed  # noqa: E402
from sklearn.metrics import adjusted_mutual_info_score as adjusted_mutual_info  # noqa: E402

from gpuclust.backend import gpu_available, resolve_backend  # noqa: E402
from gpuclust.cluster import cluster  # noqa: E402
from gpuclust.evaluate.silhouette import silhouette_score  # noqa: E402
from gpuclust.report import versions  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


SKLEARN_METRIC = {"euclidean": "euclidean", "l1": "manhattan", "chebyshev": "chebyshev", "cosine": "cosine"}


def silhouettes(X, y, n, metric, devices, args, report, rows) -> None:
    """The exact silhouette with one distance on each twin, and scikit-learn's silhouette_score on the same arrays
    beside the CPU twin (`vs_sklearn`: its seconds over ours; `sklearn_rel_diff`: the values' relative difference)."""
    import sklearn.metrics as skm

    vals = {}
    for dev in devices:
        if dev == "cpu" and n > args.cpu_max:
            continue
        be = resolve_backend(dev)
        res, s = timed(be, silhouette_score, be, be.asarray(X), be.asarray(y), metric, max_exact=n + 1)
        vals[dev] = res["value"]
        report({"task": f"silhouette-{metric}", "n": n, "device": dev, "twin": "xp", "seconds": s,
                "result": f"exact={res['exact']} value={res['value']:.8f}", "value": res["value"]})
        last = rows[-1]
        if dev == "cpu":
            ours = rows[-1]
            cpu = resolve_backend("cpu")
            ref, s_ref = timed(cpu, skm.silhouette_score, X, y, metric=SKLEARN_METRIC[metric])
            ours["vs_sklearn"] = s_ref / ours["seconds"]
            ours["sklearn_rel_diff"] = abs(ours["value"] - ref) / abs(ref)
            report({"task": f"silhouette-{metric}", "n": n, "device": "cpu", "twin": "sklearn", "seconds": s_ref,
                    "result": f"value={ref:.8f}; ours {ours['vs_sklearn']:.2f}x its speed, relative difference "
                              f"{ours['sklearn_rel_diff']:.1e}", "value": ref})
    if len(vals) == 2:  # (set on the row of the twin timed last)
        last["twin_rel_diff"] = abs(vals["gpu"] - vals["cpu"]) / abs(vals["cpu"])
        print(f"{'':>10} relative difference between twins: {last['twin_rel_diff']:.2e}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ap-sizes", type=int, nargs="*", default=[2000])
    p.add_argument("--sil-sizes", type=int, nargs="*", default=[5000, 20000])
    p.add_argument("--sil-metrics", nargs="+", default=["euclidean", "l1", "chebyshev", "cosine"],
                   help="silhouette distances, each timed on every twin and, on the CPU, against scikit-learn's")
    p.add_argument("--dim", type=int, default=50)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--damping", type=float, default=0.9)
    p.add_argument("--devices", nargs="+", default=None)
    p.add_argument("--cpu-max", type=int, default=20_000, help="largest size the CPU twin is run at")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    devices = args.devices or (["cpu", "gpu"] if gpu_available()[0] else ["cpu"])
    rows = []

    def report(r):
        rows.append(r)
        print(f"{r['task']:>10} n={r['n']:>8,} {r['device']}: {r['seconds']:9.2f}s  {r['result']}", flush=True)

    for n in args.ap_sizes:
        X, y = blobs(n, args.dim, args.k, seed=1)
        labels_by = {}
        for dev in devices:
            if dev == "cpu" and n > args.cpu_max:
                continue
            be = resolve_backend(dev)
            Xd = be.asarray(X)
            (labels, twin, info), s = timed(be, cluster, Xd, "affinity", None,
                                            {"damping": args.damping, "max_iter": 1000}, be, 0)
            labels = be.to_host(labels)
            labels_by[dev] = labels
            ami = adjusted_mutual_info(np.asarray(y), labels)
            report({"task": "affinity", "n": n, "device": dev, "twin": twin, "seconds": s,
                    "result": f"clusters={len(np.unique(labels))} AMI={ami:.4f}", "value": ami})
        if len(labels_by) == 2:
            agree = adjusted_mutual_info(labels_by["cpu"], labels_by["gpu"])
            rows[-1]["twin_agreement_ami"] = agree
            print(f"{'':>10} AMI between the twins' labels: {agree:.6f}")

    for n in args.sil_sizes:
        X, y = blobs(n, args.dim, args.k, seed=2)
        for metric in args.sil_metrics:
            silhouettes(X, y, n, metric, devices, args, report, rows)

    v = versions()
    tag = f"{device_name(devices)}-sklearn{v.get('scikit-learn', 'na')}"
    if "cupy-cuda13x" in v:
        tag += f"-cupy{v['cupy-cuda13x']}"
    out = Path(args.out) if args.out else RESULTS / f"metrics-{tag}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    fields = ["task", "n", "dim", "device", "twin", "seconds", "value", "twin_agreement_ami", "twin_rel_diff",
              "vs_sklearn", "sklearn_rel_diff"]
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({**r, "dim": args.dim})
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
