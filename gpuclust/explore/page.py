"""The explorer page: a run's `MapData` as one Bokeh layout (WebGL scatter, hover thumbnails, selection panel).

Everything runs in the browser, with no server: `page_html` inlines BokehJS so the page opens from file://, and
`write_site` writes it as `index.html` next to `thumbs/<dataset row>.webp`. The page computes each thumbnail's URL
from the row number, so a 1,000,000-row page holds numeric columns only (Bokeh ships numpy arrays as binary). In a
notebook, `build_layout(data, thumb_urls=[...])` takes one inline URL per entry instead. The glue (side panel,
colour and show selects, CSV export, `#row=` links) is JavaScript in page.js, next to this file.
"""
from __future__ import annotations

import os
import shutil
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..store import atomic_write_bytes
from .data import MapData

try:
    from bokeh.document import Document
    from bokeh.embed import file_html
    from bokeh.layouts import column, row
    from bokeh.models import (Button, CDSView, ColumnDataSource, CustomJS, CustomJSHover, Div, HoverTool,
                              IndexFilter, InlineStyleSheet, LinearColorMapper, Scatter, Select)
    from bokeh.palettes import Category20, Plasma256, Viridis256
    from bokeh.plotting import figure
    from bokeh.resources import INLINE
except ImportError as e:  # the explorer is an optional extra
    raise UserError("the explorer needs bokeh: pip install 'gpuclust[explore]'") from e

NOISE = "#d4d4d4"  # noise, rows in no duplicate group, NaN silhouettes: light grey behind the coloured points
# neighbours shipped per entry at most: n * k numbers are the page's largest part, so big maps ship fewer
NEIGHBOURS, NEIGHBOURS_BIG, BIG = 10, 5, 250_000
HINT = "<p class='gc-note'>Hover a point to see its image; tap one for its neighbours; lasso or box-select a region " \
       "to see its images and export them as CSV.</p>"

CSS = """
:host { font-family: system-ui, sans-serif; font-size: 13px; color: #222; }
h1 { font-size: 18px; margin: 4px 0 2px 0; } h3 { font-size: 14px; margin: 4px 0; } h4 { margin: 8px 0 4px 0; }
.gc-sw { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 5px; }
.gc-counts, .gc-legend { list-style: none; padding: 0; margin: 2px 0; }
.gc-legend li { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; line-height: 17px; }
.gc-grid { display: flex; flex-wrap: wrap; gap: 4px; }
.gc-cell { display: flex; flex-direction: column; align-items: center; font-size: 10px; color: #555;
           text-decoration: none; width: 58px; }
.gc-cell img, .gc-none { width: 56px; height: 56px; object-fit: contain; background: #f2f2f2; }
.gc-none { display: flex; align-items: center; justify-content: center; font-size: 9px; }
.gc-big { width: 128px; height: 128px; object-fit: contain; background: #f2f2f2; }
.gc-cell img, .gc-big { image-rendering: pixelated; }
.gc-note, .gc-path { color: #666; font-size: 12px; } .gc-path { word-break: break-all; }
.gc-line { color: #444; }
"""

TOOLTIP = """<div style="max-width:240px;font-size:12px">
<img src="@row{url}" style="display:@row{show};width:96px;height:96px;object-fit:contain;background:#f2f2f2;image-rendering:pixelated">
<div><b>row @row</b> · @cluster{cluster}</div>{extra}</div>"""


@lru_cache(maxsize=1)
def _js() -> str:
    return (Path(__file__).with_name("page.js")).read_text(encoding="utf-8")


def _compact_int(a: np.ndarray) -> np.ndarray:
    """The smallest signed integer type that holds `a` (int8/16/32): fewer bytes in the page."""
    a = np.asarray(a)
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    for t in (np.int8, np.int16, np.int32):
        if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max:
            return a.astype(t)
    raise UserError(f"values up to {hi} do not fit the page's 32-bit columns")


def cluster_palette(k: int) -> list[str]:
    """Colours of clusters 0..k-1 (cluster c: entry c), cycling a categorical palette without its greys."""
    base = [c for i, c in enumerate(Category20[20]) if i not in (14, 15)]  # greys stand for noise
    base = base[0::2] + base[1::2]  # the strong shades first, then the light ones
    return [base[i % len(base)] for i in range(max(k, 1))]


