"""`python -m gpuclust.export RUN DEST`: a finished run's clusters as folders of images, one folder per cluster.

The run's labels.parquet says which cluster each row went to. Images that are files on disk (imagefolder:, folder:,
csv:, parquet:) are linked into `DEST/cluster-NNNN/` (symlinks by default; hard links or copies on request), so a
million-image export costs no space. Images that are not files of their own (the packaged sets, torchvision
datasets, members of webdataset shards) are read again from the dataset the run's config.json names and written
out: a shard member as its original bytes, a decoded image as PNG. A source file that is gone since the run is a
counted skip, listed in DEST/export.csv with the reason, like an unreadable image in a run.

Exit codes: 0 success; 2 bad input or usage (one line on stderr); 1 internal error.
"""
from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .errors import OneLineParser, UserError, one_line

log = logging.getLogger(__name__)

MODES = ("symlink", "hardlink", "copy")
FILE_SOURCES = ("imagefolder", "folder", "csv", "parquet", "paths")  # paths: a list of files, from Python  # rows are image files on disk, linked as they are
MARKER = "export.json"  # written first: it marks a folder --force may replace, even an export that was killed
LISTING = "export.csv"


@dataclass
class ExportResult:
    """What export_clusters did: the destination, how images were placed, images per cluster folder, and how many
    rows were skipped."""

    dest: Path
    mode: str  # symlink, hardlink or copy for image files; "written" for images read again from the dataset
    clusters: dict = field(default_factory=dict)  # folder name -> images placed in it
    skipped: int = 0
    dropped: int = 0  # near-duplicates left out (--drop-duplicates)

    @property
    def exported(self) -> int:
        return sum(self.clusters.values())


def folder_name(cluster: int) -> str:
    """The folder of one cluster: named like the gallery's strips (cluster-0003.jpg), noise in `noise`."""
    return "noise" if cluster < 0 else f"cluster-{cluster:04d}"


def best_of_sweep(sweep: Path) -> Path:
    """A sweep directory stands for its best run by the sweep's own ranking (best.json's `rank_by`)."""
    doc = json.loads((sweep / "best.json").read_text())
    top = (doc.get("best") or {}).get(doc.get("rank_by"))
    if not top:
        raise UserError(f"{sweep}: the sweep has no finished run to export yet")
    log.warning("export: %s is a sweep; exporting its best run by %s (%s = %.4f): %s", sweep, top["metric"],
                top["metric"], top["value"], top["run_dir"])
    return sweep / top["run_dir"]


def _read_run(run: Path) -> tuple[dict, list[dict]]:
    """(config.json, labels.parquet rows) of a finished run, or a one-line error saying what is missing."""
    import pyarrow.parquet as pq

    if not run.is_dir():
        raise UserError(f"{run}: no such run directory")
    labels = run / "labels.parquet"
    if not labels.is_file():
        raise UserError(f"{run}: not a finished run (no labels.parquet); give the directory a run printed")
    try:
        table = pq.read_table(labels, columns=["row", "path", "label_pred"])
        config = json.loads((run / "config.json").read_text())
    except (OSError, ValueError, KeyError) as exc:  # pyarrow raises ArrowInvalid (a ValueError) for a bad file
        raise UserError(f"{run}: cannot read its labels.parquet and config.json ({type(exc).__name__})") from None
    return config, table.to_pylist()


def duplicate_rows(run: Path) -> set:
    """The dataset rows of a run that duplicate a kept row (duplicates.parquet's rows not kept), for
    --drop-duplicates; a run that did not mark near-duplicates is refused."""
    import pyarrow.parquet as pq

    path = run / "duplicates.parquet"
    if not path.is_file():
        raise UserError(f"{run}: the run marked no near-duplicates (no duplicates.parquet); rerun it with "
                        "--duplicates THRESHOLD (e.g. 0.9) to export with --drop-duplicates")
    try:
        table = pq.read_table(path, columns=["row", "kept"]).to_pydict()
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{path}: cannot read it ({type(exc).__name__})") from None
    return {int(r) for r, kept in zip(table["row"], table["kept"]) if not kept}


