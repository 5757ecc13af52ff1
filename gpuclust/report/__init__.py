"""The report stage: everything a run produced -> its run directory. The one place results go to the host."""
from __future__ import annotations

import csv
import io
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
from ..store import atomic_write_bytes, atomic_write_json

VERSIONED = ["gpuclust", "numpy", "scipy", "scikit-learn", "umap-learn", "torch", "torchvision", "timm", "cupy-cuda13x",
             "cuml-cu13", "faiss-cpu"]


def versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for dist in VERSIONED:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def device_description(backend) -> dict:
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
                          "sizes.png", "contingency.png", "k_auto.png", "skipped.csv", "gallery"})
# A sweep's child writes its log.txt (its stdout, open while the run runs) and, when it fails, error.txt there too.
LOG_FILES = frozenset({"log.txt", "error.txt"})
RUN_FILES = RESULT_FILES | LOG_FILES


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


def _stale_staging(out: Path) -> list[Path]:
    """Staging folders of runs into `out` whose process is gone (killed before it could swap them in)."""
    stale = []
    for p in out.parent.glob(f".{out.name}.gpuclust-*"):
        pid = p.name.rsplit("-", 1)[-1]
        try:
            os.kill(int(pid), 0)
        except (ValueError, ProcessLookupError):
            stale.append(p)
        except PermissionError:  # another user's live process
            continue
    return stale


def _earlier_run(out: Path) -> bool:
    """Whether the existing folder `out` holds an earlier run's files and nothing else; a folder with other files is
    refused, so a rerun never deletes a person's own files."""
    names = [p.name for p in out.iterdir()]
    foreign = sorted(n for n in names if n not in RUN_FILES and not n.startswith("."))
    if foreign:
        raise UserError(f"--output {out}: the folder holds files that are not a gpuclust run's (e.g. {foreign[0]!r});"
                        " choose a new or empty folder")
    return any(n in RESULT_FILES for n in names)


@contextmanager
def run_dir(output: str | None, dataset: str, encoder: str, reduce: str, cluster: str):
    """The run directory, made and probed before the long stages; it holds one run's files only.

    Without --output each run gets a directory of its own. A rerun into a folder that holds an earlier run is
    written into a staging folder beside it and replaces the earlier run only when it succeeds, so a failed rerun
    keeps the earlier results and a finished one leaves none of their files behind. A run that fails before
    writing anything removes the directory it made."""
    import shutil

    if output is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = f"{stamp}-{_slug(dataset.split('/')[-1])}-{_slug(encoder)}-{reduce}-{cluster}"
        try:
            out = final = _new_default_dir(name)
        except OSError as exc:
            raise UserError(f"runs/: cannot write there ({exc.strerror or exc})") from None
        fresh = True
    else:
        final = Path(output).expanduser()
        for p in _stale_staging(final):
            shutil.rmtree(p, ignore_errors=True)
        replace = final.is_dir() and _earlier_run(final)
        out = final.parent / f".{final.name}.gpuclust-{os.getpid()}" if replace else final
        fresh = replace or not final.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"--output {output}: cannot write there ({exc.strerror or exc})") from None
    try:
        yield out
    except BaseException:
        if out != final:
            shutil.rmtree(out, ignore_errors=True)
        elif fresh and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    if out != final:  # the rerun succeeded: it takes the earlier run's place whole
        if (final / "log.txt").is_file() and not (out / "log.txt").exists():
            os.replace(final / "log.txt", out / "log.txt")  # this run's own log (a sweep child's open stdout)
        old = final.parent / f".{final.name}.gpuclust-old-{os.getpid()}"
        os.replace(final, old)
        os.replace(out, final)
        shutil.rmtree(old, ignore_errors=True)


def write_labels(path: Path, rows: np.ndarray, paths, labels_true, labels_pred, classes=None) -> None:
    """labels.parquet: `class_true` is the source's own name for `label_true` (the folder, the csv label, the
    dataset's class), so renumbered labels can be mapped back; null where the source has no names."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(rows)
    names = [None] * n
    if labels_true is not None and classes is not None:
        names = [classes[t] if 0 <= t < len(classes) else None for t in np.asarray(labels_true).tolist()]
    table = pa.table({
        "row": pa.array(rows, pa.int64()),
        "path": pa.array([paths[r] for r in rows] if paths is not None else [None] * n, pa.string()),
        "label_true": pa.array(labels_true, pa.int64()) if labels_true is not None else pa.nulls(n, pa.int64()),
        "class_true": pa.array([None if c is None else str(c) for c in names], pa.string()),
        "label_pred": pa.array(labels_pred, pa.int64()),
    })
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    atomic_write_bytes(path, buf.getvalue().to_pybytes())


def write_skipped(path: Path, skipped: list[tuple[int, str]], paths) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["row", "path", "reason"])
    for row, reason in skipped:
        w.writerow([row, paths[row] if paths is not None else "", reason])
    atomic_write_bytes(path, buf.getvalue().encode())


def write_run(out: Path, *, backend, config: dict, metrics: dict, timings: dict, rows, paths, labels_true,
              labels_pred, Z=None, classes=None, seed: int = 0, images=None, gallery: int = 0) -> None:
    """Write config.json, metrics.json, labels.parquet, report.html with its plots and, when `images` can read the
    dataset's rows again (`images(row)` -> PIL image), a gallery of `gallery` images per cluster; skipped.csv is
    written when the encode stage ends, and timings.json last by the caller, once the report itself is timed."""
    from .html import sample_rows, write_html

    labels_dev = labels_pred
    labels_pred = np.asarray(backend.to_host(labels_pred))
    labels_true = None if labels_true is None else np.asarray(backend.to_host(labels_true))
    atomic_write_json(out / "config.json", {**config, "versions": versions(), "device": device_description(backend)})
    atomic_write_json(out / "metrics.json", metrics)
    write_labels(out / "labels.parquet", rows, paths, labels_true, labels_pred, classes)
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
        write_html(out, title=f"gpuclust: {out.name}", metrics=metrics, timings=timings, Z_sample=Z_sample, idx=idx,
                   labels_pred=labels_pred, labels_true=labels_true, classes=classes, gallery=section,
                   k_scores=(config.get("resolved") or {}).get("cluster_params", {}).get("k_auto_scores"))