def _categorical(values: np.ndarray) -> LinearColorMapper:
    """Category c -> palette entry c; negative values (noise, no group) light grey."""
    k = int(values.max()) + 1 if values.size and values.max() >= 0 else 1
    # bins of width one centred on the integers: value c falls in bin c
    return LinearColorMapper(palette=cluster_palette(k), low=-0.5, high=k - 0.5, low_color=NOISE, high_color=NOISE)


def _continuous(values: np.ndarray, palette) -> LinearColorMapper:
    """A continuous palette over the 1st..99th percentile of the finite values; NaN grey."""
    finite = values[np.isfinite(values)]
    lo, hi = (np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0))
    hi = hi if hi > lo else lo + 1e-6
    return LinearColorMapper(palette=palette, low=float(lo), high=float(hi), nan_color=NOISE)


def _check(data: MapData, thumb_urls: list[str] | None) -> None:
    """A UserError naming the first field whose length is not the number of entries."""
    n = len(data)
    if n == 0:
        raise UserError("the map has no rows to show")
    fields = {"x": data.x, "y": data.y, "cluster": data.cluster, "label_true": data.label_true, "paths": data.paths,
              "silhouette": data.silhouette, "thumbs": data.thumbs, "neighbours": data.neighbours,
              "neighbour_sim": data.neighbour_sim, "thumb_urls": thumb_urls,
              **{f"columns[{k!r}]": v for k, v in data.columns.items()}}
    for name, value in fields.items():
        if value is not None and len(value) != n:
            raise UserError(f"MapData.{name} has {len(value)} entries, rows has {n}")
    if (data.neighbours is None) != (data.neighbour_sim is None) or (
            data.neighbours is not None and np.shape(data.neighbours) != np.shape(data.neighbour_sim)):
        raise UserError("MapData.neighbours and neighbour_sim must both be given, with the same shape")


def point_columns(data: MapData) -> dict[str, np.ndarray]:
    """The columns of the page's "points" source, all numpy arrays (binary in the page): x, y, row, cluster, and
    where the data has them thumb (uint8), label, sil (silhouette), outlier (score), dup (duplicate group)."""
    cols = {"x": np.asarray(data.x, np.float32), "y": np.asarray(data.y, np.float32),
            "row": _compact_int(data.rows).astype(np.int32), "cluster": _compact_int(data.cluster)}
    if data.thumbs is not None:
        cols["thumb"] = np.asarray(data.thumbs, dtype=np.uint8)
    if data.label_true is not None:
        cols["label"] = _compact_int(data.label_true)
    if data.silhouette is not None:
        cols["sil"] = np.asarray(data.silhouette, np.float32)
    if "outlier_score" in data.columns:
        cols["outlier"] = np.asarray(data.columns["outlier_score"], np.float32)
    if "duplicate_group" in data.columns:
        cols["dup"] = _compact_int(data.columns["duplicate_group"])
    return cols


def _neighbour_source(data: MapData) -> tuple[ColumnDataSource | None, int]:
    """The neighbour lists as one flat source of n * k entries (nb: position, sim: cosine x 10,000 as int16)."""
    if data.neighbours is None:
        return None, 0
    k = NEIGHBOURS if len(data) <= BIG else NEIGHBOURS_BIG
    nb = np.asarray(data.neighbours)[:, :k]
    sim = np.asarray(data.neighbour_sim, np.float32)[:, :k]
    sim = np.round(np.nan_to_num(np.clip(sim, -1, 1)) * 10000).astype(np.int16)
    src = ColumnDataSource({"nb": nb.astype(np.int32).ravel(), "sim": sim.ravel()}, name="neighbours")
    return src, nb.shape[1]


def _paths(data: MapData) -> tuple[ColumnDataSource | None, str]:
    """The paths without their common folder (sent once as the prefix): a shorter page."""
    if data.paths is None:
        return None, ""
    paths = [str(p) for p in data.paths]
    prefix = os.path.commonprefix(paths)
    prefix = prefix[: prefix.rfind("/") + 1]
    return ColumnDataSource({"path": [p[len(prefix):] for p in paths]}, name="paths"), prefix


