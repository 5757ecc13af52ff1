"""Explore a run: every image on an interactive 2-D map, with thumbnails, in the browser and in notebooks.

    python -m gpuclust.explore runs/fmnist                 # opens the map in the browser (a local server)
    python -m gpuclust.explore runs/fmnist --export site   # the same as a static folder: open site/index.html

    view = gpuclust.explore("runs/fmnist")   # or res.explore() on a ClusterResult
    view                                     # in a notebook: the map, inline
    view.save("site")                        # the static site

Rooms: layout.py (the map stage every run runs), build.py (what a run holds, as a MapData), thumbs.py (thumbnails
once per image, cached), page.py (the Bokeh page), atlas.py (an Embedding Atlas export). The page is Bokeh's: a
standalone HTML file with BokehJS inlined, WebGL points, hover, lasso and box selection (docs/explore.md says why
Bokeh, and what Embedding Atlas adds). Needs the extra: pip install 'gpuclust[explore]'.
"""
from __future__ import annotations

import base64
import html
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import require
from .data import MapData

EXPLORE_INSTALL = "pip install 'gpuclust[explore]'  (bokeh)"


def require_bokeh() -> None:
    """A one-line UserError with the install command when bokeh is missing."""
    require("bokeh", "the explorer", EXPLORE_INSTALL)


@dataclass
class Explorer:
    """A run's map ready to show: `data` (MapData), the thumbnail file of each row that has one, and notes on what
    was left out (e.g. no thumbnails for precomputed embeddings). In a notebook it displays itself."""

    data: MapData
    thumb_files: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def save(self, out: str | Path) -> Path:
        """Write the static site into folder `out` (index.html, thumbs/); returns the index.html path."""
        require_bokeh()
        from .page import write_site

        return write_site(Path(out).expanduser(), self.data, self.thumb_files)

    def to_atlas(self, out: str | Path) -> Path:
        """Write the rows in Embedding Atlas's layout (atlas.parquet and a README with the command that opens it)."""
        from .atlas import write_atlas

        return write_atlas(Path(out).expanduser(), self.data, self.thumb_files)

    def html(self) -> str:
        """The page as one standalone HTML document with every thumbnail inline (for notebooks and sharing)."""
        require_bokeh()
        from .page import page_html

        return page_html(self.data, self.inline_thumbnails())

    def inline_thumbnails(self) -> list[str]:
        """One data: URI per row ('' for rows without a thumbnail)."""
        uris = {}
        for row, path in self.thumb_files.items():
            uris[int(row)] = "data:image/webp;base64," + base64.b64encode(Path(path).read_bytes()).decode()
        return [uris.get(int(r), "") for r in self.data.rows]

    def _repr_html_(self) -> str:
        # An iframe holding the standalone page: it works in Jupyter, JupyterLab, VS Code and Colab alike, without
        # Bokeh's notebook extension.
        return (f'<iframe srcdoc="{html.escape(self.html(), quote=True)}" style="width:100%;height:760px;'
                'border:0" sandbox="allow-scripts allow-downloads"></iframe>')


def explore(run, *, thumbnails: int | None = None, neighbours: int = 10, progress: bool = False) -> Explorer:
    """The explorer of a finished run: a run directory, a sweep directory (its best run), or a ClusterResult.
    `thumbnails`: at most this many rows get a thumbnail (default 50,000 for a folder, 2,000 for a result shown in
    a notebook; None keeps the default, 0 none); `neighbours`: nearest rows listed per row (0: none)."""
    from . import build

    if hasattr(run, "labels_device"):  # a ClusterResult
        got = build.from_result(run, thumbnails=build.NOTEBOOK_THUMBNAILS if thumbnails is None else thumbnails,
                                neighbours=neighbours, progress=progress)
    else:
        got = build.from_run(run, thumbnails=build.DEFAULT_THUMBNAILS if thumbnails is None else thumbnails,
                             neighbours=neighbours, progress=progress)
    return Explorer(got.data, got.thumb_files, got.notes)


class _CallableModule(types.ModuleType):
    """`gpuclust.explore(...)` is the function, as `gpuclust.sweep(...)` and `gpuclust.assign(...)` are."""

    def __call__(self, *args, **kwargs):
        return explore(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["explore", "Explorer", "MapData"]
