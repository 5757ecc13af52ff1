"""`embeddings:PATH` - embeddings computed elsewhere (another tool, an earlier pipeline), clustered without an encoder.

PATH is one .npy file (rows x dim) or a folder of .npy shards taken in name order (clip-retrieval writes its
`img_emb/` this way). Labels, when there are any, sit beside them: `labels.npy` in the folder (for a folder, else a
`NAME.labels.npy` beside every shard `NAME.npy`, joined in shard order), or for one file `NAME.labels.npy` next to
`NAME.npy` (else `labels.npy` in its folder); one label per row, no more, no fewer. Integer labels are kept as they
are; string (or float) labels become class ids in sorted order, and the strings are kept as the class names.
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
    """Precomputed embeddings: `matrix` streams the rows; labels/classes when label files were found."""

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


def _is_label_file(path: Path) -> bool:
    return path.name == "labels.npy" or path.name.endswith(".labels.npy")


def _load_labels(files: list[Path]) -> np.ndarray:
    parts = []
    for f in files:
        try:
            parts.append(np.load(f, allow_pickle=False))
        except ValueError as exc:
            raise UserError(f"{f}: not a .npy array ({exc})") from None
        if parts[-1].ndim != 1:
            raise UserError(f"{f}: expected a 1-d array of labels, got shape {parts[-1].shape}")
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def embedding_source(spec: str, limit: int | None = None, subsample: str = "first") -> EmbeddingSource:
    """The EmbeddingSource for `embeddings:PATH`, cut to the first `limit` rows (labels cut to match).

    Raises UserError for a missing path, a subsample other than "first", or labels that do not match the rows."""
    arg = spec.partition(":")[2]
    if not arg:
        raise UserError("embeddings:PATH needs a .npy file or a folder of .npy files")
    if subsample != "first":
        raise UserError(f"--subsample {subsample}: embeddings:PATH takes the first --limit rows only")
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit}: must be at least 1")
    path = Path(arg).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.glob("*.npy") if not _is_label_file(p))
        if not files:
            raise UserError(f"{spec}: no .npy files in {path}")
        label_files = [path / "labels.npy"]
        if not label_files[0].is_file():
            own = [f.with_name(f.name[:-4] + ".labels.npy") for f in files]
            have = [f.is_file() for f in own]
            if any(have) and not all(have):
                missing = files[have.index(False)].name
                raise UserError(f"{spec}: some shards have NAME.labels.npy beside them but {missing} has none; "
                                "give every shard its labels, or one labels.npy for the folder")
            label_files = own if all(have) else []
    elif path.is_file():
        files = [path]
        label_file = _file_labels(path)
        label_files = [label_file] if label_file is not None and label_file.is_file() else []
    else:
        raise UserError(f"{spec}: no such file or folder")
    matrix = NpyRows(files, limit)
    labels = classes = None
    if label_files:
        labels = _load_labels(label_files)
        n_rows = matrix.n_rows if limit is None else NpyRows(files).n_rows  # --limit cuts the labels, not the file
        if labels.shape[0] != n_rows:
            named = label_files[0] if len(label_files) == 1 else f"{label_files[0].parent}/*.labels.npy"
            raise UserError(f"{named}: expected one label per row ({n_rows}), got shape {labels.shape}")
        labels = labels[: matrix.n_rows]
        if labels.dtype.kind not in "iu":  # string or float labels -> class ids, the values kept as class names
            names, labels = np.unique(labels, return_inverse=True)
            classes = [str(v) for v in names]
        labels = labels.astype(np.int64)
    return EmbeddingSource(spec, matrix, labels, classes)