def _colours(data: MapData, cols: dict) -> dict[str, list]:
    """The "colour by" choices: name -> [column, colour mapper]."""
    out = {"cluster": ["cluster", _categorical(cols["cluster"])]}
    if "label" in cols:
        out["class"] = ["label", _categorical(cols["label"])]
    if "sil" in cols:
        out["silhouette"] = ["sil", _continuous(cols["sil"], Viridis256)]
    if "outlier" in cols:
        out["outlier score"] = ["outlier", _continuous(cols["outlier"], Plasma256)]
    if "dup" in cols:
        out["duplicates"] = ["dup", _categorical(cols["dup"])]
    return out


def _show_options(data: MapData) -> list[tuple[str, str]]:
    """The "show" choices: all, each cluster (largest first) with its size, noise, each class."""
    sizes = data.cluster_sizes()
    opts = [("all", f"all ({len(data):,})")]
    opts += [(f"c:{c}", f"cluster {c} ({m:,})") for c, m in sizes.items() if c >= 0]
    if -1 in sizes:
        opts.append(("c:-1", f"noise ({sizes[-1]:,})"))
    if data.label_true is not None:
        t, m = np.unique(data.label_true, return_counts=True)
        opts += [(f"t:{int(a)}", f"{_class_label(_class_name(data, int(a)))} ({int(b):,})") for a, b in zip(t, m)]
    return opts


def _class_name(data: MapData, t: int) -> str:
    return data.classes[t] if data.classes is not None and 0 <= t < len(data.classes) else str(t)


def _majority(data: MapData) -> dict[int, tuple[str, float]]:
    """Each cluster's most common class and its share of the cluster."""
    if data.label_true is None:
        return {}
    pairs, counts = np.unique(np.stack([data.cluster, data.label_true]), axis=1, return_counts=True)
    best: dict[int, tuple[int, int]] = {}
    for (c, t), m in zip(pairs.T.tolist(), counts.tolist()):
        if m > best.get(c, (0, 0))[1]:
            best[c] = (t, m)
    sizes = data.cluster_sizes()
    return {c: (_class_name(data, t), m / sizes[c]) for c, (t, m) in best.items()}


def counts_line(data: MapData) -> str:
    """'10,000 images · 10 clusters · 0 noise · AMI 0.67' (the metrics the run has)."""
    sizes = data.cluster_sizes()
    parts = [f"{len(data):,} images", f"{sum(c >= 0 for c in sizes)} clusters", f"{sizes.get(-1, 0):,} noise"]
    for key, name in (("ami", "AMI"), ("ari", "ARI"), ("silhouette", "silhouette")):
        if isinstance(data.metrics.get(key), (int, float)):
            parts.append(f"{name} {data.metrics[key]:.2f}")
    return " · ".join(parts)


def _legend(data: MapData, palette: list[str], limit: int = 60) -> str:
    """The clusters with their colour, size and (with labels) majority class, largest first."""
    major, items = _majority(data), []
    for c, m in list(data.cluster_sizes().items())[:limit]:
        colour = NOISE if c < 0 else palette[c % len(palette)]
        cls = f" · {_escape(_class_label(major[c][0]))} ({major[c][1]:.0%})" if c in major else ""
        items.append(f"<li><span class='gc-sw' style='background:{colour}'></span>"
                     f"{'noise' if c < 0 else f'cluster {c}'}: {m:,}{cls}</li>")
    more = len(data.cluster_sizes()) - limit
    tail = f"<li>… {more} more</li>" if more > 0 else ""
    return f"<h4>clusters</h4><ul class='gc-legend' id='gc-legend'>{''.join(items)}{tail}</ul>"


def _class_label(name: str) -> str:
    """'class 3' for classes named by numbers (digits, MNIST), else the name itself."""
    return f"class {name}" if name.lstrip("-").isdigit() else name


def _escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _header(data: MapData) -> Div:
    text = (f"<h1>{_escape(data.title)}</h1>"
            f"<div class='gc-line' id='gc-counts'>{counts_line(data)}</div>")
    return Div(text=text, name="counts", stylesheets=[InlineStyleSheet(css=CSS)], sizing_mode="stretch_width")


