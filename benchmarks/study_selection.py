"""The label-free selection study (issue 24): which criterion picks the run a user would want, without labels.

On each labelled set of benchmarks/selection_sets.py and each offline encoder (pixels, EfficientNet-Lite0,
MobileNetV2): UMAP to 50 dimensions (30 neighbours, min_dist 0, seed 0), then the candidates (KMeans and ward with
k = the number of classes, HDBSCAN with min_cluster_size 5 / 20 / 50, a Gaussian mixture with k classes). Each
candidate gets its AMI and the label-free criteria: the silhouette in UMAP space over all rows (noise 0;
`silhouette_umap_all`, today's pick), its z-score within the clusterer family, stability (ARI to refits on 5 x 80%
subsamples with another seed), prediction strength, kNN-graph modularity, the silhouette averaged over every
encoder's space, consensus (mean ARI to the set's other candidates), each also restricted to runs within 20% of the
requested k, and combinations. For every criterion and set: Spearman with
AMI across the set's candidates, the AMI lost by its pick, and its confidence (the share of 50 paired bootstrap
resamples of the rows where the pick stays first; the margin to the runner-up in bootstrap standard deviations).
`--k auto` is studied separately (benchmarks/selection_kauto.py): k = 2..30 for KMeans and ward.

    GPUCLUST_CACHE=/tmp/select-cache nice -n 19 python benchmarks/study_selection.py            # everything
    python benchmarks/study_selection.py --phase summary          # tables and figure again (needs the cache dir)
    python benchmarks/study_selection.py --sets digits --encoders pixels --phase candidates    # a quick check

Writes benchmarks/results/selection-{candidates,criteria,kauto-sweep,kauto}-<machine>.csv,
benchmarks/results/selection-tables.md (the tables of docs/selection-study.md) and docs/selection-study.png.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata, spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
import selection_consensus as scons  # noqa: E402
import selection_criteria as sc  # noqa: E402
import selection_sets as ss  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# (clusterer, its parameters, whether it takes k = the number of classes)
CANDIDATES = [
    ("kmeans", {}, True),
    ("agglomerative", {"linkage": "ward"}, True),
    ("gaussian_mixture", {}, True),
    ("hdbscan", {"min_cluster_size": 5}, False),
    ("hdbscan", {"min_cluster_size": 20}, False),
    ("hdbscan", {"min_cluster_size": 50}, False),
]
B = 50  # bootstrap resamples for the confidence


def machine() -> str:
    """A tag for result files: cores and architecture, and the library versions that set the numbers."""
    import sklearn
    import umap

    return f"cpu{os.cpu_count()}-{platform.machine()}-sklearn{sklearn.__version__}-umap{umap.__version__}"


def csv_path(kind: str) -> Path:
    return RESULTS / f"selection-{kind}-{machine()}.csv"


# --- candidates -----------------------------------------------------------------------------------------------------

def candidate_rows(name: str, encoder: str) -> tuple[list[dict], dict]:
    """One row per candidate of a set x encoder (AMI, criteria, seconds) and {candidate id: per-row silhouettes,
    stability ARIs} for the bootstrap."""
    from sklearn.metrics import pairwise_distances

    Z, y, prep = ss.umap_space(name, encoder)
    n_classes = len(np.unique(y))
    D = pairwise_distances(Z)
    rows, draws = [], {}
    for method, params, takes_k in CANDIDATES:
        k = n_classes if takes_k else None
        labels, fit_s = sc.timed(sc.fit, Z, method, k, params, 0)
        refit = lambda r, seed: sc.fit(Z[r], method, k, params, seed)  # noqa: E731
        s, sil_s = sc.timed(sc.silhouette_rows, Z, labels, D)
        aris, stab_s = sc.timed(sc.stability, Z, labels, refit)
        ps, ps_s = sc.timed(sc.prediction_strength, Z, refit)
        cid = f"{name}|{encoder}|{method}|{params}"
        draws[cid] = (s, np.asarray(aris))
        rows.append(dict(set=name, encoder=encoder, clusterer=method, params=str(params or ""), family=method,
                         k=k, n_classes=n_classes, n_clusters=int(len(np.unique(labels[labels >= 0]))),
                         noise_fraction=float((labels < 0).mean()), ami=sc.ami(y, labels),
                         silhouette_umap_all=float(s.mean()), stability=float(np.mean(aris)),
                         stability_sd=float(np.std(aris)), prediction_strength=ps,
                         fit_s=fit_s, silhouette_s=sil_s, stability_s=stab_s, prediction_strength_s=ps_s,
                         embed_s=prep["embed_s"], umap_s=prep["umap_s"], cid=cid))
        print(f"  {name:16s} {encoder:18s} {method:16s} {str(params):26s} k={rows[-1]['n_clusters']:2d} "
              f"ami {rows[-1]['ami']:.3f} sil {s.mean():.3f} stab {np.mean(aris):.3f} ps {ps:.3f}", flush=True)
    return rows, draws


def run_candidates(sets, encoders) -> tuple[pd.DataFrame, dict]:
    """Every candidate of every set x encoder; the draws are saved beside the CSV (npz) for the bootstrap."""
    rows, draws = [], {}
    for name in sets:
        for enc in encoders:
            part = ss.cache_dir() / "selection-candidates" / f"{name}-{enc}.pkl"
            if not part.exists():  # each set x encoder is saved as it finishes, so a rerun resumes
                part.parent.mkdir(parents=True, exist_ok=True)
                pd.to_pickle(candidate_rows(name, enc), part)
            r, d = pd.read_pickle(part)
            rows += r
            draws.update(d)
    return pd.DataFrame(rows), draws


def save_draws(draws: dict, path: Path) -> None:
    np.savez_compressed(path, **{f"s::{k}": v[0] for k, v in draws.items()},
                        **{f"a::{k}": v[1] for k, v in draws.items()})


def load_draws(path: Path) -> dict:
    f = np.load(path, allow_pickle=False)
    return {k[3:]: (f[k], f["a::" + k[3:]]) for k in f.files if k.startswith("s::")}


# --- criteria -------------------------------------------------------------------------------------------------------

def _zscore_within(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    out = np.zeros_like(values, dtype=float)
    for g in np.unique(groups):
        m = groups == g
        sd = values[m].std()
        out[m] = (values[m] - values[m].mean()) / sd if sd > 0 else 0.0
    return out


def _rank01(v: np.ndarray) -> np.ndarray:
    return (rankdata(v) - 1) / max(len(v) - 1, 1)


def _encoder_first(sil: np.ndarray, enc: np.ndarray, within: np.ndarray) -> np.ndarray:
    """Pick the encoder by the mean silhouette of its candidates, then the candidate by `within` (lexicographic)."""
    means = {e: sil[enc == e].mean() for e in np.unique(enc)}
    order = rankdata([means[e] for e in enc], method="dense")
    return order * 10.0 + _rank01(within)


def criteria(v: dict, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Every criterion's score for a set's candidates (higher is better), from the ingredients `v` (silhouette: mean
    per row, noise 0; stability; prediction strength; cross-space silhouette; consensus to all and to the other
    encoders; modularity); `frame` gives family, encoder and numbers of clusters."""
    sil, stab, cons, q = v["sil"], v["stab"], v["cons"], v["q"]
    fam, enc = frame["family"].to_numpy(), frame["encoder"].to_numpy()
    # The granularity the user asked for: k-taking clusterers were given k (here the number of classes, as a sweep on
    # labelled data takes it; on unlabelled data the user's --k or --k auto's); a candidate whose number of clusters
    # is more than 20% off that k ranks below every one within it.
    k_given = frame["n_classes"].to_numpy()
    demote = np.where(np.abs(frame["n_clusters"].to_numpy() - k_given) > 0.2 * k_given, -10.0, 0.0)
    return {
        "silhouette_umap_all": sil,
        "silhouette_family_z": _zscore_within(sil, fam),
        "stability": stab,
        "prediction_strength": v["ps"],
        "silhouette_x_stability": sil * stab,
        "rank_mean_sil_stab": _rank01(sil) + _rank01(stab),
        "knn_modularity": q,
        "silhouette_x_modularity": sil * q,
        "cross_space_silhouette": v["cross"],
        "consensus_mean_ari": cons,
        "consensus_other_encoders": v["cons_other"],
        "silhouette_x_consensus": sil * cons,
        "cross_space_silhouette_x_consensus": v["cross"] * cons,
        "encoder_first_then_silhouette": _encoder_first(sil, enc, sil),
        "encoder_first_then_stability": _encoder_first(sil, enc, stab),
        "encoder_first_then_sil_x_stab": _encoder_first(sil, enc, sil * stab),
        "silhouette_at_given_k": sil + demote,
        "silhouette_x_stability_at_given_k": sil * stab + demote,
        "knn_modularity_at_given_k": q + demote,
        "consensus_at_given_k": cons + demote,
        "silhouette_x_consensus_at_given_k": sil * cons + demote,
    }


