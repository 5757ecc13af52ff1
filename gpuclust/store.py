"""The embedding store: embeddings on disk in shards, written atomically, keyed by what changes their numbers.

Layout: `<cache>/<digest>/key.json` (the key), `shard-NNNNNN.npz` (rows [i*shard_size, (i+1)*shard_size) of the
dataset: `emb` for the rows that decoded, their `rows`, and the `skipped` rows with reasons), `complete.json` once
every shard is there. A shard file exists only when whole (write to a temporary name, fsync, rename), so a killed
run resumes at the first missing shard.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

STORE_FORMAT = 1


def default_cache_dir() -> Path:
    return Path(os.environ.get("GPUCLUST_CACHE", Path.home() / ".cache" / "gpuclust")).expanduser()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write (disk full, killed) leaves neither a partial file nor litter
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


@dataclass
class Shard:
    emb: np.ndarray  # (n_kept, dim)
    rows: np.ndarray  # (n_kept,) dataset row indices
    skipped_rows: np.ndarray
    skipped_reasons: np.ndarray


class EmbeddingStore:
    def __init__(self, root: Path | str, key: dict, n_rows: int, shard_size: int = 2048):
        self.key = {**key, "n_rows": int(n_rows), "store_format": STORE_FORMAT}
        self.digest = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:20]
        self.dir = Path(root).expanduser() / self.digest
        self.n_rows = int(n_rows)
        self.dir.mkdir(parents=True, exist_ok=True)
        key_file = self.dir / "key.json"
        if key_file.exists():
            # The layout of an existing store wins over the requested shard size.
            shard_size = json.loads(key_file.read_text()).get("shard_size", shard_size)
        else:
            atomic_write_json(key_file, {**self.key, "shard_size": shard_size})
        self.shard_size = int(shard_size)

    @property
    def n_shards(self) -> int:
        return max(1, -(-self.n_rows // self.shard_size))

    def shard_range(self, i: int) -> range:
        return range(i * self.shard_size, min(self.n_rows, (i + 1) * self.shard_size))

    def _path(self, i: int) -> Path:
        return self.dir / f"shard-{i:06d}.npz"

    def has(self, i: int) -> bool:
        return self._path(i).is_file()

    def missing(self) -> list[int]:
        return [i for i in range(self.n_shards) if not self.has(i)]

    @property
    def complete(self) -> bool:
        return (self.dir / "complete.json").is_file()

    def write(self, i: int, shard: Shard) -> None:
        import io

        buf = io.BytesIO()
        np.savez(buf, emb=shard.emb, rows=shard.rows.astype(np.int64),
                 skipped_rows=shard.skipped_rows.astype(np.int64),
                 skipped_reasons=np.asarray(shard.skipped_reasons, dtype=str))
        atomic_write_bytes(self._path(i), buf.getvalue())

    def read(self, i: int) -> Shard:
        with np.load(self._path(i), allow_pickle=False) as z:
            return Shard(z["emb"], z["rows"], z["skipped_rows"], z["skipped_reasons"])

    def mark_complete(self, dim: int) -> None:
        atomic_write_json(self.dir / "complete.json", {"dim": int(dim), "n_shards": self.n_shards})


class ReductionCache:
    """Reduced spaces stored beside the embeddings they came from, keyed by the reducer's settings and the twin
    that ran it, so a second run (another clusterer, another k) skips a UMAP fit."""

    def __init__(self, store_dir: Path | str):
        self.dir = Path(store_dir) / "reduced"

    def _paths(self, key: dict) -> tuple[Path, Path]:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
        return self.dir / f"{digest}.npy", self.dir / f"{digest}.json"

    def get(self, key: dict) -> tuple[np.ndarray, dict] | None:
        arr, meta = self._paths(key)
        if not (arr.is_file() and meta.is_file()):
            return None
        return np.load(arr, allow_pickle=False), json.loads(meta.read_text())

    def put(self, key: dict, Z: np.ndarray, info: dict) -> None:
        import io

        self.dir.mkdir(parents=True, exist_ok=True)
        arr, meta = self._paths(key)
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(Z), allow_pickle=False)
        atomic_write_bytes(arr, buf.getvalue())
        atomic_write_json(meta, {**info, "key": key})  # written last: its presence marks a complete entry
