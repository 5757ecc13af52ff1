"""UMAP's number of epochs: what the library's own default costs against a fixed 200, and what it changes downstream.

umap-learn (and cuML) choose 500 epochs for graphs of at most 10,000 rows and 200 above; the SGD epochs of a seeded
umap-learn fit run on one thread, so on the CPU twin the default job's 10,000 rows pay 2.5x the epochs of 10,001.
This times the UMAP-50 fit of each labelled set x encoder with n_epochs=None (the library's choice) and with 200,
at two seeds, and clusters each space with KMeans and ward (asked for the number of classes) and HDBSCAN (its
defaults), as the pipeline does.

    GPUCLUST_CACHE=/tmp/select-cache python benchmarks/bench_umap_epochs.py [--sets ...] [--encoders ...]

Sets: the selection study's eight sets of at most 2,000 rows (benchmarks/selection_sets.py), MNIST's 5,000 rows
(mnist5k) and Fashion-MNIST's 10,000 test rows (the default job's data). Embeddings come from the store under
$GPUCLUST_CACHE (encoded if missing). Prints a table per set and a summary with the AMI difference (200 minus the
library's) per clusterer; writes benchmarks/results/umap-epochs-<machine>.csv.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_mutual_info_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
import selection_sets as ss  # noqa: E402
import study_selection as study  # noqa: E402

EPOCHS = (None, 200)
CLUSTERERS = (("kmeans", True), ("agglomerative", True), ("hdbscan", False))


def _full(name: str):
    import gpuclust as gc

    return gc.load_dataset(name)


SETS = {**{k: v[0] for k, v in ss.SETS.items()},
        "mnist5k": lambda: _full("mnist5k"), "fashion-mnist": lambda: _full("fashion-mnist")}


def one(name: str, encoder: str, seeds) -> list[dict]:
    import gpuclust as gc

    ds = SETS[name]()
    X, rows = gc.embed(ds, encoder=encoder, device="cpu", cache_dir=str(ss.cache_dir()), progress=False,
                       return_rows=True)
    X = np.asarray(X)
    y = np.asarray(ds.labels)[np.asarray(rows)]
    k = len(np.unique(y))
    out = []
    for seed in seeds:
        for epochs in EPOCHS:
            model = gc.Clusterer(reducer="umap", n_components=50, clusterer=None, device="cpu", random_state=seed,
                                 reducer_params={"n_neighbors": 30, "min_dist": 0.0, "n_epochs": epochs})
            t0 = time.perf_counter()
            Z = np.asarray(model.fit_transform(X))
            umap_s = time.perf_counter() - t0
            row = {"set": name, "encoder": encoder, "rows": len(X), "classes": k, "seed": seed,
                   "n_epochs": "library" if epochs is None else epochs, "umap_s": umap_s}
            for method, takes_k in CLUSTERERS:
                c = gc.Clusterer(reducer="none", clusterer=method, n_clusters=k if takes_k else None, device="cpu",
                                 random_state=seed)
                row[f"ami_{method}"] = adjusted_mutual_info_score(y, c.fit_predict(Z))
            out.append(row)
            print(" ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="+", default=list(SETS))
    ap.add_argument("--encoders", nargs="+", default=list(ss.ENCODERS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    rows = [r for name in a.sets for enc in a.encoders for r in one(name, enc, a.seeds)]
    frame = pd.DataFrame(rows)
    out = Path(a.out) if a.out else study.RESULTS / f"umap-epochs-{study.machine()}.csv"
    frame.to_csv(out, index=False)
    amis = [f"ami_{m}" for m, _ in CLUSTERERS]
    wide = frame.pivot_table(index=["set", "encoder", "rows", "seed"], columns="n_epochs",
                             values=["umap_s", *amis])
    print("\n| set | encoder | rows | UMAP s, library | UMAP s, 200 | speed-up | "
          + " | ".join(f"{m} AMI library / 200" for m, _ in CLUSTERERS) + " |")
    print("|---|---|---|---|---|---|" + "---|" * len(CLUSTERERS))
    mean = wide.groupby(level=["set", "encoder", "rows"]).mean()
    for (s, e, n), r in mean.iterrows():
        lib, fixed = r[("umap_s", "library")], r[("umap_s", 200)]
        cells = " | ".join(f"{r[(m, 'library')]:.3f} / {r[(m, 200)]:.3f}" for m in amis)
        print(f"| {s} | {e} | {n} | {lib:.1f} | {fixed:.1f} | {lib / fixed:.2f}x | {cells} |")
    print("\nAMI with 200 epochs minus the library's (per set x encoder x seed):")
    print("| clusterer | mean | median | min | max | cases |")
    print("|---|---|---|---|---|---|")
    for m in amis:
        d = (wide[(m, 200)] - wide[(m, "library")]).to_numpy()
        print(f"| {m[4:]} | {d.mean():+.4f} | {np.median(d):+.4f} | {d.min():+.4f} | {d.max():+.4f} | {len(d)} |")
    small = mean[mean.index.get_level_values("rows") <= 10000]
    print(f"\nUMAP seconds at most 10,000 rows: library {small[('umap_s', 'library')].sum():.1f}, "
          f"200 epochs {small[('umap_s', 200)].sum():.1f}")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
