"""Embeddings read in row chunks, never whole: from the embedding store's shards or from .npy files.

A run with `--fit-sample N` never holds the full (rows x dim) matrix: the reducer is fitted on a seeded sample of N
rows and every chunk is transformed on its own, so only the reduced space (rows x --dims) sits in memory. Chunks are
read with plain file reads into fresh buffers (not memory maps), so a pass over 15 GB of embeddings keeps one chunk
resident at a time and the peak memory of a run does not grow with the store.

Every source has the same small interface (`RowChunks`): chunk ids, a chunk's length, reading a chunk, and from those
the helpers below (one pass for statistics, a sample of rows, a full load into device memory for a GPU run).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import UserError


class RowChunks:
    """Rows of a (n_rows, dim) float matrix in chunks; `read(cid)` returns float32 host rows."""

    n_rows: int
    dim: int

    def chunk_ids(self) -> list:
        """The ids of the chunks, in row order."""
        raise NotImplementedError  # pragma: no cover

    def chunk_len(self, cid) -> int:
        """The number of rows in chunk `cid`, without reading it."""
        raise NotImplementedError  # pragma: no cover

    def read(self, cid) -> np.ndarray:
        """Chunk `cid`'s rows as a float32 (rows, dim) array."""
        raise NotImplementedError  # pragma: no cover

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_rows, self.dim

    def chunks(self):
        """(first row, float32 rows) for each chunk in order."""
        start = 0
        for cid in self.chunk_ids():
            block = self.read(cid)
            yield start, block
            start += block.shape[0]

    def take(self, positions: np.ndarray) -> np.ndarray:
        """Rows at sorted `positions`, reading only the chunks that hold them."""
        positions = np.asarray(positions, dtype=np.int64)
        out = np.empty((len(positions), self.dim), np.float32)
        start, j = 0, 0
        for cid in self.chunk_ids():
            stop = start + self.chunk_len(cid)
            k = int(np.searchsorted(positions, stop))
            if k > j:
                out[j:k] = self.read(cid)[positions[j:k] - start]
                j = k
            start = stop
            if j == len(positions):
                break
        return out

    def load(self, backend):
        """The whole matrix as one backend array, filled chunk by chunk (on a GPU the host holds one chunk)."""
        xp = backend.xp
        X = xp.empty((self.n_rows, self.dim), dtype=xp.float32)
        for start, block in self.chunks():
            X[start:start + block.shape[0]] = xp.asarray(block)
        return X


class ArrayRows(RowChunks):
    """An in-memory (host or device) array behind the chunk interface, so one streamed code path serves both."""

    def __init__(self, X, chunk_rows: int = 65_536):
        self.X, self.chunk_rows = X, int(chunk_rows)
        self.n_rows, self.dim = int(X.shape[0]), int(X.shape[1])

    def chunk_ids(self) -> list:
        """The first row of each chunk of `chunk_rows` rows."""
        return list(range(0, self.n_rows, self.chunk_rows))

    def chunk_len(self, cid) -> int:
        """Rows in the chunk starting at row `cid`."""
        return min(self.chunk_rows, self.n_rows - cid)

    def read(self, cid):
        """A view of the array's rows from `cid`, in its own dtype and on its own device (no copy)."""
        return self.X[cid:cid + self.chunk_rows]

    def take(self, positions):
        """The rows at `positions`, indexed on the array's device (CuPy positions for a device array)."""
        if hasattr(self.X, "__cuda_array_interface__"):
            import cupy

            positions = cupy.asarray(positions)
        return self.X[positions]

    def load(self, backend):
        """The array itself as a backend array (`backend.asarray`, which may copy to or from the device)."""
        return backend.asarray(self.X)


class StoreRows(RowChunks):
    """The decoded rows of a complete embedding store, one shard per chunk (skipped images leave no row)."""

    def __init__(self, store):
        self.store = store
        self._lens = []
        rows, skipped = [], []
        for i in range(store.n_shards):
            with np.load(store._path(i), allow_pickle=False) as z:  # npz members load one at a time
                r = z["rows"]
                rows.append(r)
                skipped.extend(zip(z["skipped_rows"].tolist(), z["skipped_reasons"].tolist()))
                if i == 0:
                    self.dim = int(z["emb"].shape[1])
            self._lens.append(len(r))
        self.rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        self.skipped = skipped
        self.n_rows = int(len(self.rows))

    def chunk_ids(self) -> list:
        """The store's shard indices, one chunk per shard."""
        return list(range(self.store.n_shards))

    def chunk_len(self, cid) -> int:
        """The decoded rows in shard `cid` (its skipped images not counted)."""
        return self._lens[cid]

    def read(self, cid) -> np.ndarray:
        """Shard `cid`'s embeddings as float32."""
        with np.load(self.store._path(cid), allow_pickle=False) as z:
            return np.asarray(z["emb"], dtype=np.float32)

    def __getstate__(self):  # sent to Dask workers per task: paths and lengths only, not the row index
        return {**self.__dict__, "rows": None, "skipped": None}


