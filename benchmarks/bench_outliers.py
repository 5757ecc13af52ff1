"""Do the mixed-in images rank first? Outlier scores on collections of one kind with a few foreign images added.

Each case is a collection of real images with known answers, encoded by EfficientNet-Lite0 (the packaged encoder):

- `scattered`: ~200 images of one class and 6 of six other classes (one each) from the same dataset;
- `clump`: ~200 images of one class and 6 of one other class (the foreign images resemble each other);
- `foreign`: ~200 images of one class and 6 images from the other dataset (digits among clothes, clothes among digits);
- `mixed`: 100 images each of 5 classes and 6 of the other dataset (a collection of several kinds, not one).

over Fashion-MNIST (test split) and scikit-learn's 8x8 digits, every class in turn as the main one. Each score is
measured by the precision of its top N (N = the 6 mixed in) and the ROC-AUC of the whole ranking:

- `knnX_k{k}`: cosine distance to the k-th nearest neighbour in the encoder's space (gpuclust's score);
- `meanknnX_k10`: mean cosine distance to the 10 nearest;
- `knnZ_k{k}`: euclidean distance to the k-th nearest neighbour in the clustered space Z (UMAP-50, as a default run);
- `silhouetteZ`: minus the row's silhouette in Z under KMeans with k chosen by silhouette (`--k auto`, 2-10);
- `centroidX`: cosine distance to the mean of the row's cluster, in X.

It prints a table (means over the cases, and the worst case's top-N precision) and saves a CSV under
benchmarks/results/. About 7 minutes on 2 cores (shared), most of it UMAP; the embeddings come from the store after the first
run.

    python benchmarks/bench_outliers.py
    python benchmarks/bench_outliers.py --classes 3 --kinds clump   # a quick look
"""
from __future__ import annotations

import argparse
import csv
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
N_MIXED = 6
N_MAIN = 200
KS = (1, 5, 10, 20)
KINDS = ("scattered", "clump", "foreign", "mixed")


def pools(per_class: int) -> dict:
    """family -> (embeddings, labels): the first `per_class` images of each class, encoded once (the store keeps
    them between runs)."""
    import gpuclust as gc

    out = {}
    for family in ("fashion-mnist", "digits"):
        ds = gc.load_dataset(family)
        rows = np.concatenate([np.flatnonzero(ds.labels == c)[:per_class] for c in range(10)])
        part = ds.take(rows)
        X, kept = gc.embed(part, "efficientnet_lite0", device="cpu", progress=False, return_rows=True)
        out[family] = (np.asarray(X, dtype=np.float32), np.asarray(part.labels)[kept])
    return out


def case_rows(kind: str, main: int, y: np.ndarray, y_other: np.ndarray, rng) -> tuple:
    """(rows of this family, rows of the other family): the collection of a case, the mixed-in rows last."""
    def some(labels, c, n):
        return rng.choice(np.flatnonzero(labels == c), n, replace=False)

    others = [c for c in range(10) if c != main]
    if kind == "mixed":
        mains = [main, *rng.choice(others, 4, replace=False)]
        return np.concatenate([some(y, c, 100) for c in mains]), rng.choice(len(y_other), N_MIXED, replace=False)
    base = some(y, main, min(N_MAIN, int((y == main).sum())))
    if kind == "scattered":
        return np.concatenate([base, *[some(y, c, 1) for c in rng.choice(others, N_MIXED, replace=False)]]), []
    if kind == "clump":
        return np.concatenate([base, some(y, int(rng.choice(others)), N_MIXED)]), []
    return base, rng.choice(len(y_other), N_MIXED, replace=False)


def scores(X: np.ndarray, seed: int) -> dict:
    """variant -> one score per row (higher: more of an outlier)."""
    import gpuclust as gc
    from gpuclust.backend import cpu_backend
    from gpuclust.curate.neighbours import top_k_cosine, unit_rows
    from gpuclust.curate.outliers import row_silhouette

    backend = cpu_backend()
    out = {f"knnX_k{k}": gc.outlier_scores(X, k=k, device="cpu") for k in KS}
    out["meanknnX_k10"] = 1 - top_k_cosine(backend, unit_rows(backend, X), 10)[1].mean(axis=1)
    model = gc.Clusterer(n_clusters="auto", k_range=(2, 10), device="cpu", random_state=seed).fit(X)
    Z, labels = model.embedding_, model.labels_
    out.update({f"knnZ_k{k}": knn_euclidean(Z, k) for k in KS})
    s = row_silhouette(backend, Z, labels)
    out["silhouetteZ"] = -s if s is not None else np.zeros(len(X))
    out["centroidX"] = centroid_distance(X, labels)
    return out