def ingredients(name: str, frame: pd.DataFrame, draws: dict, b: int = B) -> tuple[dict, dict, dict]:
    """The label-free measures of a set's candidates: (full-data values, (b, candidates) bootstrap draws, seconds per
    candidate). Draws: rows resampled with replacement (the same rows for every candidate) for the silhouettes and
    the consensus; the graph induced on each resample's distinct rows for the modularity; each candidate's
    subsample ARIs resampled for its stability; prediction strength held fixed."""
    encs = list(dict.fromkeys(frame["encoder"]))
    labels = scons.candidate_labels(name, encs, CANDIDATES)
    labels = [labels[c] for c in frame["cid"]]
    cross_rows, cross_s = sc.timed(scons.cross_space_rows, name, encs, dict(zip(frame["cid"], labels)))
    cross_rows = [cross_rows[c] for c in frame["cid"]]
    cons, cons_s = sc.timed(scons.consensus, labels, None, frame["encoder"])
    graphs, graph_s = sc.timed(lambda: {e: sc.knn_graph(ss.umap_space(name, e)[0]) for e in encs})
    full = dict(sil=frame["silhouette_umap_all"].to_numpy(), stab=frame["stability"].to_numpy(),
                ps=frame["prediction_strength"].to_numpy(), cross=np.array([r.mean() for r in cross_rows]),
                cons=cons[0], cons_other=cons[1],
                q=np.array([sc.modularity(graphs[e], lab) for lab, e in zip(labels, frame["encoder"])]))
    idx = sc.bootstrap_rows(len(labels[0]), b)
    rng = np.random.default_rng(4000)
    cons_b = np.stack([np.stack(scons.consensus(labels, idx[i], frame["encoder"])) for i in range(b)])
    boot = dict(sil=np.stack([draws[c][0][idx].mean(axis=1) for c in frame["cid"]], axis=1),
                stab=np.stack([rng.choice(draws[c][1], (b, len(draws[c][1]))).mean(axis=1) for c in frame["cid"]],
                              axis=1),
                ps=np.tile(full["ps"], (b, 1)), cross=np.stack([r[idx].mean(axis=1) for r in cross_rows], axis=1),
                cons=cons_b[:, 0], cons_other=cons_b[:, 1],
                q=np.stack([[sc.modularity(graphs[e][np.ix_(r, r)], lab[r]) for lab, e in
                             zip(labels, frame["encoder"])] for r in (np.unique(i) for i in idx)]))
    n = len(frame)
    return full, boot, dict(cross_space_s_per_candidate=cross_s / n, consensus_s_per_candidate=cons_s / n,
                            modularity_s_per_candidate=graph_s / n)


