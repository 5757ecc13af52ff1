"""Density-based clustering validation (DBCV, Moulavi et al. 2014) as a label-free criterion, beside the silhouette, on
the selection study's candidates (benchmarks/study_selection.py): the issue asked for it for density clusterers, and
the study had left it out for want of an implementation. The `hdbscan` package's `validity_index` computes it (not a
gpuclust dependency: `pip install hdbscan` for this script only).

    GPUCLUST_CACHE=/tmp/select-cache python benchmarks/selection_dbcv.py     # reads the study's cached spaces/labels

For each set: DBCV of every candidate in its own UMAP-50 space (noise rows count against the score, as DBCV weighs
each cluster by its share of all rows), then, among the 9 HDBSCAN candidates (3 encoders x min_cluster_size 5 / 20 /
50) and among all 18, the Spearman correlation of DBCV and of silhouette_umap_all with AMI and the AMI each one's pick
loses. Writes benchmarks/results/selection-dbcv-<machine>.csv and prints the table.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
import selection_consensus as scons  # noqa: E402
import selection_sets as ss  # noqa: E402
import study_selection as study  # noqa: E402


def dbcv(Z: np.ndarray, labels: np.ndarray) -> float:
    """DBCV in [-1, 1]; -1 where it is undefined (fewer than 2 clusters)."""
    from hdbscan.validity import validity_index

    if len(np.unique(labels[labels >= 0])) < 2:
        return -1.0
    v = validity_index(Z.astype(np.float64), labels.astype(np.int64))
    return float(v) if np.isfinite(v) else -1.0


def candidates() -> pd.DataFrame:
    """One row per candidate of the study: set, encoder, clusterer, AMI, silhouette_umap_all, dbcv, seconds."""
    cand = pd.read_csv(next(study.RESULTS.glob("selection-candidates-*.csv")))
    out = []
    for name in ss.SETS:
        labels = scons.candidate_labels(name, ss.ENCODERS, study.CANDIDATES)
        for enc in ss.ENCODERS:
            Z, _, _ = ss.umap_space(name, enc)
            for _, r in cand[(cand.set == name) & (cand.encoder == enc)].iterrows():
                t0 = time.perf_counter()
                value = dbcv(Z, labels[r.cid])
                out.append({**r[["set", "encoder", "clusterer", "params", "n_clusters", "ami",
                                 "silhouette_umap_all"]].to_dict(), "dbcv": value,
                            "dbcv_s": time.perf_counter() - t0})
            print(f"  {name} {enc}: done", flush=True)
    return pd.DataFrame(out)


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per set and pool (HDBSCAN runs, all runs): Spearman with AMI and the AMI lost by each criterion's pick."""
    rows = []
    for name, g in frame.groupby("set", sort=False):
        for pool, sub in (("hdbscan", g[g.clusterer == "hdbscan"]), ("all", g)):
            row = {"set": name, "pool": pool, "runs": len(sub)}
            for crit in ("dbcv", "silhouette_umap_all"):
                rho = spearmanr(sub[crit], sub.ami).statistic
                row[f"{crit}_spearman"] = float(rho) if np.isfinite(rho) else np.nan
                row[f"{crit}_lost"] = float(sub.ami.max() - sub.ami.iloc[int(np.argmax(sub[crit].to_numpy()))])
            rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    frame = candidates()
    out = study.RESULTS / f"selection-dbcv-{study.machine()}.csv"
    frame.to_csv(out, index=False)
    summ = summary(frame)
    print("| set | pool | DBCV: Spearman / lost | silhouette_umap_all: Spearman / lost |")
    print("|---|---|---|---|")
    for _, r in summ.iterrows():
        print(f"| {r.set} | {r.pool} ({r.runs}) | {r.dbcv_spearman:.2f} / {r.dbcv_lost:.3f} | "
              f"{r.silhouette_umap_all_spearman:.2f} / {r.silhouette_umap_all_lost:.3f} |")
    for pool, g in summ.groupby("pool", sort=False):
        print(f"{pool}: DBCV max loss {g.dbcv_lost.max():.3f}, mean {g.dbcv_lost.mean():.3f}, mean Spearman "
              f"{g.dbcv_spearman.mean():.2f}; silhouette max {g.silhouette_umap_all_lost.max():.3f}, mean "
              f"{g.silhouette_umap_all_lost.mean():.3f}, mean Spearman {g.silhouette_umap_all_spearman.mean():.2f}")
    print(f"DBCV seconds per candidate (2,000 rows, 50-d): median {frame.dbcv_s.median():.2f}")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
