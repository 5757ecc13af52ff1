"""Which setting does best, over everything else in the grid: a sweep's answer to "which encoder sees this data
best?" (and which clusterer, reducer, dims ... likewise).

For each setting the grid varies, every finished run is grouped by that setting's value, and the group's mean of
the ranking metric (with its spread and its best run) is set beside the mean label-free proxy, so a reader sees at
once whether the silhouette would have picked the same encoder as the labels. `heatmap.png` crosses the two
settings that matter most (the encoder against the dataset, else against the clusterer), one mean per cell.
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path

from .html import _plt, _save

PROXY = "silhouette_umap_all"
MAX_CELLS = 40  # values per heatmap side; a wider grid is left to the tables and results.csv


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _value(v) -> str:
    return "(not set)" if v is None or v == "" else str(v)


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def by_setting(rows: list[dict], varied: list[str], metric: str, lower_is_better: bool = False) -> list[dict]:
    """One row per (varied setting, value): the runs with that value, the mean, standard deviation and best of
    `metric` over them, and the mean label-free proxy with the value it would pick (`label_free_pick`). Within a
    setting, the best mean comes first."""
    out = []
    sign = -1.0 if lower_is_better else 1.0
    for key in varied:
        groups: dict[str, list[dict]] = {}
        for r in rows:
            if _num(r.get(metric)) is not None:
                groups.setdefault(_value(r.get(key)), []).append(r)
        if len(groups) < 2:
            continue
        summary = []
        for value, members in groups.items():
            scores = [_num(r[metric]) for r in members]
            proxy = [p for p in (_num(r.get(PROXY)) for r in members) if p is not None]
            best = max(members, key=lambda r: sign * _num(r[metric]))
            summary.append({"setting": key, "value": value, "runs": len(members), f"mean_{metric}": _mean(scores),
                            f"sd_{metric}": statistics.stdev(scores) if len(scores) > 1 else None,
                            f"best_{metric}": _num(best[metric]), "best_run": best["run"],
                            **({f"mean_{PROXY}": _mean(proxy)} if metric != PROXY else {})})
        summary.sort(key=lambda s: -sign * s[f"mean_{metric}"])
        proxied = [s for s in summary if s.get(f"mean_{PROXY}") is not None]
        if metric != PROXY and proxied:  # the value the label-free proxy would have chosen
            pick = max(proxied, key=lambda s: s[f"mean_{PROXY}"])
            for s in summary:
                s["label_free_pick"] = s is pick
        out += summary
    return out


def heatmap_axes(varied: list[str], rows: list[dict]) -> tuple[str, str] | None:
    """(rows, columns) of the heatmap: the encoder (else the first varied setting) against the dataset, else the
    clusterer, else the next varied setting; None when fewer than two settings vary or one has too many values."""
    if len(varied) < 2:
        return None
    first = "encode.spec" if "encode.spec" in varied else varied[0]
    rest = [k for k in varied if k != first]
    second = next((k for k in ("data.spec", "cluster.method", "cluster.k", "reduce.method") if k in rest), rest[0])
    if any(len({_value(r.get(k)) for r in rows}) > MAX_CELLS for k in (first, second)):
        return None
    return first, second


def cell_means(rows: list[dict], axes: tuple[str, str], metric: str):
    """The heatmap's values: row value -> column value -> (mean metric, runs)."""
    cells: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        v = _num(r.get(metric))
        if v is not None:
            cells.setdefault(_value(r.get(axes[0])), {}).setdefault(_value(r.get(axes[1])), []).append(v)
    return {a: {b: (statistics.fmean(vs), len(vs)) for b, vs in row.items()} for a, row in cells.items()}


def plot_heatmap(path: Path, rows: list[dict], axes: tuple[str, str], metric: str,
                 order: dict[str, list[str]], lower_is_better: bool = False) -> None:
    """Mean `metric` per (axes[0] value, axes[1] value); `order` lists each setting's values best first."""
    import numpy as np

    cells = cell_means(rows, axes, metric)
    ys = [v for v in order[axes[0]] if v in cells]
    xs = [v for v in order[axes[1]] if any(v in row for row in cells.values())]
    grid = np.full((len(ys), len(xs)), np.nan)
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            if x in cells[y]:
                grid[i, j] = cells[y][x][0]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.6 + 1.05 * len(xs), max(2.8, 1.3 + 0.42 * len(ys))))
    im = ax.imshow(grid, cmap="viridis_r" if lower_is_better else "viridis", aspect="auto")
    lo, span = np.nanmin(grid), float(np.nanmax(grid) - np.nanmin(grid)) or 1.0
    for i in range(len(ys)):
        for j in range(len(xs)):
            if np.isfinite(grid[i, j]):
                dark = ((grid[i, j] - lo) / span < 0.5) != lower_is_better  # the colour map's dark end
                ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")
    ax.set_xticks(range(len(xs)), [x[-24:] for x in xs], rotation=30, ha="right", fontsize=7)
    ax.set_yticks(range(len(ys)), [y[-28:] for y in ys], fontsize=7)
    ax.set_xlabel(axes[1])
    ax.set_ylabel(axes[0])
    ax.set_title(f"mean {metric} per {axes[0]} x {axes[1]}\n(over every other setting of the grid)", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
