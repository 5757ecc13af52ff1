"""`--k auto` in the selection study: k = 2..kmax for KMeans (gpuclust's cluster stage, n_init 1, seed 0) and ward
(scipy's ward tree cut at each k: the partition scikit-learn's AgglomerativeClustering(linkage="ward") gives, one
tree per row set instead of one fit per k) on each set x encoder's UMAP-50 space, each k scored by AMI and the
label-free criteria; then each criterion's chosen k against the true number of classes.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.cluster.hierarchy import fcluster, ward
from sklearn.metrics import adjusted_rand_score, pairwise_distances

import selection_criteria as sc
import selection_sets as ss

N_SUB = 3  # subsamples per k for stability (5 in the main study; 3 here keeps 29 values of k affordable)


def _ward_all(Z, ks) -> dict[int, np.ndarray]:
    tree = ward(Z)
    return {k: fcluster(tree, k, criterion="maxclust") - 1 for k in ks}


def _labels_all(Z, method, ks, seed) -> dict[int, np.ndarray]:
    if method == "agglomerative":
        return _ward_all(Z, ks)
    return {k: sc.fit(Z, "kmeans", k, {}, seed) for k in ks}


def sweep(name: str, encoder: str, method: str, kmax: int) -> tuple[list[dict], np.ndarray]:
    """One row per k (AMI, silhouette, stability, prediction strength, seconds) and (k, rows) per-row silhouettes."""
    Z, y, _ = ss.umap_space(name, encoder)
    ks = list(range(2, kmax + 1))
    D = pairwise_distances(Z)
    full, fit_s = sc.timed(_labels_all, Z, method, ks, 0)
    subs = sc.subsamples(len(Z), n_sub=N_SUB)
    (refits, halves), stab_s = sc.timed(lambda: ([_labels_all(Z[r], method, ks, i + 1) for i, r in enumerate(subs)],
                                                 _halves(Z, method, ks)), )
    rows, sil_rows = [], []
    for k in ks:
        s, sil_s = sc.timed(sc.silhouette_rows, Z, full[k], D)
        sil_rows.append(s)
        aris = [adjusted_rand_score(full[k][r], refits[i][k]) for i, r in enumerate(subs)]
        rows.append(dict(set=name, encoder=encoder, clusterer=method, k=k, n_classes=len(np.unique(y)),
                         ami=sc.ami(y, full[k]), silhouette_umap_all=float(s.mean()), stability=float(np.mean(aris)),
                         prediction_strength=_ps(Z, halves, k), fit_s=fit_s / len(ks), silhouette_s=sil_s,
                         stability_and_ps_s=stab_s / len(ks)))
    return rows, np.stack(sil_rows)


def _add_label_scores(name, encoder, method, rows) -> list[dict]:
    """Calinski-Harabasz, Davies-Bouldin and the modularity on the 15-NN graph, in the UMAP space, for each k's
    labels (refitted with the same seed: the same labels)."""
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score

    Z, _, _ = ss.umap_space(name, encoder)
    labels = _labels_all(Z, method, [r["k"] for r in rows], 0)
    A, graph_s = sc.timed(sc.knn_graph, Z)
    out = []
    for r in rows:
        q, q_s = sc.timed(sc.modularity, A, labels[r["k"]])
        out.append({**r, "calinski_harabasz": float(calinski_harabasz_score(Z, labels[r["k"]])),
                    "davies_bouldin": float(davies_bouldin_score(Z, labels[r["k"]])), "knn_modularity": q,
                    "knn_modularity_s": q_s + graph_s / len(rows)})
    return out


def _halves(Z, method, ks):
    perm = np.random.default_rng(2000).permutation(len(Z))
    hs = [np.sort(perm[: len(Z) // 2]), np.sort(perm[len(Z) // 2:])]
    return hs, [_labels_all(Z[h], method, ks, 7 + i) for i, h in enumerate(hs)]


def _ps(Z, halves, k) -> float:
    hs, fits = halves
    return float(np.mean([sc._ps_one(Z[hs[a]], fits[a][k], Z[hs[b]], fits[b][k]) for a, b in ((0, 1), (1, 0))]))


def choose(frame: pd.DataFrame, sil_rows: np.ndarray, b: int = 50) -> dict[str, tuple[int, float]]:
    """Each criterion's k and its bootstrap confidence (share of row resamples choosing the same k; stability and
    prediction strength, which the row bootstrap does not move, get none)."""
    ks = frame["k"].to_numpy()
    sil, stab, ps = (frame[c].to_numpy() for c in ("silhouette_umap_all", "stability", "prediction_strength"))
    boot = sil_rows[:, sc.bootstrap_rows(sil_rows.shape[1], b)].mean(axis=2).T  # (b, ks)
    first = lambda v: int(np.argmax(v))  # noqa: E731  (the smallest k on ties, as choose_k)
    out = {"silhouette": (ks[first(sil)], float((boot.argmax(1) == first(sil)).mean())),
           "stability": (ks[first(stab)], np.nan),
           "silhouette_x_stability": (ks[first(sil * stab)], np.nan)}
    out["calinski_harabasz"] = (ks[first(frame["calinski_harabasz"].to_numpy())], np.nan)
    out["davies_bouldin"] = (ks[first(-frame["davies_bouldin"].to_numpy())], np.nan)
    q = frame["knn_modularity"].to_numpy()
    out["knn_modularity"] = (ks[first(q)], np.nan)
    out["knn_modularity_knee_1pct"] = (ks[np.flatnonzero(q >= 0.99 * q.max()).min()], np.nan)
    strong = np.flatnonzero(ps >= 0.8)
    out["prediction_strength_0.8"] = (ks[strong.max()] if len(strong) else ks[first(ps)], np.nan)
    # The largest k whose silhouette is within 2 bootstrap standard deviations of the best k's (paired draws).
    best = first(sil)
    sd = (boot[:, [best]] - boot).std(axis=0, ddof=1)
    near = np.flatnonzero(sil >= sil[best] - 2 * sd)
    picks = [ks[near.max()]] + [ks[np.flatnonzero(bs >= bs[bs.argmax()] - 2 * sd).max()] for bs in boot]
    out["silhouette_largest_k_within_2sd"] = (picks[0], float(np.mean(np.asarray(picks[1:]) == picks[0])))
    return out


def run(sets, encoders, kmax: int, sweep_csv, summary_csv) -> pd.DataFrame:
    """The whole k sweep (every set x encoder x {kmeans, ward}), saved as two CSVs; returns the summary."""
    all_rows, summ = [], []
    for name in sets:
        for enc in encoders:
            for method in ("kmeans", "agglomerative"):
                part = ss.cache_dir() / "selection-kauto" / f"{name}-{enc}-{method}-{kmax}.pkl"
                if not part.exists():  # saved as each sweep finishes, so a rerun resumes
                    part.parent.mkdir(parents=True, exist_ok=True)
                    pd.to_pickle(sweep(name, enc, method, kmax), part)
                rows, sil_rows = pd.read_pickle(part)
                if "knn_modularity" not in rows[0]:  # parts saved before these were added
                    rows = _add_label_scores(name, enc, method, rows)
                    pd.to_pickle((rows, sil_rows), part)
                frame = pd.DataFrame(rows)
                all_rows += rows
                true_k = int(frame["n_classes"].iloc[0])
                ami_true = float(frame.loc[frame["k"] == true_k, "ami"].iloc[0]) if true_k <= kmax else np.nan
                for crit, (k, conf) in choose(frame, sil_rows).items():
                    a = float(frame.loc[frame["k"] == k, "ami"].iloc[0])
                    summ.append(dict(set=name, encoder=enc, clusterer=method, criterion=crit, true_k=true_k,
                                     chosen_k=int(k), within_20pct=abs(k - true_k) <= 0.2 * true_k,
                                     ami_true_k=ami_true, ami_chosen=a, loss_vs_true_k=ami_true - a,
                                     best_k=int(frame.loc[frame["ami"].idxmax(), "k"]),
                                     loss_vs_best_k=float(frame["ami"].max()) - a, confidence_share=conf))
                print(f"  k auto {name:16s} {enc:18s} {method:14s} true {true_k:2d} " + " ".join(
                    f"{c[:12]}={k}" for c, (k, _) in choose(frame, sil_rows).items()), flush=True)
    pd.DataFrame(all_rows).to_csv(sweep_csv, index=False)
    out = pd.DataFrame(summ)
    out.to_csv(summary_csv, index=False)
    return out


def markdown(summ: pd.DataFrame) -> str:
    """Per criterion: share of set x encoder x clusterer cases within +-20% of the true k, and AMI lost against the
    true k (median, max, share <= 0.05); then per set the silhouette's choices."""
    encs = ", ".join(dict.fromkeys(summ["encoder"]))
    lines = ["", f"## --k auto (k = 2..30, KMeans and ward, every set x encoder of: {encs})", "",
             "| criterion | within +-20% | loss vs true k: median | max | share <= 0.05 | cases |",
             "|---|---|---|---|---|---|"]
    for crit, g in summ.groupby("criterion", sort=False):
        lines.append(f"| {crit} | {g['within_20pct'].mean():.0%} | {g['loss_vs_true_k'].median():.3f} | "
                     f"{g['loss_vs_true_k'].max():.3f} | {(g['loss_vs_true_k'] <= 0.05).mean():.0%} | {len(g)} |")
    lines += ["", "| set | true k | " + " | ".join(dict.fromkeys(summ["criterion"])) + " |",
              "|---" * (2 + summ["criterion"].nunique()) + "|"]
    for name, g in summ.groupby("set", sort=False):
        cells = [" ".join(str(k) for k in gg["chosen_k"]) + f" ({gg['loss_vs_true_k'].max():+.2f})"
                 for _, gg in g.groupby("criterion", sort=False)]
        lines.append(f"| {name} | {g['true_k'].iloc[0]} | " + " | ".join(cells) + " |")
    lines.append(f"\nCells: chosen k per encoder x clusterer ({encs}; KMeans then ward each), and in brackets the "
                 "largest AMI lost against the true k.")
    return "\n".join(lines) + "\n"
