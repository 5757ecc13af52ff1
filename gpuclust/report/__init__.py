"""The report stage: everything a run produced -> its run directory. The one place results go to the host."""
from __future__ import annotations

import csv
import io
import logging
import os
import platform
import re
import sys
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import numpy as np

from ..errors import UserError

log = logging.getLogger(__name__)
from ..store import atomic_write_bytes, atomic_write_json

VERSIONED = ["gpuclust", "numpy", "scipy", "scikit-learn", "umap-learn", "torch", "torchvision", "timm", "cupy-cuda13x",
             "cuml-cu13", "faiss-cpu"]


def versions() -> dict:
    """{"python": version, distribution: version} for the VERSIONED distributions installed (absent ones left out)."""
    out = {"python": sys.version.split()[0]}
    for dist in VERSIONED:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def device_description(backend) -> dict:
    """Backend name, platform, CPU model and count, host memory in bytes (None when unknown), and on a GPU backend
    the GPU's name and memory in bytes (imports CuPy)."""
    info = {"backend": backend.name, "platform": platform.platform(), "cpu": _cpu_name(),
            "cpu_count": os.cpu_count(), "memory_bytes": _memory_bytes()}
    if backend.is_gpu:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        info["gpu"] = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        info["gpu_memory_bytes"] = int(props["totalGlobalMem"])
    return info


