"""Strips of images in report.html for the curate stage (duplicate groups, top outliers): a titled section of
captioned strips, each a row of thumbnails of chosen dataset rows, written under `curate/`."""
from __future__ import annotations

import html
import logging
import re
from pathlib import Path
from typing import Callable

from ..store import atomic_write_bytes
from .gallery import _strip, _thumbnail

log = logging.getLogger(__name__)

MAX_PER_STRIP = 12  # thumbnails per strip; a longer list shows its first ones


def write_strips(out: Path, sections: list, load: Callable | None) -> str:
    """The HTML of every section [(title, [(caption, dataset rows)])], its strips written as JPEG files in
    out/curate/. `load(dataset_row)` gives a PIL image (None: no images, e.g. precomputed embeddings: captions
    only). A row that cannot be read again is left out of its strip."""
    from ..data.base import SkipImage

    parts = []
    for s, (title, strips) in enumerate(sections):
        parts.append(f"<h2>{html.escape(title)}</h2>")
        for i, (caption, rows) in enumerate(strips):
            img = ""
            if load is not None:
                thumbs = []
                for row in list(rows)[:MAX_PER_STRIP]:
                    try:
                        thumbs.append(_thumbnail(load(int(row))))
                    except SkipImage:
                        continue
                if thumbs:
                    name = f"{_slug(title)}-{i:03d}.jpg"
                    (out / "curate").mkdir(exist_ok=True)
                    atomic_write_bytes(out / "curate" / name, _strip(thumbs))
                    img = f'<img src="curate/{name}" alt="{html.escape(caption)}">'
            parts.append(f"<figure><figcaption>{html.escape(caption)}</figcaption>{img}</figure>")
    return "".join(parts)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "strip"
