"""The study's protocol through gpuclust, a whole process per clusterer, optionally beside the study's own code.

The protocol of zs-ssl-clustering (Lowe et al. 2024, "An Empirical Study into Clustering of Unseen Datasets with
Self-Supervised Encoders"): the encoder's embeddings -> UMAP to 50 dimensions (n_neighbors 30, min_dist 0, seeded)
-> one clusterer per run (KMeans with k = the number of classes, agglomerative ward with the same k, HDBSCAN with
min_cluster_size 5, Affinity Propagation) scored by AMI/ARI/NMI and silhouettes in the UMAP space and the original
space with euclidean, l1, chebyshev and cosine distances. Each run here is `python -m gpuclust.run --dataset
embeddings:PATH ...` in a fresh process, timed from start to exit (imports, report and all), on one set's stored
embeddings: by default the first 2,000 Fashion-MNIST test images through EfficientNet-Lite0, read from the embedding
store (encoded first if the store lacks them).

`--reference DIR` also runs the study's `python -m zs_ssl_clustering.cluster` from a checkout at DIR (it needs
numpy, scikit-learn, umap-learn, psutil and torch, which gpuclust's environment has) on the same vectors, with the
same settings where the two expose them, and prints the ratio of wall times. The reference computes more
silhouettes than gpuclust (ground truth and predictions, several normalisations of each space, each distance), which
is part of what its time buys.

    python benchmarks/bench_study.py [--limit 2000] [--repeats 2] [--reference /tmp/zs-ssl-clustering]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# The settings both sides share: gpuclust's defaults for UMAP are the study's (50 dims, 30 neighbours, min_dist 0),
# but for the epochs: the study leaves them to umap-learn (500 for these 2,000 rows), so this asks for the same.
COMMON = ["--reduce", "umap", "--dims", "50", "--reduce-param", "n_epochs=null", "--silhouette-original",
          "--silhouette-metrics", "euclidean,l1,chebyshev,cosine", "--map", "none", "--gallery", "0", "--seed", "0"]
REF_COMMON = ["--partition", "test", "--dim-reducer-man", "UMAP", "--ndim-reduced-man", "50",
              "--dim-reducer-man-nn", "30", "--seed", "0", "--no-save-pred", "--disable-wandb"]
# name: (gpuclust flags, the reference's flags). Affinity Propagation: damping 0.9 on both (the reference's own
# default is 0.5), its max_iter 1000 and convergence_iter 15; KMeans: n_init 1, max_iter 1000 as the reference.
CLUSTERERS = {
    "kmeans": (["--cluster", "kmeans", "--cluster-param", "n_init=1", "--cluster-param", "max_iter=1000"],
               ["--clusterer-name", "KMeans", "--max-iter", "1000"]),
    "agglomerative_ward": (["--cluster", "agglomerative", "--cluster-param", "linkage=ward"],
                           ["--clusterer-name", "AgglomerativeClustering", "--aggclust-linkage", "ward"]),
    "hdbscan": (["--cluster", "hdbscan", "--cluster-param", "min_cluster_size=5"],
                ["--clusterer-name", "HDBSCAN", "--min-samples", "5"]),
    "affinity": (["--cluster", "affinity", "--cluster-param", "damping=0.9", "--cluster-param", "max_iter=1000",
                  "--cluster-param", "convergence_iter=15"],
                 ["--clusterer-name", "AffinityPropagation", "--affinity-damping", "0.9", "--max-iter", "1000",
                  "--affinity-conv-iter", "15"]),
}
REF_DATASET, ENCODER = "fashionmnist", "efficientnet_lite0"


def write_embeddings(work: Path, limit: int) -> Path:
    """The set's embeddings from gpuclust's store as `emb.npy` + `emb.labels.npy` (gpuclust's `embeddings:` source)
    and as the reference's `test__z1.0/fashionmnist__efficientnet_lite0.npz` (embeddings, y_true)."""
    import gpuclust
    from gpuclust.data import load_dataset

    X, rows = gpuclust.embed("fashion-mnist", ENCODER, limit=limit, progress=False, return_rows=True)
    y = np.asarray(load_dataset("fashion-mnist", limit).labels)[rows].astype(np.int64)
    X = np.ascontiguousarray(X, dtype=np.float32)
    work.mkdir(parents=True, exist_ok=True)
    np.save(work / "emb.npy", X)
    np.save(work / "emb.labels.npy", y)
    ref = work / "reference" / "test__z1.0"
    ref.mkdir(parents=True, exist_ok=True)
    np.savez(ref / f"{REF_DATASET}__{ENCODER}.npz", embeddings=X, y_true=y)
    print(f"embeddings: {X.shape[0]} x {X.shape[1]}, {len(np.unique(y))} classes -> {work}", flush=True)
    return work / "emb.npy"


def timed(cmd: list[str], cwd: Path, env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    """(wall seconds, finished process) of `cmd`; a failure stops the benchmark with its stderr."""
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"{' '.join(cmd[:4])} ... failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return wall, res


def run_gpuclust(name: str, npy: Path, out: Path) -> dict:
    """One gpuclust process: wall seconds, its metrics and its own stage seconds."""
    cmd = [sys.executable, "-m", "gpuclust.run", "--dataset", f"embeddings:{npy}", *COMMON, *CLUSTERERS[name][0],
           "--output", str(out), "-q"]
    wall, _ = timed(cmd, ROOT)
    m = json.loads((out / "metrics.json").read_text())
    t = json.loads((out / "timings.json").read_text())
    return {"wall_s": round(wall, 2), "ami": m["ami"], "ari": m["ari"], "n_clusters": m["n_clusters"],
            "reduce_s": t.get("reduce"), "cluster_s": t.get("cluster"), "evaluate_s": t.get("evaluate")}


def run_reference(name: str, checkout: Path, work: Path) -> dict:
    """One run of the study's cluster.py on the same vectors: wall seconds and the scores it prints."""
    cmd = [sys.executable, "-m", "zs_ssl_clustering.cluster", "--dataset", REF_DATASET, "--model", ENCODER,
           "--embedding-dir", str(work / "reference"), *REF_COMMON, *CLUSTERERS[name][1]]
    wall, res = timed(cmd, checkout, {"PYTHONPATH": str(checkout)})
    scores = dict(re.findall(r"^\s+(AMI|ARI|num_cluster_pred)\s\.+\s+([-\d.]+)", res.stdout, re.M))
    return {"wall_s": round(wall, 2), "ami": float(scores["AMI"]) if "AMI" in scores else None,
            "ari": float(scores["ARI"]) if "ARI" in scores else None,
            "n_clusters": int(float(scores["num_cluster_pred"])) if "num_cluster_pred" in scores else None}


def measure(names: list[str], npy: Path, work: Path, repeats: int, reference: Path | None) -> list[dict]:
    """Every clusterer on each side, `repeats` times, interleaved so that machine load falls on both alike."""
    rows = []
    for rep in range(repeats):
        for name in names:
            g = run_gpuclust(name, npy, work / "runs" / f"{name}-{rep}")
            rows.append({"clusterer": name, "tool": "gpuclust", "repeat": rep, **g})
            print(f"gpuclust  {name:<20} {g['wall_s']:7.2f} s  AMI {g['ami']:.4f}", flush=True)
            if reference is not None:
                r = run_reference(name, reference, work)
                rows.append({"clusterer": name, "tool": "reference", "repeat": rep, **r})
                print(f"reference {name:<20} {r['wall_s']:7.2f} s  AMI {r['ami']}", flush=True)
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """Per clusterer: the median wall time and the AMI of each side, and the reference's time over gpuclust's."""
    out = []
    for name in dict.fromkeys(r["clusterer"] for r in rows):
        line = {"clusterer": name}
        for tool in ("gpuclust", "reference"):
            mine = [r for r in rows if r["clusterer"] == name and r["tool"] == tool]
            if mine:
                line[f"{tool}_s"] = statistics.median(r["wall_s"] for r in mine)
                line[f"{tool}_ami"] = mine[0]["ami"]
        if "reference_s" in line:
            line["ratio"] = line["reference_s"] / line["gpuclust_s"]
        out.append(line)
    return out


def print_table(lines: list[dict]) -> None:
    """The summary as a Markdown table (README-ready)."""
    ref = any("reference_s" in x for x in lines)
    head = "| clusterer | gpuclust [s] | AMI |" + (" cluster.py [s] | AMI | ratio |" if ref else "")
    print("\n" + head)
    print("|" + "---|" * (head.count("|") - 1))
    for x in lines:
        cells = [x["clusterer"], f"{x['gpuclust_s']:.1f}", f"{x['gpuclust_ami']:.4f}"]
        if ref:
            ami = x.get("reference_ami")
            cells += [f"{x.get('reference_s', float('nan')):.1f}", "-" if ami is None else f"{ami:.4f}",
                      f"{x.get('ratio', float('nan')):.2f}x"]
        print("| " + " | ".join(cells) + " |")


def results_path() -> Path:
    """benchmarks/results/study-<machine>-<versions>.csv, named like the other results."""
    import sklearn
    import umap

    return RESULTS / (f"study-cpu{os.cpu_count()}-{platform.machine()}-{ENCODER}-sklearn{sklearn.__version__}-"
                      f"umap{umap.__version__}.csv")


def save(rows: list[dict], path: Path) -> None:
    """Every measured run, one CSV row each."""
    fields = ["clusterer", "tool", "repeat", "wall_s", "ami", "ari", "n_clusters", "reduce_s", "cluster_s",
              "evaluate_s"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows({k: r.get(k) for k in fields} for r in rows)
    print(f"\nwrote {path}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--limit", type=int, default=2000, help="the first N Fashion-MNIST test images (default 2000)")
    p.add_argument("--clusterers", nargs="+", default=list(CLUSTERERS), choices=list(CLUSTERERS))
    p.add_argument("--repeats", type=int, default=1, help="runs per clusterer and side; the table shows the median")
    p.add_argument("--reference", type=Path, help="a checkout of zs-ssl-clustering to run its cluster.py from")
    p.add_argument("--work", type=Path, default=Path("/tmp/gpuclust-bench-study"), help="embeddings and runs")
    p.add_argument("--out", type=Path, help="CSV (default benchmarks/results/study-<machine>-<versions>.csv)")
    args = p.parse_args(argv)
    npy = write_embeddings(args.work, args.limit)
    rows = measure(args.clusterers, npy, args.work, args.repeats, args.reference)
    print_table(summary(rows))
    save(rows, args.out or results_path())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