def _ours(dest: Path) -> bool:
    """Whether DEST's marker was written by this command (another tool's export.json is not ours to replace)."""
    try:
        return json.loads((dest / MARKER).read_text()).get("tool") == "gpuclust.export"
    except (OSError, ValueError, AttributeError):
        return False


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([os.path.realpath(path), folder]) == folder


def _clear(dest: Path) -> None:
    """Remove what the earlier export listed in its export.csv (and its unfinished copies), nothing else: a file a
    person added to a cluster's folder stays, and the new export names around it."""
    import csv

    listing = dest / LISTING
    if listing.is_file():
        with open(listing, newline="", encoding="utf-8", errors="surrogateescape") as f:
            for r in csv.DictReader(f):
                folder, _, name = (r.get("file") or "").partition("/")
                if name and "/" not in name and _is_cluster_folder(folder) and name not in (".", ".."):
                    (dest / folder / name).unlink(missing_ok=True)
    for d in dest.iterdir():
        if d.is_dir() and not d.is_symlink() and _is_cluster_folder(d.name):
            for tmp in d.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
            if not any(d.iterdir()):
                d.rmdir()
    listing.unlink(missing_ok=True)


def _is_cluster_folder(name: str) -> bool:
    return name == "noise" or (name.startswith("cluster-") and name[8:].isdigit())


def _prepare(dest: Path, force: bool, run: Path, mode: str, sources: list[str]) -> None:
    """DEST must be new or empty; --force replaces an earlier export there (only what it wrote), and never one that
    holds the run's own images."""
    from .store import atomic_write_json

    if dest.exists() and not dest.is_dir():
        raise UserError(f"{dest}: exists and is not a folder")
    if dest.is_dir():
        real = os.path.realpath(dest)
        inside = next((s for s in sources if s and _inside(s, real)), None)
        if inside is not None:
            raise UserError(f"{dest}: the run's own images are inside it ({inside}); export to another folder")
    if dest.is_dir() and any(dest.iterdir()):
        if not _ours(dest):
            raise UserError(f"{dest}: the folder is not empty and holds no earlier export; choose a new folder")
        if not force:
            raise UserError(f"{dest}: holds an earlier export; add --force to replace it, or choose a new folder")
        _clear(dest)
    dest.mkdir(parents=True, exist_ok=True)
    atomic_write_json(dest / MARKER, {"tool": "gpuclust.export", "run": str(run.resolve()), "mode": mode})


def _reopen(config: dict):
    """The run's dataset again, with its own settings; refused if it no longer holds the rows the run clustered."""
    from .data import load_dataset

    data, resolved = config.get("data") or {}, config.get("resolved") or {}
    spec = data.get("spec", "")
    if resolved.get("dataset_object"):
        raise UserError(f"{spec}: the run clustered a dataset object handed over from Python, which a spec cannot "
                        "load again; export from Python (the result's to_frame() lists each row's cluster)")
    ds = load_dataset(spec, data.get("limit"), data.get("root"), data.get("subsample", "first"),
                      config.get("seed", 0))
    changed = resolved.get("dataset_rows") not in (None, len(ds))
    key_file = Path(resolved["store"]) / "key.json" if resolved.get("store") else None
    if not changed and key_file is not None and key_file.is_file():
        changed = json.loads(key_file.read_text()).get("rows") not in (None, ds.fingerprint())
    if changed:
        raise UserError(f"{spec}: the dataset is not the one the run clustered (its rows changed since); "
                        "run again to export its clusters")
    return ds


def _name(used: set, base: str, row: int) -> str:
    """The file's own name, unless the cluster's folder already has one of that name: then NAME-ROW (and
    NAME-ROW-2, ... should that be taken too)."""
    if base not in used:
        return base
    stem, dot, ext = base.rpartition(".")
    if not (dot and stem):
        stem, ext = base, ""
    suffix = f".{ext}" if ext else ""
    name, n = f"{stem}-{row}{suffix}", 1
    while name in used:
        n += 1
        name = f"{stem}-{row}-{n}{suffix}"
    return name


