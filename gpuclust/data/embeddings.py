"""`embeddings:PATH` - embeddings computed elsewhere (another tool, an earlier pipeline), clustered without an encoder.

PATH is one .npy file (rows x dim) or a folder of .npy shards taken in name order (clip-retrieval writes its
`img_emb/` this way). Labels, when there are any, sit beside them: `labels.npy` in the folder, or for one file
`NAME.labels.npy` next to `NAME.npy` (else `labels.npy` in its folder); one label per row, no more, no fewer.
The rows are read in chunks (`gpuclust.stream.NpyRows`), so with `--fit-sample` a file larger than memory works.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..stream import NpyRows


@dataclass
class EmbeddingSource:
    spec: str
    matrix: NpyRows
    labels: np.ndarray | None = None
    classes: list[str] | None = None
    paths: list[str] | None = None

    def __len__(self) -> int:
        return self.matrix.n_rows


def _file_labels(path: Path) -> Path | None:
    """The labels of one .npy file: NAME.labels.npy beside it, else labels.npy in its folder."""
    if path.suffix != ".npy":
        return None
    own = path.with_name(path.name[:-4] + ".labels.npy")
    if own.is_file() or path.name == "labels.npy":
        return own
    return path.with_name("labels.npy")


def embedding_source(spec: str, limit: int | None = None, subsample: str = "first") -> EmbeddingSource:
    arg = spec.partition(":")[2]
    if not arg:
        raise UserError("embeddings:PATH needs a .npy file or a folder of .npy files")
    if subsample != "first":
        raise UserError(f"--subsample {subsample}: embeddings:PATH takes the first --limit rows only")
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit}: must be at least 1")
    path = Path(arg).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.glob("*.npy") if p.name != "labels.npy")
        label_file = path / "labels.npy"
        if not files:
            raise UserError(f"{spec}: no .npy files in {path}")
    elif path.is_file():
        files = [path]
        label_file = _file_labels(path)
    else:
        raise UserError(f"{spec}: no such file or folder")
    matrix = NpyRows(files, limit)
    labels = None
    if label_file is not None and label_file.is_file():
        try:
            labels = np.load(label_file, allow_pickle=False)
        except ValueError as exc:
            raise UserError(f"{label_file}: not a .npy array ({exc})") from None
        n_rows = matrix.n_rows if limit is None else NpyRows(files).n_rows  # --limit cuts the labels, not the file
        if labels.ndim != 1 or labels.shape[0] != n_rows:
            raise UserError(f"{label_file}: expected one label per row ({n_rows}), got shape {labels.shape}")
        labels = labels[: matrix.n_rows]
        if labels.dtype.kind not in "iu":
            _, labels = np.unique(labels, return_inverse=True)  # string or float labels -> class ids
        labels = labels.astype(np.int64)
    return EmbeddingSource(spec, matrix, labels)