def knn_euclidean(Z: np.ndarray, k: int) -> np.ndarray:
    """Distance to the k-th nearest other row (euclidean: UMAP's output is not centred, so cosine means little)."""
    from sklearn.neighbors import NearestNeighbors

    dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(Z).kneighbors(Z)
    return dist[:, k]


def centroid_distance(X: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cosine distance of each row to the mean of its cluster."""
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    out = np.empty(len(X))
    for c in np.unique(labels):
        m = labels == c
        centre = U[m].mean(axis=0)
        out[m] = 1 - U[m] @ (centre / np.linalg.norm(centre))
    return out


def quality(score: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(precision of the top N, ROC-AUC), N = the number of true outliers."""
    from sklearn.metrics import roc_auc_score

    n = int(truth.sum())
    top = np.argsort(-score, kind="stable")[:n]
    return float(truth[top].mean()), float(roc_auc_score(truth, score))


def run_case(data: dict, family: str, kind: str, main: int, seed: int) -> list[dict]:
    """One collection: every variant's quality."""
    X, y = data[family]
    other = "digits" if family == "fashion-mnist" else "fashion-mnist"
    X_other, y_other = data[other]
    rng = np.random.default_rng([seed, main, KINDS.index(kind)])
    own, foreign = case_rows(kind, main, y, y_other, rng)
    rows = np.vstack([X[own], X_other[foreign]]) if len(foreign) else X[own]
    truth = np.zeros(len(rows), dtype=bool)
    truth[-N_MIXED:] = True
    out = []
    for variant, s in scores(rows, seed).items():
        p, auc = quality(np.asarray(s, dtype=np.float64), truth)
        out.append(dict(family=family, kind=kind, main=main, variant=variant, rows=len(rows), precision=p, auc=auc))
    return out


def summarise(cases: list[dict]) -> list[dict]:
    """Means over the cases of each family, kind and variant (and over all of them), with the worst precision."""
    keys = sorted({(c["family"], c["kind"], c["variant"]) for c in cases})
    keys += sorted({("all", "all", c["variant"]) for c in cases})
    out = []
    for fam, kind, var in keys:
        sel = [c for c in cases if c["variant"] == var and fam in ("all", c["family"]) and kind in ("all", c["kind"])]
        p, a = np.array([c["precision"] for c in sel]), np.array([c["auc"] for c in sel])
        out.append(dict(family=fam, kind=kind, variant=var, cases=len(sel), precision_top_n=round(p.mean(), 4),
                        precision_worst=round(p.min(), 4), auc=round(a.mean(), 4), auc_worst=round(a.min(), 4)))
    return out


def print_table(summary: list[dict]) -> None:
    cols = list(summary[0])
    print("  ".join(f"{c:>15}" for c in cols))
    for r in summary:
        print("  ".join(f"{r[c]:>15}" for c in cols))


def result_path() -> Path:
    v = {p: metadata.version(p) for p in ("scikit-learn", "umap-learn", "torch")}
    return RESULTS / (f"outliers-cpu2-{platform.machine()}-efficientnet_lite0-sklearn{v['scikit-learn']}-"
                      f"umap{v['umap-learn']}-torch{v['torch'].split('+')[0]}.csv")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=10, help="main classes per family (0 .. N-1)")
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="CSV path (default: benchmarks/results/outliers-...)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    data = pools(N_MAIN + N_MIXED)
    print(f"encoded in {time.perf_counter() - t0:.0f} s", flush=True)
    cases = []
    for family in data:
        for kind in args.kinds:
            for main_class in range(args.classes):
                cases += run_case(data, family, kind, main_class, args.seed)
        print(f"{family}: done at {time.perf_counter() - t0:.0f} s", flush=True)
    summary = summarise(cases)
    print_table(summary)
    path = args.out or result_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(summary[0]))
        w.writeheader()
        w.writerows(summary)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
