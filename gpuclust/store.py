"""The embedding store: embeddings on disk in shards, written atomically, keyed by what changes their numbers.

Layout: `<cache>/<digest>/key.json` (the key), `shard-NNNNNN.npz` (rows [i*shard_size, (i+1)*shard_size) of the
dataset: `emb` for the rows that decoded, their `rows`, and the `skipped` rows with reasons), `complete.json` once
every shard is there. A shard file exists only when whole (write to a temporary name, fsync, rename), so a killed
run resumes at the first missing shard. `row_ids.npy` holds a 64-bit identity of each row's image (see
`ImageDataset.row_ids`): a new store whose key differs only in its rows (a folder that gained files, a larger
`--limit`, another subsample) takes the rows it shares with earlier stores from them (`Donors`) and encodes the rest.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

STORE_FORMAT = 1
# Key fields that say which rows a store holds; every other field (encoder, weights, preprocessing, precision, store
# dtype, decoder) changes the numbers, so only stores equal in those may share rows.
ROW_FIELDS = ("dataset", "rows", "n_rows", "shard_size")

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """$GPUCLUST_CACHE when set, else ~/.cache/gpuclust (not created here)."""
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
    """Write `obj` as indented, key-sorted JSON (str() for values JSON cannot hold), atomically (atomic_write_bytes)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


@dataclass
class Shard:
    """One shard's contents: embeddings of the rows that decoded, their row indices, and the skipped rows with
    reasons."""

    emb: np.ndarray  # (n_kept, dim)
    rows: np.ndarray  # (n_kept,) dataset row indices
    skipped_rows: np.ndarray
    skipped_reasons: np.ndarray


class EmbeddingStore:
    """The shards of one dataset's embeddings under `root/<digest of key>`; creating one creates the folder and
    writes key.json, and an existing store keeps its own shard size."""

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
        """The dataset rows shard i covers (the last shard may be short)."""
        return range(i * self.shard_size, min(self.n_rows, (i + 1) * self.shard_size))

    def _path(self, i: int) -> Path:
        return self.dir / f"shard-{i:06d}.npz"

    def has(self, i: int) -> bool:
        """Whether shard i's file exists (a shard file exists only when whole)."""
        return self._path(i).is_file()

    def missing(self) -> list[int]:
        """Indices of the shards not yet written, ascending."""
        return [i for i in range(self.n_shards) if not self.has(i)]

    @property
    def complete(self) -> bool:
        return (self.dir / "complete.json").is_file()

    def write(self, i: int, shard: Shard) -> None:
        """Save `shard` as shard i's .npz, atomically (replacing any earlier one)."""
        buf = io.BytesIO()
        np.savez(buf, emb=shard.emb, rows=shard.rows.astype(np.int64),
                 skipped_rows=shard.skipped_rows.astype(np.int64),
                 skipped_reasons=np.asarray(shard.skipped_reasons, dtype=str))
        atomic_write_bytes(self._path(i), buf.getvalue())

    def read(self, i: int) -> Shard:
        """Shard i as written; raises OSError (FileNotFoundError) when it is not there."""
        with np.load(self._path(i), allow_pickle=False) as z:
            return Shard(z["emb"], z["rows"], z["skipped_rows"], z["skipped_reasons"])

    def mark_complete(self, dim: int) -> None:
        """Write complete.json (embedding `dim` and shard count), which makes `complete` true."""
        atomic_write_json(self.dir / "complete.json", {"dim": int(dim), "n_shards": self.n_shards})

    @property
    def ids_path(self) -> Path:
        return self.dir / "row_ids.npy"

    def save_row_ids(self, ids: np.ndarray) -> None:
        """Record each row's image identity, once, so later stores can take rows from this one."""
        if len(ids) != self.n_rows or self.ids_path.is_file():
            return
        buf = io.BytesIO()
        np.save(buf, np.asarray(ids, dtype=np.uint64), allow_pickle=False)
        atomic_write_bytes(self.ids_path, buf.getvalue())

    def donors(self) -> "Donors | None":
        """The rows still to encode that earlier stores with the same encoder settings already hold, judged by
        the row identities (`save_row_ids`); None when there are none, or no identities."""
        if not self.ids_path.is_file():
            return None
        try:
            ids = np.load(self.ids_path, allow_pickle=False)
        except (OSError, ValueError):
            return None
        return Donors.find(self, ids)