def _hover(data: MapData, renderer, a: dict) -> HoverTool:
    """Tooltips with the thumbnail (its URL made in JS from the row), row, cluster, class and path."""
    extra = ("<div>@label{cls}</div>" if "label" in a["src"].data else "") + (
        "<div style='word-break:break-all;color:#555'>@row{path}</div>" if data.paths is not None else "")
    row_fmt = CustomJSHover(args=dict(a), code=_js() + """
        const i = special_vars.index;
        if (format == "url") return gc_thumb(a_(), i) || "data:,";
        if (format == "show") return gc_thumb(a_(), i) ? "block" : "none";
        return gc_path(a_(), i);""".replace("a_()", _args_object(a)))
    cluster_fmt = CustomJSHover(code="return value < 0 ? 'noise' : 'cluster ' + value;")
    label_fmt = CustomJSHover(args=dict(a),
                              code=_js() + f"return gc_class_label({_args_object(a)}, special_vars.index);")
    return HoverTool(renderers=[renderer], tooltips=TOOLTIP.replace("{extra}", extra),
                     formatters={"@row": row_fmt, "@cluster": cluster_fmt, "@label": label_fmt})


def _args_object(a: dict) -> str:
    return "{" + ", ".join(a) + "}"


def _callback(action: str, a: dict) -> CustomJS:
    """A CustomJS that runs page.js's gc_main(action, {the args}, cb_obj)."""
    return CustomJS(args=a, code=_js() + f"\nreturn gc_main({action!r}, {_args_object(a)}, cb_obj);")


def _figure(n: int, src: ColumnDataSource, view: CDSView, colour: list, height: int | None):
    """The WebGL scatter; point size and opacity shrink as the number of points grows."""
    size = float(np.clip(10 - 2 * np.log10(max(n, 1) / 100), 2, 9))
    alpha = float(np.clip(1.1 - 0.15 * np.log10(max(n, 1) / 100), 0.45, 0.9))
    sizing = dict(sizing_mode="stretch_both", min_height=400) if height is None else dict(
        sizing_mode="stretch_width", height=height)
    fig = figure(output_backend="webgl", tools="pan,wheel_zoom,box_select,lasso_select,tap,reset",
                 active_scroll="wheel_zoom", toolbar_location="right", match_aspect=True, **sizing)
    fill = {"field": colour[0], "transform": colour[1]}
    r = fig.scatter("x", "y", source=src, view=view, size=size, fill_color=fill, fill_alpha=alpha,
                    line_color=None, name="map")
    r.selection_glyph = Scatter(fill_color=fill, fill_alpha=1.0, size=max(size * 1.5, 6), line_color="#222222",
                                line_width=0.8)
    r.nonselection_glyph = Scatter(fill_color=fill, fill_alpha=alpha * 0.35, line_color=None)
    fig.axis.visible = False
    fig.grid.visible = False
    fig.outline_line_color = "#dddddd"
    fig.toolbar.logo = None
    return fig, r


def _sources(data: MapData, thumb_urls: list[str] | None) -> dict:
    """The page's data sources and constants, the args every JS callback gets."""
    cols = point_columns(data)
    nb, k = _neighbour_source(data)
    paths, prefix = _paths(data)
    urls = None if thumb_urls is None else ColumnDataSource({"url": [str(u) for u in thumb_urls]}, name="thumb_urls")
    palette = cluster_palette(int(cols["cluster"].max()) + 1 if len(data) else 1)
    return {"src": ColumnDataSource(cols, name="points"), "nb": nb, "k": k, "paths": paths, "prefix": prefix,
            "urls": urls, "classes": [str(c) for c in data.classes] if data.classes is not None else None,
            "palette": palette, "noise": NOISE}


def build_layout(data: MapData, thumb_urls: list[str] | None = None, max_panel: int = 48, *,
                 height: int | None = 640):
    """The explorer for `data` as a Bokeh layout (for `bokeh.io.show` in a notebook, or `page_html`).

    thumb_urls: None for a site, where entry i's thumbnail is `thumbs/<data.rows[i]>.webp` next to the page when
    `data.thumbs[i]`; else one URL per entry ('' for none), e.g. data: URIs. max_panel: thumbnails shown for a
    selection at most. height: the map's height in pixels, or None to fill the window (a standalone page).
    """
    return _build(data, thumb_urls, max_panel, height)[0]


