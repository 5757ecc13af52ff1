"""Export a run's map for Embedding Atlas (`pip install embedding-atlas`): one parquet file in the layout its command
line reads, and a README with the command that opens it. Embedding Atlas is not needed to write the file.

Its layout (embedding-atlas 0.26): coordinates in two float columns (`--x`, `--y`); nearest neighbours in one column
(`--neighbors`) holding per row a struct `{ids: [...], distances: [...]}` of equal-length lists, ids being positions
in the table (it numbers rows 0..n-1) sorted by distance; images in one column (`--image`). Its viewer recognises
PNG, JPEG, GIF, BMP and TIFF bytes but not WebP, while a `data:image/...` URL is shown whatever the format, so the
thumbnails go in as WebP data URLs (null for rows without one).
"""
from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np

from ..store import atomic_write_bytes
from .data import MapData

ATLAS_FILE = "atlas.parquet"
_CURATE = {"outlier_score": "float32", "outlier": "bool", "duplicate_group": "int64", "duplicate_of": "int64"}


def atlas_command(data: MapData) -> str:
    """The command line that opens `atlas.parquet` (run in the folder that holds it)."""
    cmd = f"embedding-atlas {ATLAS_FILE} --x x --y y"
    if data.neighbours is not None:
        cmd += " --neighbors neighbors"
    return cmd + " --image image"


def atlas_table_columns(data: MapData) -> list[str]:
    """The names of the columns `atlas_table(data)` writes, in order."""
    names = ["row", "x", "y", "cluster"]
    names += ["class"] if data.label_true is not None else []
    names += ["path"] if data.paths is not None else []
    names += ["silhouette"] if data.silhouette is not None else []
    names += [c for c in _CURATE if c in data.columns]
    names += ["neighbors"] if data.neighbours is not None else []
    return names + ["image"]


def atlas_table(data: MapData, thumb_files: dict[int, Path] | None = None):
    """The pyarrow Table of `data` in Embedding Atlas's layout (see the module's docstring); `thumb_files` maps a
    dataset row to its thumbnail file (explore/thumbs.py)."""
    import pyarrow as pa

    n = len(data)
    cols = {
        "row": pa.array(np.asarray(data.rows, np.int64)),
        "x": pa.array(np.asarray(data.x, np.float32)),
        "y": pa.array(np.asarray(data.y, np.float32)),
        "cluster": pa.array(["noise" if c < 0 else str(c) for c in np.asarray(data.cluster).tolist()], pa.string()),
    }
    if data.label_true is not None:
        cols["class"] = pa.array([data.class_name(i) for i in range(n)], pa.string())
    if data.paths is not None:
        cols["path"] = pa.array([str(p) for p in data.paths], pa.string())
    if data.silhouette is not None:
        sil = np.asarray(data.silhouette, np.float32)
        cols["silhouette"] = pa.array(sil, mask=np.isnan(sil))  # null, not NaN, where there is none
    for name, dtype in _CURATE.items():
        if name in data.columns:
            cols[name] = pa.array(np.asarray(data.columns[name]).astype(dtype))
    if data.neighbours is not None:
        cols["neighbors"] = _neighbours(data)
    cols["image"] = pa.array(_images(data, thumb_files or {}), pa.string())
    return pa.table(cols)


def write_atlas(out: Path, data: MapData, thumb_files: dict[int, Path] | None = None) -> Path:
    """Write `out/atlas.parquet` (atomically) and `out/README.txt` with the command that opens it; returns the
    parquet file's path."""
    import pyarrow.parquet as pq

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    pq.write_table(atlas_table(data, thumb_files), buf, compression="zstd")
    path = out / ATLAS_FILE
    atomic_write_bytes(path, buf.getvalue())
    atomic_write_bytes(out / "README.txt", _readme(data, thumb_files).encode())
    return path


def _neighbours(data: MapData):
    """The `neighbors` column: per row its k nearest rows (positions in the table) and cosine distances (1 - sim).
    Embedding Atlas stacks the lists into one (n, k) array, so every row has k entries: a slot with no neighbour
    (a run of fewer than k + 1 rows) holds the row itself at distance 0, as Embedding Atlas's own lists start."""
    import pyarrow as pa

    nb = np.asarray(data.neighbours, np.int64)
    if data.neighbour_sim is None:
        dist = np.zeros(nb.shape, np.float32)
    else:
        dist = (1.0 - np.asarray(data.neighbour_sim, np.float32)).clip(0.0, 2.0)
    missing = nb < 0
    nb = np.where(missing, np.arange(len(nb))[:, None], nb).astype(np.int32)
    dist = np.where(missing, 0.0, dist).astype(np.float32)
    k = nb.shape[1]
    offsets = pa.array(np.arange(0, nb.size + 1, k, dtype=np.int32))
    ids = pa.ListArray.from_arrays(offsets, pa.array(nb.ravel()))
    distances = pa.ListArray.from_arrays(offsets, pa.array(dist.ravel()))
    return pa.StructArray.from_arrays([ids, distances], names=["ids", "distances"])


def _images(data: MapData, thumb_files: dict[int, Path]) -> list[str | None]:
    """Each entry's thumbnail as a `data:image/webp;base64,...` URL, or None."""
    out = []
    for r in np.asarray(data.rows).tolist():
        p = thumb_files.get(int(r))
        out.append(None if p is None else "data:image/webp;base64," + base64.b64encode(Path(p).read_bytes()).decode())
    return out


def _readme(data: MapData, thumb_files: dict[int, Path] | None) -> str:
    n_img = sum(int(r) in (thumb_files or {}) for r in np.asarray(data.rows).tolist())
    cols = ", ".join(atlas_table_columns(data))
    return (
        f"{data.title}: {len(data):,} rows on the run's 2-D map, {n_img:,} with a thumbnail, for Embedding Atlas.\n\n"
        f"Columns: {cols}.\n"
        "cluster is 'noise' for rows no cluster took; row is the dataset row; neighbors holds each row's nearest\n"
        "rows (ids: positions in this table) with their cosine distances; image holds WebP thumbnails as data URLs.\n\n"
        "Open it (Embedding Atlas's map needs a browser with WebGPU):\n\n"
        "    pip install embedding-atlas\n"
        f"    {atlas_command(data)}\n\n"
        "A static site instead of a local server: add --export-application site/ (or site.zip).\n"
    )

