"""report.html: the pictures a person would rather see than read, beside the run's numbers."""
from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from ..store import atomic_write_bytes

MAX_POINTS = 20_000  # points drawn in the map; a seeded sample beyond


def _save(fig, path: Path) -> None:
    """A figure written whole or not at all, like every other file of the run directory."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, dpi=90, format="png")
    atomic_write_bytes(path, buf.getvalue())


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def project_2d(Z: np.ndarray) -> np.ndarray:
    """First two principal axes of the clustering space (cheap at any size; a view, not a second UMAP)."""
    Zc = Z - Z.mean(axis=0)
    if Zc.shape[1] <= 2:
        return np.pad(Zc, ((0, 0), (0, 2 - Zc.shape[1])))
    from sklearn.utils.extmath import randomized_svd

    # Two components of a wide space (raw pixels: 3,072 columns) by a seeded randomized SVD: a full SVD of 5,000 rows
    # took 20 s on two cores for the same picture.
    _, _, vt = randomized_svd(Zc[: min(len(Zc), 5000)], 2, n_iter=4, random_state=0)
    return Zc @ vt.T


LEGEND_MAX = 20  # legend entries per panel; the rest are counted in one more entry


def _legend_names(labels: np.ndarray, names) -> list[tuple[int, str]]:
    """(label, legend text) of the largest groups, noise last: "3 (1,024)" or "Trouser (1,000)"."""
    u, c = np.unique(labels, return_counts=True)
    order = [i for i in np.argsort(-c, kind="stable") if u[i] >= 0]
    out = [(int(u[i]), f"{names(int(u[i]))} ({c[i]:,})") for i in order[:LEGEND_MAX]]
    if len(order) > LEGEND_MAX:
        out.append((None, f"{len(order) - LEGEND_MAX} more ({int(sum(c[i] for i in order[LEGEND_MAX:])):,})"))
    if (u < 0).any():
        out.append((-1, f"noise ({int(c[u < 0].sum()):,})"))
    return out


def _scatter(ax, P, labels, title, names=str):
    """Points coloured by group (tab20 by label number, noise grey), with a legend of the largest groups' sizes."""
    plt = _plt()
    cmap = plt.get_cmap("tab20")
    colours = np.array([cmap(int(v) % 20) if v >= 0 else (0.83, 0.83, 0.83, 1.0) for v in labels])
    size = 4 if len(P) <= 5000 else 1.5
    noise = labels < 0
    ax.scatter(P[noise, 0], P[noise, 1], s=size, c=colours[noise], linewidths=0)
    ax.scatter(P[~noise, 0], P[~noise, 1], s=size, c=colours[~noise], alpha=0.8, linewidths=0)
    handles = [plt.Line2D([], [], marker="o", linestyle="", markersize=6, label=text,
                          color=(cmap(v % 20) if v is not None and v >= 0 else (0.83, 0.83, 0.83, 1.0)))
               for v, text in _legend_names(labels, names)]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_map(path: Path, P, labels_pred, labels_true, classes=None, umap: bool = False) -> None:
    """Save a PNG scatter of the 2-D points `P` coloured by predicted cluster (noise grey), beside one coloured by
    true class when `labels_true` is given, each with a legend of its largest groups and their sizes. `umap`: P is
    the run's 2-D map (map.parquet), else the first two principal axes of the clustering space."""
    plt = _plt()
    panels = 1 if labels_true is None else 2
    fig, axes = plt.subplots(1, panels, figsize=(7.5 * panels, 5.5), squeeze=False)
    _scatter(axes[0, 0], P, labels_pred, "predicted clusters (size)", lambda c: f"cluster {c}")
    if labels_true is not None:
        def name(t: int) -> str:
            return classes[t] if classes is not None and 0 <= t < len(classes) else str(t)

        _scatter(axes[0, 1], P, labels_true, "true classes (size)", name)
    fig.suptitle("2-D map of every image (UMAP of the embeddings)" if umap
                 else "clustering space, first two principal axes")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_contingency(path: Path, labels_true, labels_pred, classes) -> None:
    """Save a PNG heatmap of the fraction of each true class in each cluster, clusters ordered by majority class;
    rows are named from `classes` when given."""
    plt = _plt()
    ut, it = np.unique(labels_true, return_inverse=True)
    up, ip = np.unique(labels_pred, return_inverse=True)
    C = np.zeros((len(ut), len(up)), dtype=np.int64)
    np.add.at(C, (it, ip), 1)
    order = np.argsort(np.argmax(C, axis=0), kind="stable")  # clusters ordered by their majority class
    C, up = C[:, order], up[order]
    frac = C / np.maximum(C.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(min(2 + 0.35 * len(up), 18), min(1.5 + 0.35 * len(ut), 14)))
    im = ax.imshow(frac, aspect="auto", cmap="Blues", vmin=0, vmax=1)
    names = [classes[t] if classes is not None and 0 <= t < len(classes) else str(t) for t in ut]
    ax.set_yticks(range(len(ut)), names, fontsize=8)
    ax.set_xticks(range(len(up)), ["noise" if u < 0 else str(u) for u in up], fontsize=7, rotation=90)
    ax.set_xlabel("predicted cluster")
    ax.set_ylabel("true class")
    ax.set_title("fraction of each class in each cluster")
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_sizes(path: Path, labels_pred) -> None:
    """Save a PNG bar chart of cluster sizes, largest first, with noise (label < 0) in grey."""
    plt = _plt()
    u, counts = np.unique(labels_pred, return_counts=True)
    order = np.argsort(-counts)
    u, counts = u[order], counts[order]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(range(len(u)), counts, color=["lightgrey" if x < 0 else "tab:blue" for x in u])
    ax.set_xlabel("clusters, largest first (grey: noise)")
    ax.set_ylabel("images")
    ax.set_title(f"{int((u >= 0).sum())} clusters")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_k_auto(path: Path, scores: dict, chosen: int, ps: dict | None = None, k_ps: int | None = None,
                low: bool = False) -> None:
    """--k auto: the silhouette of each candidate k in the UMAP space, the chosen k marked; with `ps`, each k's
    prediction strength on a second y axis with its 0.8 line and its own k (`k_ps`) marked, and the title saying
    whether the run was flagged `low` confidence."""
    plt = _plt()
    ks = sorted(int(k) for k in scores)
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.plot(ks, _finite(scores, ks), marker="o", color="tab:blue", label="silhouette (UMAP space)")
    ax.axvline(chosen, color="tab:blue", linestyle="--", label=f"chosen k = {chosen} (silhouette)")
    handles = []
    if ps:
        from ..select.kauto import PS_THRESHOLD

        ax2 = ax.twinx()
        handles += ax2.plot(ks, _finite(ps, ks), marker="s", color="tab:orange", label="prediction strength")
        ax2.axhline(PS_THRESHOLD, color="tab:orange", linestyle=":", linewidth=1)
        if k_ps is not None:
            handles.append(ax2.axvline(k_ps, color="tab:orange", linestyle="--", label=f"its k = {k_ps}"))
        ax2.set_ylim(0, 1.05)
        ax2.set_ylabel(f"prediction strength ({PS_THRESHOLD} line)")
        sure = "disagree: low confidence" if low else "agree"
        ax.set_title(f"--k auto: silhouette k = {chosen}, prediction strength k = {k_ps} ({sure})")
    else:
        ax.set_title("--k auto: the k with the highest silhouette")
    if len(ks) <= 30:
        ax.set_xticks(ks)
    ax.set_xlabel("k")
    ax.set_ylabel("silhouette (UMAP space)")
    ax.legend(handles=ax.get_legend_handles_labels()[0] + handles, fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _finite(values: dict, ks: list[int]) -> list[float]:
    """values[k] (a JSON copy's keys may be strings) for each k, NaN where missing, None or infinite."""
    out = []
    for k in ks:
        v = values.get(k, values.get(str(k)))
        out.append(float(v) if v is not None and np.isfinite(float(v)) else np.nan)
    return out


def _table(d: dict) -> str:
    rows = []
    for k, v in d.items():
        if isinstance(v, dict):
            v = ", ".join(f"{a}={b}" for a, b in v.items())
        elif isinstance(v, float):
            v = f"{v:.4f}"
        rows.append(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


# The pages' CSS: a run's report.html and a sweep's.
STYLE = """body{font-family:sans-serif;margin:2em} table{border-collapse:collapse;margin:1em 0}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left} img{max-width:100%}
figure{margin:0 0 1em 0} figcaption{font-size:90%;margin-bottom:3px}"""


def sample_rows(n: int, seed: int = 0) -> np.ndarray:
    """Rows drawn in the map: all of them, or a seeded sample of MAX_POINTS."""
    if n <= MAX_POINTS:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:MAX_POINTS])


