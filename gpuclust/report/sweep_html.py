"""A sweep's report.html: its runs ranked, each linked to its own report, and two plots.

- `silhouette_vs_ami.png` (data with labels): each run's UMAP-space silhouette over every row (noise scoring 0,
  so a run cannot score well on the few rows it clusters) against its AMI, one panel per dataset, with Kendall's tau
  between the two. The silhouette needs no labels; where it ranks the runs as AMI does, it can pick
  an encoder and clusterer for data that has none (the study's finding, checked on the user's own grid).
- `ranking.png`: the ranking metric of the best runs, as bars.
- `heatmap.png` and one table per varied setting: which encoder (clusterer, ...) does best over everything else
  (report/compare.py).
"""
from __future__ import annotations

import html
import math
from pathlib import Path

from ..store import atomic_write_bytes
from .compare import PROXY, _num, by_setting, heatmap_axes, plot_heatmap
from .html import STYLE, _plt, _save

MAX_BARS = 30


def kendall_tau(x, y) -> float | None:
    """Kendall's tau-b of paired values, None with fewer than three pairs or a constant side."""
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    from scipy.stats import kendalltau

    tau = kendalltau(x, y).statistic
    return None if not math.isfinite(tau) else float(tau)


def plot_silhouette_vs_ami(path: Path, groups: dict[str, list[tuple[str, float, float, str]]]) -> dict:
    """`groups`: dataset -> [(run, silhouette_umap, ami, colour key)]. Returns {dataset: tau}."""
    plt = _plt()
    names = list(groups)
    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 4.6), squeeze=False)
    keys = sorted({k for pts in groups.values() for *_, k in pts})
    colours = {k: plt.get_cmap("tab10")(i % 10) for i, k in enumerate(keys)}
    taus = {}
    for ax, name in zip(axes[0], names):
        pts = groups[name]
        for key in keys:
            mine = [(s, a) for _, s, a, k in pts if k == key]
            if mine:
                ax.scatter(*zip(*mine), s=28, color=colours[key], label=key)
        for run, s, a, _ in pts:
            ax.annotate(run.lstrip("0") or "0", (s, a), fontsize=6, xytext=(2, 2), textcoords="offset points")
        taus[name] = kendall_tau([s for _, s, _, _ in pts], [a for _, _, a, _ in pts])
        tau = taus[name]
        ax.set_title(f"{name}\nKendall's tau {tau:.2f}" if tau is not None else name, fontsize=9)
        ax.set_xlabel("silhouette in UMAP space, every row, noise 0 (no labels needed)", fontsize=8)
        ax.set_ylabel("AMI")
    if 1 < len(keys) <= 12:
        axes[0, -1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return taus


def plot_ranking(path: Path, labels: list[str], values: list[float], metric: str) -> None:
    """Save a PNG of horizontal bars, one per run label with its `metric` value, in the given order from the top."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 0.8 + 0.28 * len(labels)))
    ax.barh(range(len(labels)), values, color="tab:blue")
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.invert_yaxis()  # best at the top
    ax.set_xlabel(metric)
    ax.set_title(f"runs ranked by {metric}" + (f" (best {len(labels)})" if len(labels) == MAX_BARS else ""))
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if math.isfinite(v) else str(v)
    return "" if v is None else str(v)


def settings_html(summary: list[dict], metric: str, run_dirs: dict[str, str]) -> str:
    """One small table per varied setting: its values, best mean first (see compare.by_setting)."""
    parts = []
    for key in dict.fromkeys(s["setting"] for s in summary):
        mine = [s for s in summary if s["setting"] == key]
        proxy = metric != PROXY and f"mean_{PROXY}" in mine[0]
        head = ["value", "runs", f"mean {metric}", "sd", f"best {metric}", "best run",
                *([f"mean {PROXY}", "silhouette's pick"] if proxy else [])]
        body = []
        for s in mine:
            link = f'<a href="{html.escape(run_dirs[s["best_run"]])}/report.html">{html.escape(s["best_run"])}</a>'
            cells = [html.escape(s["value"]), str(s["runs"]), _cell(s[f"mean_{metric}"]), _cell(s[f"sd_{metric}"]),
                     _cell(s[f"best_{metric}"]), link,
                     *([_cell(s[f"mean_{PROXY}"]), "yes" if s.get("label_free_pick") else ""] if proxy else [])]
            body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        parts.append(f"<h3>{html.escape(key)}</h3><table><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in head)}"
                     f"</tr>{''.join(body)}</table>")
    return "".join(parts)


MAX_PICK_ROWS = 10  # runs listed under the label-free pick


def pick_html(picks: dict[str, dict | None]) -> str:
    """The label-free pick of each dataset (sweep/select.py): what it is, how sure, what it lost with labels, and
    the runs it was chosen from, best first."""
    parts = []
    for spec, doc in picks.items():
        if not doc:
            continue
        link = f'<a href="{html.escape(doc["run_dir"])}/report.html">run {html.escape(doc["run"])}</a>'
        rule = ("the highest silhouette in UMAP space (noise 0) times the run's mean ARI to the other runs"
                if doc["criterion"] == "silhouette_x_consensus" else "the highest silhouette in UMAP space (noise 0)")
        band = "" if doc["k"] is None else f", among the runs within 20% of the asked {doc['k']} clusters"
        margin = ("" if doc["margin"] is None else
                  f", margin {doc['margin']:.1f} standard deviations over run {html.escape(str(doc['runner_up']))} "
                  f"({html.escape(str(doc['runner_up_name']))})")
        sure = (f"<b>Low confidence</b>: first in {doc['confidence']:.0%} of bootstrap resamples of its "
                f"{doc['rows']} scored rows{margin}; look at both." if doc["low_confidence"] else
                f"Confidence: first in {doc['confidence']:.0%} of bootstrap resamples of its {doc['rows']} scored "
                f"rows{margin}.")
        lost = ("" if doc.get("ami_lost") is None else
                f" With the labels: AMI {doc['ami']:.4f} against {doc['best_ami']:.4f} for the best run "
                f"(lost {doc['ami_lost']:.4f}).")
        head = ["#", "run", "configuration", "clusters", "within 20% of k", "silhouette_umap_all", "consensus",
                "score", *(["ami"] if any("ami" in e for e in doc["runs"]) else [])]
        body = []
        for i, e in enumerate(doc["runs"][:MAX_PICK_ROWS], 1):
            run = f'<a href="{html.escape(e["run_dir"])}/report.html">{html.escape(e["run"])}</a>'
            cells = [str(i), run, html.escape(e["name"]), _cell(e.get("n_clusters")), "yes" if e["in_band"] else "no",
                     _cell(e["silhouette_umap_all"]), _cell(e["consensus"]), _cell(e["score"]),
                     *([_cell(e.get("ami"))] if "ami" in head else [])]
            body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in doc.get("notes", []))
        title = "label-free pick" + (f": {html.escape(spec)}" if len(picks) > 1 else "")
        parts.append(f"<h2>{title}</h2><p>Without labels, gpuclust picks {link} ({html.escape(doc['name'])}, "
                     f"{_cell(doc.get('n_clusters'))} clusters): {rule}{band}. {sure}{lost}</p>"
                     f"{f'<ul>{notes}</ul>' if notes else ''}<table><tr>"
                     f"{''.join(f'<th>{html.escape(h)}</th>' for h in head)}</tr>{''.join(body)}</table>")
    return "".join(parts)


def write_sweep_report(out: Path, ordered: list[dict], failed: list[dict], names: dict[str, str],
                       datasets: dict[str, str], colour_by: dict[str, str], rank_by: str, n_runs: int,
                       varied: list[str] = (), lower_is_better: bool = False,
                       picks: dict[str, dict | None] | None = None, n_ok: int | None = None) -> Path:
    """`ordered`: the ok rows ranked best first; `failed`: rows of runs that did not finish ok; `names`,
    `datasets`, `colour_by`: run id -> its label, its dataset, and the setting its point is coloured by;
    `varied`: the settings the grid varies (compared over everything else); `picks`: the label-free pick of each
    dataset (sweep/select.py); `n_ok`: the runs that finished ok (default: the ranked ones; runs without the
    ranking metric, such as an unlabelled dataset's under ami, are not ranked)."""
    images = []
    summary = by_setting(ordered, list(varied), rank_by, lower_is_better)
    axes = heatmap_axes(list(varied), ordered)
    if summary and axes:
        order = {k: [s["value"] for s in summary if s["setting"] == k] for k in axes}
        if all(len(v) >= 2 for v in order.values()):
            plot_heatmap(out / "heatmap.png", ordered, axes, rank_by, order, lower_is_better)
            images.append("heatmap.png")
    groups: dict[str, list] = {}
    for r in ordered:
        s, a = _num(r.get("silhouette_umap_all", r.get("silhouette_umap"))), _num(r.get("ami"))
        if s is not None and a is not None:
            groups.setdefault(datasets[r["run"]], []).append((r["run"], s, a, colour_by[r["run"]]))
    taus = {}
    if any(len(p) >= 2 for p in groups.values()):
        taus = plot_silhouette_vs_ami(out / "silhouette_vs_ami.png", groups)
        images.append("silhouette_vs_ami.png")
    bars = [(names[r["run"]], _num(r.get(rank_by))) for r in ordered[:MAX_BARS]]
    bars = [(n, v) for n, v in bars if v is not None]
    if bars:
        plot_ranking(out / "ranking.png", [n for n, _ in bars], [v for _, v in bars], rank_by)
        images.append("ranking.png")
    shown = [m for m in dict.fromkeys([rank_by, "ami", "silhouette_umap", "n_clusters", "noise_fraction"])
             if any(r.get(m) is not None for r in ordered)]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["#", "run", "configuration", *shown, "total s"])
    body = []
    for i, r in enumerate(ordered, 1):
        link = f'<a href="{html.escape(r["run_dir"])}/report.html">{html.escape(r["run"])}</a>'
        cells = [str(i), link, html.escape(names[r["run"]]), *(_cell(r.get(m)) for m in shown),
                 _cell(_num(r.get("total_s")))]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    tau_text = "".join(
        f"<li>{html.escape(d)}: Kendall's tau between silhouette_umap_all and AMI "
        f"{'n/a (fewer than three runs)' if t is None else f'{t:.3f}'} over {len(groups[d])} runs</li>"
        for d, t in taus.items())
    fails = "".join(f"<li>run {html.escape(r['run'])} ({html.escape(names[r['run']])}): "
                    f"{html.escape(str(r.get('status')))}: {html.escape(str(r.get('error', '')))}</li>" for r in failed)
    run_dirs = {r["run"]: r["run_dir"] for r in ordered}
    n_ok = len(ordered) if n_ok is None else n_ok
    unranked = f"{n_ok - len(ordered)} without {html.escape(rank_by)} not ranked, the others " if n_ok > len(ordered) else ""
    proxy_note = (f" Beside it, the mean {PROXY}, which needs no labels, and the value it would have picked: where "
                  f"that is the first row, the silhouette chose as {html.escape(rank_by)} did."
                  if rank_by != PROXY and any(f"mean_{PROXY}" in s for s in summary) else "")
    compared = "" if not summary else (
        f"<h2>settings compared</h2><p>Each setting the grid varies, its values ranked by the mean "
        f"{html.escape(rank_by)} of their runs over every other setting (a value's best run links to its report)."
        f"{proxy_note}</p>{settings_html(summary, rank_by, run_dirs)}")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>gpuclust sweep: {html.escape(out.name)}</title>
<style>{STYLE}</style></head><body>
<h1>gpuclust sweep: {html.escape(out.name)}</h1>
<p>{n_ok} of {n_runs} runs finished ok, {unranked}ranked by {html.escape(rank_by)}; each run's name links to its
own report.</p>{f"<ul>{tau_text}</ul>" if tau_text else ""}
{pick_html(picks or {})}
{"".join(f'<p><img src="{name}" alt="{name}"></p>' for name in images)}
{compared}
<h2>runs</h2><table><tr>{head}</tr>{"".join(body)}</table>
{f"<h2>runs that failed</h2><ul>{fails}</ul>" if fails else ""}
</body></html>"""
    path = out / "report.html"
    atomic_write_bytes(path, page.encode())
    return path


def colour_keys(flat_by_run: dict[str, dict], varied: list[str]) -> dict[str, str]:
    """The setting a run's point is coloured by: the encoder when the grid varies it, else the first varied
    setting other than the dataset (each dataset has its own panel), else one colour."""
    candidates = [k for k in varied if k != "data.spec"]
    key = "encode.spec" if "encode.spec" in candidates else (candidates[0] if candidates else None)
    return {run: ("all runs" if key is None else f"{key}={flat.get(key)}")
            for run, flat in flat_by_run.items()}