def _build(data: MapData, thumb_urls: list[str] | None, max_panel: int, height: int | None) -> tuple:
    """build_layout's layout and the args of its JS callbacks (page_html's #row= callback takes them too)."""
    _check(data, thumb_urls)
    a = _sources(data, thumb_urls)
    colours = _colours(data, a["src"].data)
    filt = IndexFilter(indices=None, name="filter")  # None: every row; the show select sets the rows to draw
    fig, renderer = _figure(len(data), a["src"], CDSView(filter=filt), colours["cluster"], height)
    fig.add_tools(_hover(data, renderer, a))
    css = [InlineStyleSheet(css=CSS)]
    panel = Div(text=HINT, name="panel", stylesheets=css, width=340)
    status = Div(text=f"<span id='gc-shown' data-shown='{len(data)}'>showing {len(data):,} of {len(data):,}</span>",
                 name="status", stylesheets=css)
    button = Button(label="Export selection (CSV)", disabled=True, name="export", width=340)
    colour = Select(title="colour by", value="cluster", options=list(colours), name="colour", width=340)
    show = Select(title="show", value="all", options=_show_options(data), name="show", width=340)
    a.update(renderer=renderer, filter=filt, panel=panel, status=status, button=button, colours=colours,
             max_panel=int(max_panel), hint=HINT, show=show)
    colour.js_on_change("value", _callback("colour", a))
    show.js_on_change("value", _callback("show", a))
    a["src"].selected.js_on_change("indices", _callback("panel", a))
    button.js_on_event("button_click", _callback("export", a))
    legend = Div(text=_legend(data, a["palette"]), stylesheets=css, width=340, name="legend")
    # the side column scrolls on its own when the panel and legend are taller than the map
    side = column(colour, show, status, button, panel, legend, width=360, styles={"overflow-y": "auto"},
                  **(dict(sizing_mode="stretch_height") if height is None else dict(height=height + 30)))
    body = row(fig, side, sizing_mode="stretch_both" if height is None else "stretch_width")
    root = column(_header(data), body, sizing_mode="stretch_both" if height is None else "stretch_width")
    return root, a


def page_html(data: MapData, thumb_urls: list[str] | None = None) -> str:
    """A standalone HTML document of the explorer (BokehJS inlined: opens from file:// with no network)."""
    root, a = _build(data, thumb_urls, 48, None)
    doc = Document()
    doc.add_root(root)
    doc.title = data.title
    doc.js_on_event("document_ready", _callback("ready", a))
    return file_html(doc, INLINE, data.title)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link src to dst (no copy of the bytes), or copy it where links fail (another file system)."""
    if not src.is_file():
        raise UserError(f"thumbnail {src} does not exist")
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def write_site(out: Path, data: MapData, thumb_files: dict[int, Path] | None = None) -> Path:
    """Write the explorer as a static site: `out/index.html` and `out/thumbs/<row>.webp` for each `thumb_files`
    entry (dataset row -> file). When `data.thumbs` is None it is set from `thumb_files`. Returns the index path."""
    out = Path(out)
    files = {int(r): Path(p) for r, p in (thumb_files or {}).items()}
    if data.thumbs is None:
        data.thumbs = np.isin(np.asarray(data.rows), np.fromiter(files, dtype=np.int64, count=len(files)))
    html = page_html(data).encode("utf-8")  # before anything is written: a page that cannot be built writes nothing
    thumbs = out / "thumbs"
    thumbs.mkdir(parents=True, exist_ok=True)
    wanted = {f"{r}.webp" for r in files}
    for old in thumbs.glob("*.webp"):  # an earlier site's thumbnails of rows this one does not show
        if old.name not in wanted:
            old.unlink()
    for r, src in files.items():
        _link_or_copy(src, thumbs / f"{r}.webp")
    index = out / "index.html"
    atomic_write_bytes(index, html)
    return index
