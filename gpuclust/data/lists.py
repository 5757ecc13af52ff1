"""File lists: `csv:PATH` and `parquet:PATH`, one image per row with a `path` and an optional `label`.

Relative paths resolve against `root` when one is declared (and may not leave it), else against the list's folder.
A row that cannot be used (no path, a path outside the root) stays in the dataset as a counted skip, so row numbers
keep matching the list.
"""
from __future__ import annotations

import csv
from pathlib import Path

from ..errors import UserError
from .base import FileDataset, encode_labels


def _read_csv(path: Path) -> tuple[list[str], list[str] | None]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except UnicodeDecodeError as exc:  # a Latin-1 list, or a binary file such as a parquet list
        hint = "; for a parquet list use parquet:PATH" if _is_parquet(path) else ""
        raise UserError(f"csv:{path}: cannot read it (not UTF-8 text: byte {exc.object[exc.start]:#04x}); "
                        f"save the list as UTF-8{hint}") from None
    except csv.Error as exc:  # e.g. a field over csv's size limit, as in a binary file that happens to decode
        raise UserError(f"csv:{path}: cannot read it ({exc})") from None
    if not rows:
        raise UserError(f"csv:{path}: the list is empty")
    head = [c.strip().lower() for c in rows[0]]
    if "path" in head:
        col = head.index("path")
        lab = head.index("label") if "label" in head else None
        rows = rows[1:]
    else:  # no header: path[,label]
        col, lab = 0, (1 if len(rows[0]) > 1 else None)
    paths = [r[col].strip() if len(r) > col else "" for r in rows]
    labels = None if lab is None else [r[lab].strip() if len(r) > lab else "" for r in rows]
    return paths, labels


def _is_parquet(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PAR1"


def _read_parquet(path: Path) -> tuple[list[str], list[str] | None]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not parquet
        raise UserError(f"parquet:{path}: cannot read it ({type(exc).__name__})") from None
    if "path" not in table.column_names:
        raise UserError(f"parquet:{path}: no `path` column (columns: {', '.join(table.column_names)})")
    paths = ["" if p is None else str(p) for p in table.column("path").to_pylist()]
    labels = None
    if "label" in table.column_names:
        labels = ["" if v is None else str(v) for v in table.column("label").to_pylist()]
    return paths, labels


def file_list(kind: str, arg: str, root: str | None = None) -> FileDataset:
    """The FileDataset of a `csv` or `parquet` list at `arg`; unusable rows are kept and marked bad.

    Raises UserError for a missing or unreadable list, one with no rows, or a `root` that is not a folder."""
    spec = f"{kind}:{arg}"
    path = Path(arg).expanduser()
    if not arg or not path.is_file():
        raise UserError(f"{spec}: no such file")
    paths, labels = (_read_csv if kind == "csv" else _read_parquet)(path)
    if not paths:
        raise UserError(f"{spec}: the list has no rows")
    base = Path(root).expanduser().resolve() if root else path.parent.resolve()
    if root and not base.is_dir():
        raise UserError(f"--data-root {root}: no such folder")
    resolved, bad = [], {}
    for i, raw in enumerate(paths):
        if "\0" in raw:  # no OS accepts a NUL in a path; resolving one raises
            resolved.append(str(base))
            bad[i] = "path contains a NUL byte"
            continue
        p = (base / raw).resolve() if raw else base
        resolved.append(str(p))
        if not raw:
            bad[i] = "row has no path"
        elif root and not p.is_relative_to(base):
            bad[i] = f"path outside the declared root {base}"
        elif labels is not None and not labels[i]:
            bad[i] = "row has no label"
    label_ids, classes = (None, None) if labels is None else encode_labels(labels)
    return FileDataset(spec=spec, paths=resolved, labels=label_ids, classes=classes, root=str(base), bad=bad,
                       description=f"{len(paths)} images listed in {path.name}")
