"""WebDataset tar shards: `webdataset:SHARDS`, where SHARDS is a folder of .tar files, a glob, or a brace pattern
(`shards/train-{000000..000099}.tar`). Members are grouped by key (the name up to the first dot after the last
slash): an image member (.jpg/.jpeg/.png/.webp/...) and optionally a .cls member holding the integer label.

A dataset is labelled when at least half its samples have a .cls member; a sample without one then stays a row,
skipped as "row has no label" (as file lists do), so a lost .cls (a truncated last shard) is counted, not silent;
with fewer than half the labels are ignored, with a warning.
Each row's path is `SHARD:MEMBER` (the shard file, then the image member's name), for skipped.csv and labels.parquet.

The shards are indexed once (tar headers only: an uncompressed tar seeks over member data), and each image is read
by seeking to its offset, so DataLoader workers read rows in any order without unpacking anything. The `webdataset`
package streams shards sequentially and cannot do this random access, hence this small reader.
"""
from __future__ import annotations

import glob
import hashlib
import io
import logging
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from .base import IMAGE_EXTENSIONS, ImageDataset, SkipImage

log = logging.getLogger(__name__)


def expand_shards(pattern: str) -> list[Path]:
    """Shard paths from a folder, a glob, or a {000..099} brace range (zero padding kept)."""
    p = Path(pattern).expanduser()
    if p.is_dir():
        return sorted(x for x in p.iterdir() if x.suffix == ".tar")
    m = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if m:
        lo, hi, width = int(m.group(1)), int(m.group(2)), len(m.group(1))
        names = [pattern[: m.start()] + str(i).zfill(width) + pattern[m.end():] for i in range(lo, hi + 1)]
        return [Path(n).expanduser() for n in names]
    return sorted(Path(x) for x in glob.glob(str(p)))