def _alive(pid: str) -> bool:
    """Whether process `pid` (text) exists on this machine."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _model_key(key: dict) -> dict:
    return {k: v for k, v in key.items() if k not in ROW_FIELDS}


class Donors:
    """Rows of a new store found, by image identity, in earlier stores of the same model key: `rows` (ascending)
    and, for each, the donor store and the donor's row. Only rows a donor kept (decoded) are taken; rows it skipped
    are tried again."""

    def __init__(self, rows: np.ndarray, sources: list[tuple[Path, int]], which: np.ndarray, donor_rows: np.ndarray):
        self.rows, self.sources, self.which, self.donor_rows = rows, sources, which, donor_rows
        self.emb = None  # (len(rows), dim) in the store's dtype, memory-mapped, once gathered

    @classmethod
    def find(cls, store: EmbeddingStore, ids: np.ndarray) -> "Donors | None":
        """Donors for `store`'s missing rows (identities `ids`; 0 never matches) from sibling stores with the same
        model key, first store found winning; None when no row is found. Logs how many rows were found."""
        ids = np.asarray(ids, dtype=np.uint64)
        want = _model_key(store.key)
        need = np.zeros(len(ids), dtype=bool)
        for i in store.missing():
            need[store.shard_range(i).start:store.shard_range(i).stop] = True
        need &= ids != 0
        n_todo = sum(len(store.shard_range(i)) for i in store.missing())
        found_rows, found_which, found_donor, sources = [], [], [], []
        for key_file in sorted(store.dir.parent.glob("*/key.json")):
            d = key_file.parent
            if d == store.dir or not need.any() or not (d / "row_ids.npy").is_file():
                continue
            try:
                key = json.loads(key_file.read_text())
                if _model_key(key) != want:
                    continue
                donor_ids = np.load(d / "row_ids.npy", allow_pickle=False)
            except (OSError, ValueError):  # a store being written by another process, or damaged: not a donor
                continue
            hits = cls._match(ids, need, donor_ids, d, int(key.get("shard_size", 2048)))
            if hits is None:
                continue
            rows, donor_rows = hits
            sources.append((d, int(key.get("shard_size", 2048))))
            found_rows.append(rows)
            found_which.append(np.full(len(rows), len(sources) - 1))
            found_donor.append(donor_rows)
            need[rows] = False
        if not found_rows:
            return None
        rows = np.concatenate(found_rows)
        order = np.argsort(rows, kind="stable")
        log.info("encode: %d of the %d rows to encode are already in %d earlier store(s) with the same encoder "
                 "settings: copied from there, not encoded", len(rows), n_todo, len(sources))
        return cls(rows[order], sources, np.concatenate(found_which)[order], np.concatenate(found_donor)[order])

    @staticmethod
    def _match(ids, need, donor_ids, d: Path, shard_size: int):
        """(rows of ours, donor rows) for our needed rows whose identity the donor holds in a shard it kept them in."""
        if len(donor_ids) == 0:
            return None
        order = np.argsort(donor_ids, kind="stable")
        sorted_ids = donor_ids[order]
        ours = np.flatnonzero(need)
        pos = np.searchsorted(sorted_ids, ids[ours])
        pos[pos == len(sorted_ids)] = 0
        hit = sorted_ids[pos] == ids[ours]
        ours, theirs = ours[hit], order[pos[hit]]
        if not len(ours):
            return None
        keep = np.zeros(len(ours), dtype=bool)
        for s in np.unique(theirs // shard_size):
            path = d / f"shard-{int(s):06d}.npz"
            if not path.is_file():
                continue  # the donor never finished that shard
            try:
                with np.load(path, allow_pickle=False) as z:
                    kept_rows = z["rows"]
            except (OSError, ValueError):
                continue
            in_shard = theirs // shard_size == s
            keep[in_shard] = np.isin(theirs[in_shard], kept_rows)
        if not keep.any():
            return None
        return ours[keep], theirs[keep]

    def gather(self, folder: Path) -> None:
        """Read every donated row once, donor shard by donor shard, into `folder/.donated-PID.npy` (memory-mapped;
        per process, as two runs may fill one store), so rows in another order than the donor's cost no shard more
        than one read."""
        for stale in folder.glob(".donated-*.npy"):  # left by a killed run
            if not _alive(stale.stem.rpartition("-")[2]):
                stale.unlink(missing_ok=True)
        path = folder / f".donated-{os.getpid()}.npy"
        out = None
        for w in np.unique(self.which):
            d, shard_size = self.sources[int(w)]
            sel = np.flatnonzero(self.which == w)
            shard_of = self.donor_rows[sel] // shard_size
            for s in np.unique(shard_of):
                part = sel[shard_of == s]
                with np.load(d / f"shard-{int(s):06d}.npz", allow_pickle=False) as z:
                    kept_rows, emb = z["rows"], z["emb"]
                if out is None:
                    out = np.lib.format.open_memmap(path, mode="w+", dtype=emb.dtype,
                                                    shape=(len(self.rows), emb.shape[1]))
                out[part] = emb[np.searchsorted(kept_rows, self.donor_rows[part])]
        self.emb = out

    def release(self) -> None:
        """Drop the gathered rows and their file (a killed run leaves the file; the next gather removes it)."""
        emb, self.emb = self.emb, None
        if emb is not None:
            path = Path(emb.filename)
            del emb
            path.unlink(missing_ok=True)

    def fetch(self, rng: range) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings as stored, our rows) for the donated rows in `rng`, after `gather`."""
        lo, hi = np.searchsorted(self.rows, [rng.start, rng.stop])
        return np.asarray(self.emb[lo:hi]), self.rows[lo:hi]


class ReductionCache:
    """Reduced spaces stored beside the embeddings they came from, keyed by the reducer's settings and the twin
    that ran it, so a second run (another clusterer, another k) skips a UMAP fit."""

    def __init__(self, store_dir: Path | str):
        self.dir = Path(store_dir) / "reduced"

    def _paths(self, key: dict) -> tuple[Path, Path]:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
        return self.dir / f"{digest}.npy", self.dir / f"{digest}.json"

    def get(self, key: dict) -> tuple[np.ndarray, dict] | None:
        """(reduced array, the info saved with it plus "key") for `key`, or None when no complete entry exists."""
        arr, meta = self._paths(key)
        if not (arr.is_file() and meta.is_file()):
            return None
        return np.load(arr, allow_pickle=False), json.loads(meta.read_text())

    def put(self, key: dict, Z: np.ndarray, info: dict) -> None:
        """Store `Z` and `info` under `key`, atomically, creating the `reduced/` folder when needed."""
        self.dir.mkdir(parents=True, exist_ok=True)
        arr, meta = self._paths(key)
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(Z), allow_pickle=False)
        atomic_write_bytes(arr, buf.getvalue())
        atomic_write_json(meta, {**info, "key": key})  # written last: its presence marks a complete entry