def _place(src: str, target: Path, mode: str) -> None:
    """Link or copy one file; a copy goes through a temporary name, so a killed export leaves no half image."""
    if mode == "symlink":
        os.symlink(os.path.abspath(src), target)
    elif mode == "hardlink":
        try:
            os.link(src, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            raise UserError(f"--mode hardlink: {target.parent.parent} is on another filesystem than {src}; "
                            "use --mode symlink or copy") from None
    else:
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copy2(src, tmp)
        os.replace(tmp, target)


def _image_bytes(ds, row: int, width: int) -> tuple[bytes, str]:
    """A row that is not a file of its own: (a shard member's original bytes, else the decoded image as PNG; its
    name). Raises SkipImage when the row cannot be read."""
    import io

    from .data.base import ImageDataset

    if type(ds).read_bytes is not ImageDataset.read_bytes:  # webdataset: the member as it was stored
        base = ds.paths[row].rpartition(":")[2].rpartition("/")[2] if ds.paths else f"{row:0{width}d}"
        return ds.read_bytes(row), base
    buf = io.BytesIO()
    ds.load(row).save(buf, format="PNG")
    return buf.getvalue(), f"{row:0{width}d}.png"


def export_clusters(run: Path | str, dest: Path | str, mode: str = "symlink", clusters=None, noise: bool = True,
                    force: bool = False, progress: bool = True, drop_duplicates: bool = False) -> ExportResult:
    """Place every image of the run `run` in `dest/cluster-NNNN/` (noise in `dest/noise/`), list each row in
    `dest/export.csv` (row, cluster, source, file, skipped) and return the counts. `clusters` keeps only those ids;
    `drop_duplicates` leaves out the near-duplicates the run marked (all but the kept row of each group)."""
    import csv

    from tqdm.auto import tqdm

    from .data.base import SkipImage
    from .store import atomic_write_bytes

    if mode not in MODES:
        raise UserError(f"--mode {mode!r}: one of {', '.join(MODES)}")
    run, dest = Path(run).expanduser(), Path(dest).expanduser()
    if (run / "best.json").is_file() and not (run / "labels.parquet").exists():
        run = best_of_sweep(run)
    config, rows = _read_run(run)
    kind = str((config.get("data") or {}).get("spec", "")).partition(":")[0]
    if kind == "embeddings":
        raise UserError(f"{run}: the run clustered precomputed embeddings (embeddings:PATH); it has no images to "
                        "export, and its labels.parquet lists each row's cluster")
    keep = None if clusters is None else {int(c) for c in clusters}
    if keep is not None and not keep & {r["label_pred"] for r in rows}:
        found = sorted({r["label_pred"] for r in rows if r["label_pred"] >= 0})
        raise UserError(f"--clusters {','.join(map(str, sorted(keep)))}: the run has no such cluster (it has "
                        f"{len(found)}: {found[0] if found else '-'} to {found[-1] if found else '-'})")
    chosen = [r for r in rows if (keep is None or r["label_pred"] in keep) and (noise or r["label_pred"] >= 0)]
    dropped = duplicate_rows(run) if drop_duplicates else set()
    n_chosen = len(chosen)
    chosen = [r for r in chosen if int(r["row"]) not in dropped]
    ds = None if kind in FILE_SOURCES else _reopen(config)  # before DEST is touched: a refusal leaves nothing
    width = len(str(max(len(ds) - 1, 0))) if ds is not None else 0
    _prepare(dest, force, run, mode, [r["path"] or "" for r in chosen] if ds is None else [])
    result = ExportResult(dest, mode if ds is None else "written", dropped=n_chosen - len(chosen))
    used: dict[str, set] = {}
    # Each row is listed before its file is placed, so a killed export's listing names all it wrote (--force
    # removes those and nothing else).
    with open(dest / LISTING, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        table = csv.writer(f)
        table.writerow(["row", "cluster", "source", "file", "skipped"])
        for r in tqdm(chosen, unit="img", desc=f"export to {dest.name}", disable=not progress or not chosen):
            row, cluster, src = int(r["row"]), int(r["label_pred"]), r["path"] or ""
            folder = folder_name(cluster)
            if folder not in used:  # a folder kept from an earlier export may hold a person's own files
                (dest / folder).mkdir(exist_ok=True)
                used[folder] = set(os.listdir(dest / folder))
            names = used[folder]
            try:
                if ds is None:
                    if not os.path.isfile(src):
                        raise SkipImage("no such file (moved or deleted since the run)")
                    data, base = None, os.path.basename(src)
                else:
                    data, base = _image_bytes(ds, row, width)
            except SkipImage as exc:
                result.skipped += 1
                table.writerow([row, cluster, src, "", str(exc)])
                continue
            name = _name(names, base, row)
            names.add(name)
            table.writerow([row, cluster, src, f"{folder}/{name}", ""])
            f.flush()
            if data is None:
                _place(src, dest / folder / name, mode)
            else:
                atomic_write_bytes(dest / folder / name, data)
            result.clusters[folder] = result.clusters.get(folder, 0) + 1
    if result.skipped:
        log.warning("export: skipped %d image(s) whose source could not be read; listed with the reason in %s",
                    result.skipped, dest / LISTING)
    return result


EXAMPLE = """examples:
  python -m gpuclust.export runs/20261124-101500-folder-dino_vitb16-umap50-hdbscan ~/photos-by-cluster
  python -m gpuclust.export RUN DEST --mode copy --clusters 3,7 --no-noise
  python -m gpuclust.export RUN DEST --drop-duplicates   # a run made with --duplicates 0.9
"""


def _ids(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected cluster numbers separated by commas, got {text!r}") from None


def get_args_parser() -> argparse.ArgumentParser:
    """The command line of `python -m gpuclust.export` (RUN DEST and its flags); a usage error exits 2."""
    p = OneLineParser(
        name="gpuclust.export", prog="python -m gpuclust.export",
        description="Put a finished run's images into one folder per cluster (noise in noise/), with export.csv "
                    "listing where each row went.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="a run directory (the one gpuclust.run printed, or one of a sweep's "
                   "runs/), or a sweep directory: its best run by the sweep's ranking")
    p.add_argument("dest", metavar="DEST", help="the folder to create (new or empty; see --force)")
    p.add_argument("--mode", choices=MODES, default="symlink",
                   help="how image files are placed: symlink (default, no space), hardlink (same filesystem) or "
                        "copy; images that are not files of their own (packaged sets, shards) are always written")
    p.add_argument("--clusters", type=_ids, metavar="N[,N...]", help="only these clusters (default: all)")
    p.add_argument("--no-noise", action="store_true", help="leave out the rows the clusterer called noise (-1)")
    p.add_argument("--drop-duplicates", action="store_true",
                   help="leave out the near-duplicates the run marked (a run made with --duplicates): each "
                        "group's kept row is exported, the others are not")
    p.add_argument("--force", action="store_true", help="replace an earlier export in DEST")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the export for `argv` (default: sys.argv) and print a one-line summary; returns 0, or 2 after printing a
    one-line UserError on stderr. Bad flags exit 2 (SystemExit); other errors propagate."""
    args = get_args_parser().parse_args(argv)  # argparse itself exits 2 with a usage line on bad flags
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = export_clusters(args.run, args.dest, args.mode, args.clusters, noise=not args.no_noise,
                                 force=args.force, progress=not args.quiet, drop_duplicates=args.drop_duplicates)
    except UserError as exc:
        print(f"gpuclust.export: error: {one_line(exc)}", file=sys.stderr)
        return 2
    folders = [f for f in result.clusters if f != "noise"]
    noise = f", {result.clusters['noise']:,} in noise/" if "noise" in result.clusters else ""
    skipped = f"; {result.skipped:,} skipped (see export.csv)" if result.skipped else ""
    skipped += f"; {result.dropped:,} near-duplicates left out" if args.drop_duplicates else ""
    how = {"symlink": "symlinks", "hardlink": "hard links", "copy": "copies", "written": "image files"}[result.mode]
    print(f"exported {result.exported:,} images ({how}) into {len(folders):,} cluster folders{noise} under "
          f"{result.dest}{skipped}")
    return 0


def cli() -> None:
    """Console-script entry point: `main()`'s return value as the exit status (raises SystemExit)."""
    raise SystemExit(main())


if __name__ == "__main__":
    raise SystemExit(main())