@dataclass
class WebDataset(ImageDataset):
    """Rows are (shard, offset, size) of image members; labels from .cls members (see the module's note)."""

    shards: list[str] = field(default_factory=list)
    index: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))  # shard, offset, size
    keys: list[str] = field(default_factory=list)
    ident: str = ""
    bad: dict = field(default_factory=dict)  # row -> reason, for samples that cannot be used (no label)

    def __len__(self) -> int:
        return len(self.index)

    def read_bytes(self, i: int) -> bytes:
        """Row i's image member's bytes, read at its offset in its shard; SkipImage for a bad row or a read error."""
        if i in self.bad:
            raise SkipImage(self.bad[i])
        shard, offset, size = (int(v) for v in self.index[i])
        try:
            with open(self.shards[shard], "rb") as f:
                f.seek(offset)
                return f.read(size)
        except OSError as exc:
            raise SkipImage(f"{type(exc).__name__}: {exc}") from None

    def load(self, i: int):
        """Row i as an RGB PIL image turned upright by EXIF; SkipImage when it cannot be read or decoded."""
        from PIL import Image, ImageOps

        data = self.read_bytes(i)
        try:
            with Image.open(io.BytesIO(data)) as im:
                return ImageOps.exif_transpose(im).convert("RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise SkipImage(f"{type(exc).__name__}: {exc}") from None

    def fingerprint(self) -> str:
        """16 hex digits of SHA-256 over the shards' identity, the member index and the labels."""
        h = hashlib.sha256(self.ident.encode())
        h.update(np.ascontiguousarray(self.index).tobytes())
        if self.labels is not None:
            h.update(np.ascontiguousarray(self.labels).tobytes())
        return h.hexdigest()[:16]

    def row_ids(self) -> np.ndarray:
        """A member is its shard (path, size, modification time) and its place in it: adding a shard to a set keeps
        the other shards' members' identities."""
        import os

        from .base import hash_ids

        shards = []
        for path in self.shards:
            try:
                st = os.stat(path)
                shards.append(f"{os.path.realpath(path)}\0{st.st_size}\0{st.st_mtime_ns}")
            except OSError:
                shards.append(f"missing\0{path}")
        ids = hash_ids([f"tar\0{shards[s]}\0{o}\0{n}" for s, o, n in self.index.tolist()])
        ids[list(self.bad)] = 0
        return ids

    def take(self, rows) -> "WebDataset":
        """A new WebDataset of `rows` (indices, in that order) over the same shards, keeping bad-row reasons."""
        rows = np.asarray(rows, dtype=np.int64)
        return WebDataset(spec=self.spec, labels=None if self.labels is None else self.labels[rows],
                          classes=self.classes, paths=[self.paths[i] for i in rows], description=self.description,
                          shards=self.shards, index=self.index[rows], keys=[self.keys[i] for i in rows],
                          ident=self.ident,
                          bad={j: self.bad[i] for j, i in enumerate(rows.tolist()) if i in self.bad})


def _labels(arg: str, keys: list[str], cls: dict) -> tuple[np.ndarray | None, dict]:
    """(labels, bad rows): labels when at least half the samples have a .cls, with -1 and a skip for the others."""
    have = [k in cls for k in keys]
    if 2 * sum(have) < len(keys):
        if cls:
            log.warning("webdataset: only %d of %d samples have a .cls label; the dataset is taken as unlabelled",
                        sum(have), len(keys))
        return None, {}
    try:
        labels = np.array([int(cls[k]) if h else -1 for k, h in zip(keys, have)], dtype=np.int64)
    except ValueError:
        raise UserError(f"webdataset:{arg}: .cls members must hold integer labels") from None
    return labels, {i: "row has no label (no .cls member)" for i, h in enumerate(have) if not h}


def webdataset(arg: str) -> WebDataset:
    """Index the uncompressed tar shards named by `arg` (tar headers only) into a WebDataset.

    Raises UserError when there are no shards, one is missing or not an uncompressed tar, or none holds an image."""
    if not arg:
        raise UserError("webdataset:SHARDS needs shards, e.g. webdataset:data/train-{000000..000099}.tar")
    shards = expand_shards(arg)
    if not shards:
        raise UserError(f"webdataset:{arg}: no .tar shards found")
    missing = [s for s in shards if not s.is_file()]
    if missing:
        raise UserError(f"webdataset:{arg}: shard {missing[0]} does not exist ({len(missing)} missing)")
    rows, keys, paths, cls = [], [], [], {}
    ident = hashlib.sha256()
    for si, shard in enumerate(shards):
        st = shard.stat()
        where = shard.resolve()
        ident.update(f"{where}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        try:
            with tarfile.open(shard, "r:") as tar:  # uncompressed only: compressed tars cannot be seeked into
                for m in tar:
                    if not m.isfile():
                        continue
                    base = m.name.rsplit("/", 1)
                    stem, dot, ext = base[-1].partition(".")
                    key = (base[0] + "/" if len(base) == 2 else "") + stem
                    if dot and "." + ext.lower() in IMAGE_EXTENSIONS:
                        rows.append((si, m.offset_data, m.size))
                        keys.append(f"{si}:{key}")
                        paths.append(f"{where}:{m.name}")
                    elif ext == "cls":
                        f = tar.extractfile(m)
                        cls[f"{si}:{key}"] = f.read().decode(errors="replace").strip() if f else ""
        except tarfile.ReadError as exc:
            raise UserError(f"webdataset: {shard} is not an uncompressed tar ({exc})") from None
    if not rows:
        raise UserError(f"webdataset:{arg}: the shards hold no image members")
    labels, bad = _labels(arg, keys, cls)
    # No class names: the .cls integers name themselves (`classes` is indexed by label value, which need not
    # run 0..n-1 here).
    return WebDataset(spec=f"webdataset:{arg}", labels=labels, classes=None, paths=paths,
                      description=f"{len(rows)} images in {len(shards)} tar shard(s)", shards=[str(s) for s in shards],
                      index=np.array(rows, dtype=np.int64), keys=keys, ident=ident.hexdigest(), bad=bad)
