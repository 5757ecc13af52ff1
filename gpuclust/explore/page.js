// Glue of the explorer page (gpuclust/explore/page.py): the side panel, the colour and show selects, the CSV export
// and the #row= link. page.py puts this text in front of each CustomJS callback, which then calls
// gc_main(action, a, cb_obj); `a` holds the callback's args: the data sources and widgets the page is made of.

const GC_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"};
const gc_esc = (s) => String(s).replace(/[&<>"']/g, (c) => GC_ENTITIES[c]);
const gc_fmt = (n) => n.toLocaleString("en-US");

// The thumbnail of entry i: an inline URL (notebook mode) or thumbs/<dataset row>.webp next to the page; "" for none.
function gc_thumb(a, i) {
  if (a.urls != null) return a.urls.data.url[i] || "";
  const d = a.src.data;
  return d.thumb != null && d.thumb[i] ? "thumbs/" + d.row[i] + ".webp" : "";
}

function gc_class(a, i) {
  const d = a.src.data;
  if (d.label == null) return "";
  const t = d.label[i];
  return a.classes != null && t >= 0 && t < a.classes.length ? a.classes[t] : String(t);
}

// The class for people: "class 3" where classes are named by numbers.
function gc_class_label(a, i) {
  const name = gc_class(a, i);
  return /^-?\d+$/.test(name) ? "class " + name : name;
}

function gc_path(a, i) {
  return a.paths == null ? "" : a.prefix + a.paths.data.path[i];
}

function gc_swatch(a, c) {
  const colour = c < 0 ? a.noise : a.palette[c % a.palette.length];
  return `<span class="gc-sw" style="background:${colour}"></span>`;
}

// One thumbnail with its dataset row under it, linking to #row=R (which selects that row).
function gc_cell(a, i, caption) {
  const url = gc_thumb(a, i), row = a.src.data.row[i];
  const img = url ? `<img src="${gc_esc(url)}" alt="row ${row}">` : `<span class="gc-none">no image</span>`;
  return `<a class="gc-cell" href="#row=${row}" title="row ${row}">${img}<span>${gc_esc(caption)}</span></a>`;
}

function gc_cluster_counts(a, sel) {
  const cl = a.src.data.cluster, counts = new Map();
  for (const i of sel) counts.set(cl[i], (counts.get(cl[i]) || 0) + 1);
  const top = [...counts.entries()].sort((p, q) => q[1] - p[1]);
  const items = top.slice(0, 12).map(([c, m]) =>
    `<li>${gc_swatch(a, c)}${c < 0 ? "noise" : "cluster " + c}: ${gc_fmt(m)}</li>`);
  if (top.length > 12) items.push(`<li>… ${top.length - 12} more clusters</li>`);
  return `<ul class="gc-counts">${items.join("")}</ul>`;
}

function gc_selection_html(a, sel) {
  const d = a.src.data, shown = [];
  for (const i of sel) {
    if (shown.length >= a.max_panel) break;
    if (gc_thumb(a, i)) shown.push(i);
  }
  const cells = shown.map((i) => gc_cell(a, i, String(d.row[i]))).join("");
  const more = shown.length < sel.length ? `<p class="gc-note">${gc_fmt(shown.length)} of them shown</p>` : "";
  return `<h3 id="gc-selected">${gc_fmt(sel.length)} selected</h3>${gc_cluster_counts(a, sel)}` +
    `<div class="gc-grid">${cells}</div>${more}`;
}

function gc_point_html(a, i) {
  const d = a.src.data, url = gc_thumb(a, i);
  const img = url ? `<img class="gc-big" id="gc-thumb" src="${gc_esc(url)}" alt="row ${d.row[i]}">` : "";
  const cls = gc_class_label(a, i), path = gc_path(a, i);
  return `<h3 id="gc-selected">row ${d.row[i]}</h3>${img}<p>${gc_swatch(a, d.cluster[i])}` +
    `${d.cluster[i] < 0 ? "noise" : "cluster " + d.cluster[i]}${cls ? " · " + gc_esc(cls) : ""}</p>` +
    (path ? `<p class="gc-path">${gc_esc(path)}</p>` : "") + gc_neighbours_html(a, i);
}

function gc_neighbours_html(a, i) {
  if (a.nb == null) return "";
  const nb = a.nb.data.nb, sim = a.nb.data.sim, k = a.k, cells = [];
  for (let j = i * k; j < (i + 1) * k; j++) {
    if (nb[j] >= 0) cells.push(gc_cell(a, nb[j], (sim[j] / 10000).toFixed(3)));
  }
  return `<h4>nearest neighbours (cosine)</h4><div class="gc-grid" id="gc-neighbours">${cells.join("")}</div>`;
}

function gc_panel(a) {
  const sel = a.src.selected.indices;
  a.button.disabled = sel.length == 0;
  if (sel.length == 0) a.panel.text = a.hint;
  else if (sel.length == 1) a.panel.text = gc_point_html(a, sel[0]);
  else a.panel.text = gc_selection_html(a, sel);
}

function gc_colour(a, obj) {
  const [field, mapper] = a.colours[obj.value];
  const r = a.renderer, spec = {field: field, transform: mapper};
  for (const g of [r.glyph, r.selection_glyph, r.nonselection_glyph, r.hover_glyph]) {
    if (g != null) g.fill_color = spec;
  }
}

// The "show" select: draw only one cluster, noise or class, and keep the selection within what is drawn.
function gc_show(a, obj) {
  const d = a.src.data, n = d.x.length, v = obj.value;
  let keep = null;
  if (v != "all") {
    const col = v[0] == "c" ? d.cluster : d.label, want = Number(v.slice(2));
    const idx = [];
    for (let i = 0; i < n; i++) if (col[i] == want) idx.push(i);
    keep = Int32Array.from(idx);
  }
  a.filter.indices = keep;
  if (keep != null) {
    const inside = new Set(keep);
    a.src.selected.indices = a.src.selected.indices.filter((i) => inside.has(i));
  }
  const m = keep == null ? n : keep.length;
  a.status.text = `<span id="gc-shown" data-shown="${m}">showing ${gc_fmt(m)} of ${gc_fmt(n)}</span>`;
}

function gc_csv_field(s) {
  s = String(s);
  return /[",\n\r]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
}

function gc_export(a) {
  const d = a.src.data, lines = ["row,cluster,class,path"];
  for (const i of a.src.selected.indices) {
    lines.push([d.row[i], d.cluster[i], gc_class(a, i), gc_path(a, i)].map(gc_csv_field).join(","));
  }
  const blob = new Blob([lines.join("\n") + "\n"], {type: "text/csv"});
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = "selection.csv";
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

// #row=<dataset row> selects that row (as a tap does), on load and whenever the hash changes.
function gc_ready(a) {
  const go = () => {
    const m = window.location.hash.match(/row=(\d+)/);
    if (m == null) return;
    const i = a.src.data.row.indexOf(Number(m[1]));
    if (i < 0) return;
    if (a.filter.indices != null && !a.filter.indices.includes(i)) a.show.value = "all";  // the row is hidden
    a.src.selected.indices = [i];
  };
  go();
  window.addEventListener("hashchange", go);
}

function gc_main(action, a, obj) {
  const actions = {panel: gc_panel, colour: gc_colour, show: gc_show, export: gc_export, ready: gc_ready};
  return actions[action](a, obj);
}