def _cached_ingredients(name: str, frame: pd.DataFrame, draws: dict):
    """`ingredients`, cached beside the store, keyed by the code that computes them and the set's candidates."""
    import hashlib
    import inspect

    here = Path(__file__).parent
    code = b"".join((here / f).read_bytes() for f in ("selection_criteria.py", "selection_consensus.py"))
    code += inspect.getsource(ingredients).encode()
    values = frame[["ami", "silhouette_umap_all", "stability", "prediction_strength"]].to_numpy(float)
    key = hashlib.sha256(code + "|".join(frame["cid"]).encode() + values.round(12).tobytes()).hexdigest()[:16]
    part = ss.cache_dir() / "selection-ingredients" / f"{name}-{key}.pkl"
    if not part.exists():
        part.parent.mkdir(parents=True, exist_ok=True)
        pd.to_pickle(ingredients(name, frame, draws), part)
    return pd.read_pickle(part)


def summarise(cands: pd.DataFrame, draws: dict) -> pd.DataFrame:
    """One row per criterion x set: Spearman with AMI, the pick, its AMI loss and its confidence."""
    out = []
    for name, frame in cands.groupby("set", sort=False):
        out += _summarise_set(name, frame.reset_index(drop=True), draws)
    return pd.DataFrame(out)


def _summarise_set(name: str, frame: pd.DataFrame, draws: dict) -> list[dict]:
    full_v, boot_v, cost = _cached_ingredients(name, frame, draws)
    full = criteria(full_v, frame)
    per = [criteria({k: v[i] for k, v in boot_v.items()}, frame) for i in range(len(boot_v["sil"]))]
    amis, out = frame["ami"].to_numpy(), []
    for crit, score in full.items():
        order = np.argsort(-score, kind="stable")  # highest score first (the first candidate on ties)
        pick = order[0]
        twins = np.array([np.array_equal(draws[c][0], draws[frame["cid"][pick]][0]) for c in frame["cid"]])
        runner = next((i for i in order if not twins[i]), pick)
        share, margin = sc.confidence(np.stack([p[crit] for p in per]), pick, runner, twins)
        rho = spearmanr(score, amis).statistic if np.ptp(score) > 0 else np.nan
        p = frame.iloc[pick]
        out.append(dict(set=name, criterion=crit, spearman=rho, best_ami=amis.max(), pick_ami=amis[pick],
                        loss=amis.max() - amis[pick], pick=f"{p.encoder} {p.clusterer} {p.params}".strip(),
                        pick_clusters=int(p.n_clusters), n_classes=int(p.n_classes), confidence_share=share,
                        confidence_margin=margin, n_candidates=len(frame), **cost))
    return out


