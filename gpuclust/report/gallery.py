"""The cluster gallery of report.html: for each cluster, largest first, the images nearest its centre.

A person judges a clustering of images by looking at them; the metrics say how well it matches labels, the gallery
shows what each group is (and, without labels, it is the only way to see that). The representatives are chosen in
the clustering space on the run's device, and only their row numbers reach the host; the images are then read from
the dataset again (a few hundred at most) and written as one JPEG strip per cluster.
"""
from __future__ import annotations

import html
import io
import logging
from pathlib import Path
from typing import Callable

import numpy as np

from ..store import atomic_write_bytes

log = logging.getLogger(__name__)

MAX_CLUSTERS = 30  # strips in the report; the sizes plot covers every cluster
THUMB = 96  # pixels, the longer side of a thumbnail


def representatives(backend, Z, labels_pred, per_cluster: int, max_clusters: int = MAX_CLUSTERS,
                    seed: int = 0) -> list[tuple[int, int, np.ndarray]]:
    """[(cluster, size, positions)], the `max_clusters` largest clusters first and noise (-1) last: each
    cluster's `per_cluster` rows nearest its mean in `Z` (nearest first), and a seeded sample of the noise."""
    xp = backend.xp
    labels = xp.asarray(labels_pred)
    ids, counts = (np.asarray(backend.to_host(a)) for a in xp.unique(labels, return_counts=True))
    clustered = ids >= 0
    order = np.argsort(-counts[clustered], kind="stable")[:max_clusters]
    out = []
    for c, size in zip(ids[clustered][order].tolist(), counts[clustered][order].tolist()):
        rows = xp.nonzero(labels == c)[0]
        Zc = Z[rows]
        d = ((Zc - Zc.mean(axis=0)) ** 2).sum(axis=1)
        near = rows[xp.argsort(d)[:per_cluster]]
        out.append((int(c), int(size), np.asarray(backend.to_host(near), dtype=np.int64)))
    if (~clustered).any():
        noise = np.asarray(backend.to_host(xp.nonzero(labels < 0)[0]), dtype=np.int64)
        pick = np.random.default_rng(seed).choice(len(noise), size=min(per_cluster, len(noise)), replace=False)
        out.append((-1, int(len(noise)), noise[np.sort(pick)]))
    return out


def _thumbnail(img):
    from PIL import Image

    img = img.convert("RGB")
    img.thumbnail((THUMB, THUMB), Image.Resampling.BICUBIC)
    if max(img.size) < THUMB:  # small images (28 x 28 digits) are enlarged, keeping their shape
        scale = THUMB / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.Resampling.NEAREST)
    return img


def _strip(images: list) -> bytes:
    from PIL import Image

    gap = 4
    strip = Image.new("RGB", (len(images) * (THUMB + gap) - gap, THUMB), "white")
    for i, img in enumerate(images):
        x = i * (THUMB + gap) + (THUMB - img.width) // 2
        strip.paste(img, (x, (THUMB - img.height) // 2))
    buf = io.BytesIO()
    strip.save(buf, format="JPEG", quality=88)
    return buf.getvalue()


def _caption(c: int, size: int, n_rows: int, members: np.ndarray, labels_true, classes) -> str:
    head = "noise" if c < 0 else f"cluster {c}"
    text = f"{head}: {size:,} images ({100 * size / max(n_rows, 1):.1f}%)"
    if labels_true is not None and c >= 0:
        values, counts = np.unique(labels_true[members], return_counts=True)
        top = int(values[np.argmax(counts)])
        name = classes[top] if classes is not None and 0 <= top < len(classes) else str(top)
        text += f"; most common class {name} ({100 * counts.max() / counts.sum():.0f}%)"
    return text


def write_gallery(out: Path, groups: list[tuple[int, int, np.ndarray]], load: Callable, rows: np.ndarray,
                  labels_pred: np.ndarray, labels_true, classes, n_clusters: int, paths=None) -> str:
    """Writes gallery/cluster-*.jpg, gallery/gallery.csv (which rows and files each strip shows, in order) and
    returns the HTML section showing them. `load(dataset_row)` gives a PIL image; a row that cannot be read
    (SkipImage) is left out of its strip. `rows` maps positions to dataset rows, `paths` dataset rows to files."""
    import csv

    from ..data.base import SkipImage

    folder = out / "gallery"
    folder.mkdir(exist_ok=True)
    n_rows = len(labels_pred)
    parts, unreadable = [], 0
    listing = io.StringIO()
    table = csv.writer(listing)
    table.writerow(["cluster", "rank", "row", "path", "label_true"])
    for c, size, positions in groups:
        thumbs = []
        for pos in positions.tolist():
            row = int(rows[pos])
            try:
                thumbs.append(_thumbnail(load(row)))
            except SkipImage:
                unreadable += 1
                continue
            table.writerow([c, len(thumbs) - 1, row, "" if paths is None else paths[row],
                            "" if labels_true is None else int(labels_true[pos])])
        if not thumbs:
            continue
        name = f"cluster-{'noise' if c < 0 else f'{c:04d}'}.jpg"
        atomic_write_bytes(folder / name, _strip(thumbs))
        members = np.flatnonzero(labels_pred == c) if labels_true is not None and c >= 0 else None
        caption = _caption(c, size, n_rows, members, labels_true, classes)
        parts.append(f'<figure><figcaption>{html.escape(caption)}</figcaption>'
                     f'<img src="gallery/{name}" alt="{html.escape(caption)}"></figure>')
    atomic_write_bytes(folder / "gallery.csv", listing.getvalue().encode())
    if unreadable:
        log.warning("report: %d gallery image(s) could not be read again and are left out", unreadable)
    shown = sum(1 for c, _, _ in groups if c >= 0)
    if n_clusters == 0:
        intro = "No clusters were found: every image is noise. A sample of them:"
    else:
        which = "every cluster" if shown == n_clusters else f"the {shown} largest of {n_clusters:,} clusters"
        noise = ", then a sample of the noise" if any(c < 0 for c, _, _ in groups) else ""
        intro = f"The images nearest each cluster's centre in the clustering space, nearest first: {which}, " \
                f"largest first{noise}."
    return f"<h2>clusters</h2><p>{html.escape(intro)}</p>" + "".join(parts)
