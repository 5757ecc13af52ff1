"""The label-free pick as gpuclust ships it (gpuclust/select: silhouette x consensus among runs within 20% of the asked
k, 50-resample bootstrap confidence) on the selection study's eight labelled sets: what it picks, what it loses against
the best run, and whether it says it is unsure. The study (benchmarks/study_selection.py) chose the rule with its own
script; this checks the library's implementation of it on the same candidates.

    GPUCLUST_CACHE=/tmp/select-cache python benchmarks/selection_product.py     # reads the study's cached spaces/labels

Each set x encoder's UMAP-50 space and each candidate's labels come from the study's cache (computed if missing, about
an hour on 2 cores); the k-taking candidates are asked for the number of classes, as a sweep on labelled data asks.
Writes benchmarks/results/selection-product-<machine>.csv and prints a markdown table.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_mutual_info_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
import selection_consensus as scons  # noqa: E402
import selection_sets as ss  # noqa: E402
import study_selection as study  # noqa: E402

from gpuclust.select import Candidate, pick  # noqa: E402


def one_set(name: str, encoders=ss.ENCODERS) -> dict:
    """The pick on one set's 18 candidates, with its AMI loss, confidence and timing."""
    labels = scons.candidate_labels(name, encoders, study.CANDIDATES)
    cands, ami = [], {}
    for enc in encoders:
        Z, y, _ = ss.umap_space(name, enc)
        n_classes = len(np.unique(y))
        for method, params, takes_k in study.CANDIDATES:
            cid = f"{name}|{enc}|{method}|{params}"
            lab = labels[cid]
            cands.append(Candidate.from_space(cid, Z.astype(np.float32), lab, k=n_classes if takes_k else None))
            ami[cid] = adjusted_mutual_info_score(y, lab)
    t0 = time.perf_counter()
    p = pick(cands)
    seconds = time.perf_counter() - t0
    best = max(ami, key=ami.get)
    sil_only = max(cands, key=lambda c: np.nan_to_num(c.silhouette, nan=0.0).mean()).id
    short = lambda cid: " ".join(cid.split("|")[1:3])  # noqa: E731
    return {"set": name, "pick": short(p.id), "n_clusters": next(c.n_clusters for c in cands if c.id == p.id),
            "classes": n_classes, "ami": ami[p.id], "best": short(best), "best_ami": ami[best],
            "lost": ami[best] - ami[p.id], "confidence": p.confidence, "margin": p.margin, "low": p.low,
            "silhouette_alone_lost": ami[best] - ami[sil_only], "pick_s": seconds}


def main() -> None:
    rows = [one_set(name) for name in ss.SETS]
    frame = pd.DataFrame(rows)
    out = study.RESULTS / f"selection-product-{study.machine()}.csv"
    frame.to_csv(out, index=False)
    print("| set | pick | clusters / classes | AMI | best AMI | lost | confidence | margin | low? | silhouette alone lost |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        margin = "-" if r["margin"] is None else f"{r['margin']:.1f}"
        print(f"| {r['set']} | {r['pick']} | {r['n_clusters']} / {r['classes']} | {r['ami']:.3f} | {r['best_ami']:.3f} "
              f"| {r['lost']:.3f} | {r['confidence']:.2f} | {margin} | {'low' if r['low'] else ''} | "
              f"{r['silhouette_alone_lost']:.3f} |")
    print(f"max loss {frame.lost.max():.3f}, mean {frame.lost.mean():.3f}; flagged {int(frame.low.sum())} of "
          f"{len(frame)}; every loss > 0.02 flagged: {bool((frame.low | (frame.lost <= 0.02)).all())}; "
          f"pick seconds per set (18 runs, bootstrap included): median {frame.pick_s.median():.2f}")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