def _k_auto_note(metrics: dict) -> str:
    """The line above k_auto.png: the two ks and whether the answer is low confidence."""
    if "k_auto_low_confidence" not in metrics:
        return ""
    k, k_ps = metrics["k_auto"], metrics.get("k_auto_ps")
    if not metrics["k_auto_low_confidence"]:
        return f"--k auto: k = {k}; prediction strength's k ({k_ps}) agrees.<br>"
    return (f"<b>--k auto: low confidence</b>: the silhouette chose k = {k}, prediction strength k = {k_ps}; they "
            "do not agree within 20%, so look at both curves and try the ks between.<br>")


def write_html(out: Path, *, title: str, metrics: dict, timings: dict, Z_sample: np.ndarray, idx: np.ndarray,
               labels_pred: np.ndarray, labels_true: np.ndarray | None, classes, gallery: str = "",
               k_scores: dict | None = None, map_xy: np.ndarray | None = None, k_ps: dict | None = None) -> Path:
    """Plots as PNG files beside report.html. Host arrays: `Z_sample` holds the clustering space at rows `idx`;
    `gallery` is the cluster gallery's HTML section (gallery.write_gallery), placed after the plots; `k_scores`:
    --k auto's silhouette per candidate k, `k_ps` its prediction strength per k; `map_xy`: the run's 2-D map of every
    row, drawn instead of the clustering space's principal axes when given."""
    images = ["map.png", "sizes.png"]
    P = (np.asarray(map_xy, dtype=np.float64)[idx] if map_xy is not None
         else project_2d(np.asarray(Z_sample, dtype=np.float64)))
    plot_map(out / "map.png", P, labels_pred[idx], None if labels_true is None else labels_true[idx], classes,
             umap=map_xy is not None)
    plot_sizes(out / "sizes.png", labels_pred)
    if labels_true is not None:
        plot_contingency(out / "contingency.png", labels_true, labels_pred, classes)
        images.insert(1, "contingency.png")
    if k_scores and metrics.get("k_auto") is not None:
        plot_k_auto(out / "k_auto.png", k_scores, int(metrics["k_auto"]), k_ps, metrics.get("k_auto_ps"),
                    bool(metrics.get("k_auto_low_confidence")))
        images.append("k_auto.png")
    body = "".join(f'<p>{_k_auto_note(metrics)}<img src="{name}" alt="{name}"></p>' if name == "k_auto.png"
                   else f'<p><img src="{name}" alt="{name}"></p>' for name in images)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{STYLE}</style></head><body>
<h1>{html.escape(title)}</h1><h2>metrics</h2>{_table(metrics)}<h2>timings (s)</h2>{_table(timings)}{body}{gallery}
</body></html>"""
    path = out / "report.html"
    atomic_write_bytes(path, page.encode())
    return path