def _npy_header(path: Path) -> tuple[tuple, np.dtype, int]:
    """(shape, dtype, data offset) of an .npy file, read without touching its data."""
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
        except ValueError as exc:
            raise UserError(f"{path}: not a .npy array ({exc})") from None
        offset = f.tell()
    if fortran:
        raise UserError(f"{path}: Fortran-ordered array; save it C-ordered (np.ascontiguousarray)")
    return shape, dtype, offset


class NpyRows(RowChunks):
    """Rows of one or more C-ordered 2-D .npy files, concatenated in order (the first `limit` rows if given)."""

    def __init__(self, files: list[Path], limit: int | None = None, chunk_bytes: int = 32 << 20):
        self.parts = []  # (path, dtype, offset, rows used)
        dim, total = None, 0
        for path in files:
            shape, dtype, offset = _npy_header(path)
            if len(shape) != 2 or dtype.kind not in "fiu":
                raise UserError(f"{path}: expected a 2-D numeric array (rows x dim), got shape {shape} {dtype}")
            if dim is not None and shape[1] != dim:
                raise UserError(f"{path}: {shape[1]} columns, but the files before it have {dim}")
            dim = shape[1]
            rows = shape[0] if limit is None else min(shape[0], limit - total)
            if rows > 0:
                self.parts.append((path, dtype, offset, rows))
                total += rows
        if dim is None or total == 0:
            raise UserError(f"{', '.join(map(str, files)) or 'embeddings'}: no rows")
        self.dim, self.n_rows = int(dim), int(total)
        self.chunk_rows = max(1024, chunk_bytes // (4 * self.dim))  # ~32 MB of float32 per chunk

    def chunk_ids(self) -> list:
        """(file index, first row in that file) per chunk of about `chunk_bytes` of float32; chunks never span files."""
        return [(p, s) for p, (_, _, _, rows) in enumerate(self.parts) for s in range(0, rows, self.chunk_rows)]

    def chunk_len(self, cid) -> int:
        """Rows in chunk `cid` = (file index, first row)."""
        p, s = cid
        return min(self.chunk_rows, self.parts[p][3] - s)

    def read(self, cid) -> np.ndarray:
        """Chunk `cid` read from its file into a fresh buffer (no memory map), as float32."""
        p, s = cid
        path, dtype, offset, _ = self.parts[p]
        n = self.chunk_len(cid)
        block = np.fromfile(path, dtype=dtype, count=n * self.dim, offset=offset + s * self.dim * dtype.itemsize)
        return block.reshape(n, self.dim).astype(np.float32, copy=False)


def column_stats(matrix: RowChunks, backend, rows=None, sample=None) -> tuple:
    """(mean, std, rows at `sample`) in one pass: per-column float64 sums, a check that every value is finite
    (naming the bad rows), and the sampled rows (sorted positions; None when not asked) gathered on the way."""
    xp = backend.xp
    s1 = xp.zeros(matrix.dim, dtype=xp.float64)
    s2 = xp.zeros(matrix.dim, dtype=xp.float64)
    bad = []
    taken, j = [], 0
    for start, block in matrix.chunks():
        if sample is not None:
            k = int(np.searchsorted(sample, start + block.shape[0]))
            if k > j:
                idx = sample[j:k] - start
                if hasattr(block, "__cuda_array_interface__"):  # a device chunk is indexed on the device
                    idx = xp.asarray(idx)
                taken.append(xp.asarray(block[idx], dtype=xp.float32))  # only the sampled rows move
                j = k
        for a in range(0, block.shape[0], 8192):  # float64 copies of a few thousand rows, not of the whole chunk
            B = xp.asarray(block[a:a + 8192], dtype=xp.float64)
            finite = xp.isfinite(B).all(axis=1)
            if not bool(finite.all()):
                bad.extend((backend.to_host(xp.nonzero(~finite)[0]) + start + a).tolist())
                B = B[finite]
            s1 += B.sum(axis=0)
            s2 += (B * B).sum(axis=0)
    if bad:
        where = np.asarray(bad) if rows is None else np.asarray(rows)[bad]
        shown = ", ".join(str(r) for r in where[:10]) + (" ..." if len(where) > 10 else "")
        raise UserError(f"{len(where)} embedding(s) contain NaN or inf (dataset rows {shown}); check the encoder "
                        "weights or run with fp32")
    n = matrix.n_rows
    mean = s1 / n
    std = xp.sqrt(xp.maximum(s2 / n - mean * mean, 0.0))
    picked = None if sample is None else xp.concatenate(taken) if taken else xp.zeros((0, matrix.dim), xp.float32)
    return mean, std, picked


def sample_positions(n: int, size: int, seed: int) -> np.ndarray:
    """`size` sorted row positions out of n, drawn with the run's seed."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(size, n), replace=False))