def _cpu_name() -> str:
    """The processor's model name (Linux: /proc/cpuinfo); `platform.processor()` is often empty or just "x86_64"."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:40] or "run"


# What a run writes into its directory; a folder holding any of these (and nothing but RUN_FILES) is an earlier run.
RESULT_FILES = frozenset({"config.json", "metrics.json", "labels.parquet", "timings.json", "report.html", "map.png",
                          "sizes.png", "contingency.png", "k_auto.png", "skipped.csv", "gallery", "curate",
                          "duplicates.parquet", "map.parquet", "selection.parquet", "explore"})
# A sweep's child writes its log.txt (its stdout, open while the run runs) and, when it fails, error.txt there too.
LOG_FILES = frozenset({"log.txt", "error.txt"})
RUN_FILES = RESULT_FILES | LOG_FILES
LOCK = ".gpuclust.lock"  # held (flock) by the run writing into the folder
STAGING, OLD = ".gpuclust-staging-", ".gpuclust-old-"  # a rerun's new files, and the earlier run's on their way out
_ATOMIC_TMP = re.compile(r"\..+\.\d+\.tmp")  # store.atomic_write_bytes's temporary names


def _ours(name: str) -> bool:
    return (name in RUN_FILES or name in (LOCK, ".write-test") or name.startswith((STAGING, OLD))
            or bool(_ATOMIC_TMP.fullmatch(name)))


def _new_default_dir(name: str) -> Path:
    """`runs/<name>`, or `runs/<name>-2`, `-3`, ... when an earlier run took it (two runs started in the same second
    get two directories: mkdir without exist_ok is atomic)."""
    root = Path("runs")
    root.mkdir(parents=True, exist_ok=True)
    for i in range(1, 10_000):
        out = root / (name if i == 1 else f"{name}-{i}")
        try:
            out.mkdir()
            return out
        except FileExistsError:
            continue
    raise UserError(f"runs/{name}: 10,000 runs share this name; pass --output DIR")


def _earlier_run(out: Path) -> bool:
    """Whether the folder `out` holds an earlier run's results. A folder with files a run does not write (a person's
    own, dot-files included) is refused, so a rerun never deletes them."""
    try:
        names = [p.name for p in out.iterdir()]
    except OSError as exc:
        raise UserError(f"--output {out}: cannot read the folder ({exc.strerror or exc})") from None
    foreign = sorted(n for n in names if not _ours(n))
    if foreign:
        raise UserError(f"--output {out}: the folder holds files that are not a gpuclust run's (e.g. {foreign[0]!r});"
                        " choose a new or empty folder")
    return any(n in RESULT_FILES for n in names)


def _lock(final: Path):
    """The folder's lock file, held: one run writes into a folder at a time (a second one is told so)."""
    import fcntl

    handle = open(final / LOCK, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UserError(f"--output {final}: another gpuclust run is writing there; wait for it to finish or choose "
                        "another folder") from None
    except OSError as exc:  # a file system without flock (some NFS and FUSE mounts): go on unguarded
        log.warning("--output %s: cannot lock the folder (%s); runs into it are not kept apart", final,
                    exc.strerror or exc)
    return handle


def _swap(staging: Path, final: Path) -> None:
    """A successful rerun takes the earlier run's place: its result files move aside, the new ones move up, the old
    ones go. Everything moves inside `final`, so `--output .`, a symlink or a mount point work alike. A sweep
    child's log.txt stays where its process writes it."""
    import shutil
    import uuid

    old = final / f"{OLD}{uuid.uuid4().hex[:12]}"
    old.mkdir()
    for p in list(final.iterdir()):
        if p.name in RESULT_FILES or p.name == "error.txt":
            os.replace(p, old / p.name)
    for p in list(staging.iterdir()):
        os.replace(p, final / p.name)
    staging.rmdir()
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def run_dir(output: str | None, dataset: str, encoder: str, reduce: str, cluster: str):
    """(folder to write into, the run directory), made, locked and probed before the long stages. The run directory
    holds one run's files only.

    Without --output each run gets a directory of its own. A rerun into a folder that holds an earlier run writes
    into a staging folder inside it and replaces the earlier run's files only when it succeeds, so a failed rerun
    keeps the earlier results (and, when every image was unreadable, its skipped.csv in the staging folder, which the
    next run into the folder removes). A run that fails before writing anything removes the directory it made."""
    import shutil
    import uuid

    where = output
    try:
        if output is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            final = _new_default_dir(f"{stamp}-{_slug(dataset.split('/')[-1])}-{_slug(encoder)}-{reduce}-{cluster}")
            where, made = str(final), True
        else:
            final = Path(output).expanduser()
            if final.exists() and not final.is_dir():
                raise UserError(f"--output {output}: a file, not a folder; choose a folder")
            made = not final.exists()
            final.mkdir(parents=True, exist_ok=True)
        lock = _lock(final)
    except OSError as exc:
        raise UserError(f"--output {where}: cannot write there ({exc.strerror or exc})") from None
    with lock:
        for p in [*final.glob(STAGING + "*"), *final.glob(OLD + "*")]:  # a killed run's (the lock is ours now)
            shutil.rmtree(p, ignore_errors=True)
        out = final / f"{STAGING}{uuid.uuid4().hex[:12]}" if _earlier_run(final) else final
        try:
            out.mkdir(exist_ok=True)
            probe = out / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise UserError(f"--output {where}: cannot write there ({exc.strerror or exc})") from None
        try:
            yield out, final
        except BaseException:
            if out != final and not (out / "skipped.csv").exists():
                shutil.rmtree(out, ignore_errors=True)
            elif made and all(p.name == LOCK for p in final.iterdir()):
                shutil.rmtree(final, ignore_errors=True)
            raise
        if out != final:
            _swap(out, final)


def label_columns(rows, paths, labels_true, labels_pred, classes=None, extra: dict | None = None) -> dict:
    """labels.parquet's columns as Python lists: `class_true` is the source's own name for `label_true` (the folder,
    the csv label, the dataset's class), so renumbered labels can be mapped back; None where the source has none."""
    rows = np.asarray(rows, dtype=np.int64)
    n = len(rows)
    truth = None if labels_true is None else np.asarray(labels_true).astype(np.int64).tolist()
    names = [None] * n
    if truth is not None and classes is not None:
        names = [None if not 0 <= t < len(classes) else str(classes[t]) for t in truth]
    return {
        "row": rows.tolist(),
        "path": [paths[r] for r in rows] if paths is not None else [None] * n,
        "label_true": truth if truth is not None else [None] * n,
        "class_true": names,
        "label_pred": np.asarray(labels_pred).astype(np.int64).tolist(),
        **{name: np.asarray(values).tolist() for name, values in (extra or {}).items()},  # the curate stage's
    }


def labels_table(rows, paths, labels_true, labels_pred, classes=None, extra: dict | None = None):
    """labels.parquet's table (pyarrow): the columns of label_columns, typed (extra columns by their values)."""
    import pyarrow as pa

    cols = label_columns(rows, paths, labels_true, labels_pred, classes, extra)
    types = {"row": pa.int64(), "path": pa.string(), "label_true": pa.int64(), "class_true": pa.string(),
             "label_pred": pa.int64()}
    return pa.table({k: pa.array(v, types.get(k)) for k, v in cols.items()})


def write_labels(path: Path, rows: np.ndarray, paths, labels_true, labels_pred, classes=None,
                 extra: dict | None = None) -> None:
    """labels.parquet (see label_columns), written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = labels_table(rows, paths, labels_true, labels_pred, classes, extra)
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    atomic_write_bytes(path, buf.getvalue().to_pybytes())


def write_skipped(path: Path, skipped: list[tuple[int, str]], paths) -> None:
    """Write skipped.csv atomically: row, path (empty without `paths`), reason, one line per skipped row."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["row", "path", "reason"])
    for row, reason in skipped:
        w.writerow([row, paths[row] if paths is not None else "", reason])
    atomic_write_bytes(path, buf.getvalue().encode())


def write_run(out: Path, *, backend, config: dict, metrics: dict, timings: dict, rows, paths, labels_true,
              labels_pred, Z=None, classes=None, seed: int = 0, images=None, gallery: int = 0,
              name: str | None = None, curation=None, map_xy=None, selection: dict | None = None) -> None:
    """Write config.json, metrics.json, labels.parquet, report.html with its plots and, when `images` can read the
    dataset's rows again (`images(row)` -> PIL image), a gallery of `gallery` images per cluster; skipped.csv is
    written when the encode stage ends, and timings.json last by the caller, once the report itself is timed.
    `curation` (curate.Curation): its columns join labels.parquet, its tables are written as parquet files and its
    strips follow the gallery in report.html. `selection` (pipeline.selection_stage): selection.parquet's columns."""
    from .html import sample_rows, write_html

    labels_dev = labels_pred
    labels_pred = np.asarray(backend.to_host(labels_pred))
    labels_true = None if labels_true is None else np.asarray(backend.to_host(labels_true))
    atomic_write_json(out / "config.json", {**config, "versions": versions(), "device": device_description(backend)})
    atomic_write_json(out / "metrics.json", metrics)
    write_labels(out / "labels.parquet", rows, paths, labels_true, labels_pred, classes,
                 curation.columns if curation is not None else None)
    for file, frame in (curation.tables if curation is not None else {}).items():
        write_frame(out / file, frame)
    if map_xy is not None:
        write_map(out / "map.parquet", rows, map_xy)
    if selection is not None:  # a sweep's label-free pick reads it (gpuclust/select)
        import pandas as pd

        write_frame(out / "selection.parquet", pd.DataFrame(selection))
    if Z is not None:
        idx = sample_rows(len(labels_pred), seed)
        Z_sample = backend.to_host(Z[backend.asarray(idx)])  # only the drawn rows leave the device
        section = ""
        if images is not None and gallery > 0:
            from .gallery import representatives, write_gallery

            groups = representatives(backend, Z, labels_dev, gallery, seed=seed)
            n_clusters = int(len(np.unique(labels_pred[labels_pred >= 0])))
            section = write_gallery(out, groups, images, np.asarray(rows), labels_pred, labels_true, classes,
                                    n_clusters, paths)
        if curation is not None and curation.strips:
            from .strips import write_strips

            section += write_strips(out, curation.strips, images)
        cluster_params = (config.get("resolved") or {}).get("cluster_params", {})
        write_html(out, title=f"gpuclust: {name or out.name}", metrics=metrics, timings=timings, Z_sample=Z_sample, idx=idx,
                   labels_pred=labels_pred, labels_true=labels_true, classes=classes, gallery=section,
                   k_scores=cluster_params.get("k_auto_scores"), map_xy=map_xy,
                   k_ps=cluster_params.get("k_auto_prediction_strength"))


def write_map(path: Path, rows, xy) -> None:
    """map.parquet: row (the dataset row, as in labels.parquet, same order), x, y (float32)."""
    import pandas as pd

    xy = np.asarray(xy, dtype=np.float32)
    write_frame(path, pd.DataFrame({"row": np.asarray(rows, dtype=np.int64), "x": xy[:, 0], "y": xy[:, 1]}))


def write_frame(path: Path, frame) -> None:
    """A pandas DataFrame as a parquet file, written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buf)
    atomic_write_bytes(path, buf.getvalue().to_pybytes())