# --- output ---------------------------------------------------------------------------------------------------------

def markdown_tables(summary: pd.DataFrame, cands: pd.DataFrame) -> str:
    """The per-criterion table (Spearman and loss per set, max and mean), then each criterion's picks."""
    lines = ["## Criteria: Spearman with AMI / AMI lost by the pick, per set", ""]
    sets = list(dict.fromkeys(summary["set"]))
    lines += ["| criterion | " + " | ".join(sets) + " | max loss | mean loss | mean Spearman |",
              "|---" * (len(sets) + 4) + "|"]
    for crit, g in summary.groupby("criterion", sort=False):
        g = g.set_index("set")
        cells = [f"{g.loc[s, 'spearman']:.2f} / {g.loc[s, 'loss']:.3f}" for s in sets]
        lines.append(f"| {crit} | " + " | ".join(cells) +
                     f" | {g['loss'].max():.3f} | {g['loss'].mean():.3f} | {g['spearman'].mean():.2f} |")
    lines += ["", "## Picks and confidence", "",
              "| criterion | set | pick | clusters / classes | AMI | best AMI | loss | share | margin |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in summary.itertuples():
        lines.append(f"| {r.criterion} | {r.set} | {r.pick} | {r.pick_clusters} / {r.n_classes} | "
                     f"{r.pick_ami:.3f} | {r.best_ami:.3f} | {r.loss:.3f} | {r.confidence_share:.2f} | "
                     f"{r.confidence_margin:.1f} |")
    lines += confidence_check(summary)
    cost = cands[["fit_s", "silhouette_s", "stability_s", "prediction_strength_s"]].median()
    per_set = summary.groupby("set")[["cross_space_s_per_candidate", "consensus_s_per_candidate",
                                      "modularity_s_per_candidate"]].first().median()
    lines += ["", "## Seconds per candidate (median over all candidates; 2-core CPU shared with other work)", "",
              "| fit | silhouette | stability (5 refits) | prediction strength (2 fits) | cross-space silhouette "
              "(3 spaces) | consensus (ARI to the others) | 15-NN graph + modularity |",
              "|---|---|---|---|---|---|---|",
              f"| {cost.fit_s:.2f} | {cost.silhouette_s:.3f} | {cost.stability_s:.2f} | "
              f"{cost.prediction_strength_s:.2f} | {per_set.cross_space_s_per_candidate:.3f} | "
              f"{per_set.consensus_s_per_candidate:.4f} | {per_set.modularity_s_per_candidate:.3f} |"]
    return "\n".join(lines) + "\n"


def confidence_check(summary: pd.DataFrame) -> list[str]:
    """Does a low confidence flag the picks that lose AMI? Over every criterion x set pick: for each rule, how many
    of the picks losing more than 0.02 it flags (caught), and how many of its flags lose more than 0.02 (right)."""
    bad = summary["loss"] > 0.02
    lines = ["", "## Confidence check (every criterion x set pick; bad = loses more than 0.02 AMI)", "",
             f"{int(bad.sum())} of {len(summary)} picks are bad.", "",
             "| rule for low confidence | flagged | bad picks caught | flags that are bad |", "|---|---|---|---|"]
    rules = {f"share < {t}": summary["confidence_share"] < t for t in (0.6, 0.8, 0.9, 0.95)}
    rules.update({f"margin < {t}": summary["confidence_margin"] < t for t in (1, 2, 3)})
    for rule, low in rules.items():
        lines.append(f"| {rule} | {int(low.sum())} | {int((low & bad).sum())} / {int(bad.sum())} | "
                     f"{int((low & bad).sum())} / {int(low.sum())} |")
    rho = spearmanr(summary["loss"], -summary["confidence_share"]).statistic
    lines.append(f"\nSpearman between the loss and (1 - share) over all picks: {rho:.2f}.")
    lines += ["", "Per criterion, the rule share < 0.9 or margin < 2:", "",
              "| criterion | sets where the pick loses > 0.02 | of them flagged low | sets flagged low |",
              "|---|---|---|---|"]
    for crit, g in summary.groupby("criterion", sort=False):
        low = (g["confidence_share"] < 0.9) | (g["confidence_margin"] < 2)
        bad = g["loss"] > 0.02
        lines.append(f"| {crit} | {', '.join(g.loc[bad, 'set']) or '-'} | {', '.join(g.loc[bad & low, 'set']) or '-'}"
                     f" | {', '.join(g.loc[low, 'set']) or '-'} |")
    return lines


def figure(cands: pd.DataFrame, summary: pd.DataFrame, path: Path,
           crits=("silhouette_umap_all", "silhouette_x_consensus_at_given_k")) -> None:
    """Silhouette (x) against AMI (y), one panel per set, coloured by clusterer family, marker by encoder; the pick
    of each criterion in `crits` circled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(dict.fromkeys(cands["set"]))
    fig, axes = plt.subplots(2, (len(sets) + 1) // 2, figsize=(4 * ((len(sets) + 1) // 2), 7.5), squeeze=False)
    colours = dict(zip([c[0] for c in CANDIDATES], plt.cm.tab10.colors))
    markers = dict(zip(ss.ENCODERS, "o^s"))
    for ax, name in zip(axes.flat, sets):
        g = cands[cands["set"] == name]
        for r in g.itertuples():
            ax.scatter(r.silhouette_umap_all, r.ami, c=[colours[r.family]], marker=markers[r.encoder], s=30)
        for crit, style in zip(crits, [dict(s=220, edgecolors="k"), dict(s=420, edgecolors="r")]):
            p = summary[(summary["set"] == name) & (summary["criterion"] == crit)].iloc[0]
            hit = g[g["ami"] == p.pick_ami].iloc[0]
            ax.scatter(hit.silhouette_umap_all, hit.ami, facecolors="none", linewidths=1.5, **style)
        ax.set_title(f"{name} ({int(g['n_classes'].iloc[0])} classes)", fontsize=10)
        ax.set_xlabel("silhouette_umap_all")
        ax.set_ylabel("AMI")
    for ax in axes.flat[len(sets):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], ls="", marker="o", c=c, label=f) for f, c in colours.items()]
    handles += [plt.Line2D([], [], ls="", marker=m, c="grey", label=e) for e, m in markers.items()]
    handles += [plt.Line2D([], [], ls="", marker="o", mfc="none", mec=c, ms=12, label=f"pick: {k}")
                for k, c in zip(crits, "kr")]
    fig.legend(handles=handles, loc="lower center", ncol=6, fontsize=8)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", default=",".join(ss.SETS), help="comma-separated set names (default: all)")
    ap.add_argument("--encoders", default=",".join(ss.ENCODERS), help="comma-separated encoders (default: all)")
    ap.add_argument("--phase", choices=["prepare", "candidates", "kauto", "summary", "all"], default="all",
                    help="prepare: encode + UMAP only; candidates / kauto: compute and save; summary: tables and "
                         "figure from saved CSVs; all: everything")
    ap.add_argument("--kmax", type=int, default=30, help="largest k of the --k auto sweep (default 30)")
    ap.add_argument("--kauto-encoders", default="pixels,efficientnet_lite0",
                    help="encoders of the --k auto sweep (default pixels,efficientnet_lite0: the study's)")
    a = ap.parse_args(argv)
    os.environ.setdefault("GPUCLUST_CACHE", str(ss.cache_dir()))
    sets, encs = a.sets.split(","), a.encoders.split(",")
    RESULTS.mkdir(parents=True, exist_ok=True)
    if a.phase in ("prepare", "all"):
        ss.prepare(sets, encs)
    if a.phase in ("candidates", "all"):
        cands, draws = run_candidates(sets, encs)
        cands.to_csv(csv_path("candidates"), index=False)
        save_draws(draws, ss.cache_dir() / "selection-draws.npz")
    if a.phase in ("kauto", "all"):
        import selection_kauto as sk

        sk.run(sets, a.kauto_encoders.split(","), a.kmax, csv_path("kauto-sweep"), csv_path("kauto"))
    if a.phase in ("summary", "all", "candidates"):
        cands = pd.read_csv(csv_path("candidates"), keep_default_na=False)
        summary = summarise(cands, load_draws(ss.cache_dir() / "selection-draws.npz"))
        summary.to_csv(csv_path("criteria"), index=False)
        text = markdown_tables(summary, cands)
        if csv_path("kauto").exists():
            import selection_kauto as sk

            text += sk.markdown(pd.read_csv(csv_path("kauto")))
        (RESULTS / "selection-tables.md").write_text(text)
        figure(cands, summary, ROOT / "docs" / "selection-study.png")
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
