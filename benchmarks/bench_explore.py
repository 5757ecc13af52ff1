"""The explorer's cost: time to prepare and to open the map, and its size on disk, at the default job's scale and
at 1,000,000 rows.

- `--run RUN`: a finished run (the README's first command: 10,000 Fashion-MNIST images). Times
  `python -m gpuclust.explore RUN --export DIR` as a whole process, twice (the first writes the thumbnail cache;
  the second reuses it), then opens DIR/index.html in headless Chromium (software WebGL) at `#row=123` and times
  until BokehJS has drawn it. `--screenshot PNG` keeps that view (docs/explore.md's picture).
- `--rows N ...`: synthetic runs of N rows (64-d embeddings around 100 centres, the centre as cluster and class,
  random 28 x 28 images for the thumbnails), stage by stage in this process: the map stage (UMAP on a 50,000-row
  sample on the CPU twin, the rest placed), the nearest neighbours, the thumbnails (capped at --thumbnails), the
  page, opening it.

Prints one table (seconds per stage; MB on disk; each row's per-1,000-rows cost against the first row's) and saves
it as CSV under benchmarks/results/.

    python benchmarks/bench_explore.py --run runs/default --screenshot docs/explore-fashion-mnist.png
    python benchmarks/bench_explore.py --rows 100000 1000000
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))  # this checkout's gpuclust
sys.path.insert(0, str(ROOT / "tests"))  # the browser tests' helpers (selenium + Debian's chromium)


def disk_mb(folder: Path) -> float:
    """Bytes of the files under `folder` (their sizes, not the blocks they take), in MB."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def open_page(index: Path, row: int | None, screenshot: Path | None = None) -> dict:
    from explore.browser import open_explorer

    state = open_explorer(index, row=row, screenshot=screenshot)
    if state["errors"]:
        raise SystemExit(f"the page logged errors: {state['errors']}")
    return state


def bench_run(run: Path, screenshot: Path | None) -> list[dict]:
    """The real command on a finished run, twice, then the page opened."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        # An empty thumbnail cache for the first attempt (the run's embedding store is named in its config.json,
        # so only the thumbnails move).
        env = {**os.environ, "GPUCLUST_CACHE": str(Path(tmp) / "cache")}
        for attempt in ("first (thumbnails written)", "again (thumbnails cached)"):
            t = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "gpuclust.explore", str(run), "--export", str(site), "-q"],
                               capture_output=True, text=True, cwd=ROOT, env=env)
            if r.returncode:
                raise SystemExit(r.stderr)
            out.append({"stage": f"python -m gpuclust.explore --export, {attempt}",
                        "seconds": time.perf_counter() - t})
        state = open_page(site / "index.html", 123, screenshot)
        n = state["points"]
        out += [{"stage": "open in Chromium (until drawn)", "seconds": state["open_s"]},
                {"stage": "site on disk [MB]", "mb": disk_mb(site)},
                {"stage": "index.html [MB]", "mb": (site / "index.html").stat().st_size / 1e6}]
    return [{"case": f"run {run.name}", "rows": n, **r} for r in out]


def synthetic(n: int, dim: int = 64, centres: int = 100, seed: int = 0):
    """(X float32 (n, dim), centre of each row): Gaussian blobs, a centre per 1% of the rows."""
    rng = np.random.default_rng(seed)
    C = rng.normal(size=(centres, dim)).astype(np.float32) * 3
    y = rng.integers(0, centres, n)
    X = C[y] + rng.normal(size=(n, dim)).astype(np.float32)
    return X, y.astype(np.int64)


def bench_rows(n: int, cap: int) -> list[dict]:
    """Each stage of the explorer on n synthetic rows."""
    from gpuclust.backend import resolve_backend
    from gpuclust.data.base import ArrayDataset
    from gpuclust.explore.build import nearest
    from gpuclust.explore.data import MapData
    from gpuclust.explore.layout import MAP_PARAMS, map_2d
    from gpuclust.explore.page import write_site
    from gpuclust.explore.thumbs import ThumbnailCache, sample_rows

    X, y = synthetic(n)
    rows, times = np.arange(n, dtype=np.int64), {}
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        xy, _ = map_2d(X, dict(MAP_PARAMS), resolve_backend("cpu"), seed=0)
        times["map stage (2-D UMAP, sample + placing beyond 50,000)"] = time.perf_counter() - t
        t = time.perf_counter()
        nb, sim = nearest(X, 10)
        times["nearest neighbours (10, cosine)"] = time.perf_counter() - t
        images = np.random.default_rng(1).integers(0, 256, (n, 28, 28), dtype=np.uint8)
        ds = ArrayDataset(spec="synthetic", images=images)
        t = time.perf_counter()
        files = ThumbnailCache(Path(tmp) / "thumbs").ensure(ds, rows[sample_rows(n, cap, 0)])
        times[f"thumbnails (at most {cap:,})"] = time.perf_counter() - t
        data = MapData(rows=rows, x=xy[:, 0], y=xy[:, 1], cluster=y, label_true=y, neighbours=nb,
                       neighbour_sim=sim, title=f"synthetic {n:,}")
        t = time.perf_counter()
        index = write_site(Path(tmp) / "site", data, files)
        times["page (index.html + thumbnails linked)"] = time.perf_counter() - t
        state = open_page(index, int(min(files)) if files else None)
        assert state["points"] == n, state
        out = [{"stage": k, "seconds": v} for k, v in times.items()]
        out += [{"stage": "prepare, all of the above", "seconds": sum(times.values())},
                {"stage": "open in Chromium (until drawn)", "seconds": state["open_s"]},
                {"stage": "site on disk [MB]", "mb": disk_mb(index.parent)},
                {"stage": "index.html [MB]", "mb": index.stat().st_size / 1e6}]
    return [{"case": f"synthetic {n:,}", "rows": n, **r} for r in out]


def add_ratios(table: list[dict]) -> None:
    """Per-1,000-rows cost of each stage against the same stage in the first case measured."""
    first: dict = {}
    for r in table:
        value = r.get("seconds", r.get("mb"))
        per_k = value / r["rows"] * 1000
        base = first.setdefault(r["stage"], per_k)
        r["per_1000_rows"] = per_k
        r["vs_first"] = per_k / base if base else None


def print_table(table: list[dict]) -> None:
    print(f"{'case':<22}{'stage':<56}{'s':>9}{'MB':>9}{'/1k rows':>10}{'vs first':>10}")
    for r in table:
        s = f"{r['seconds']:.2f}" if "seconds" in r else ""
        mb = f"{r['mb']:.1f}" if "mb" in r else ""
        ratio = f"{r['vs_first']:.2f}" if r.get("vs_first") is not None else ""
        print(f"{r['case']:<22}{r['stage']:<56}{s:>9}{mb:>9}{r['per_1000_rows']:>10.3f}{ratio:>10}")


def result_path(tag: str) -> Path:
    v = {p: metadata.version(p) for p in ("bokeh", "umap-learn", "faiss-cpu")}
    return RESULTS / (f"explore-{tag}-cpu{os.cpu_count()}-{platform.machine()}-bokeh{v['bokeh']}-"
                      f"umap{v['umap-learn']}-faiss{v['faiss-cpu']}.csv")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="a finished run (e.g. the README's first command's)")
    ap.add_argument("--screenshot", type=Path, help="save the --run page at #row=123 here")
    ap.add_argument("--rows", type=int, nargs="*", default=[], help="synthetic runs of these sizes")
    ap.add_argument("--thumbnails", type=int, default=50_000, help="thumbnail cap of the synthetic runs")
    args = ap.parse_args()
    if shutil.which("chromium") is None:
        raise SystemExit("needs Debian's chromium and chromium-driver (apt install chromium chromium-driver)")
    table = bench_run(args.run, args.screenshot) if args.run else []
    for n in args.rows:
        table += bench_rows(n, args.thumbnails)
        print(f"{n:,} rows done", flush=True)
    add_ratios(table)
    print_table(table)
    path = result_path("run" if args.run and not args.rows else "rows" if args.rows and not args.run else "all")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["case", "rows", "stage", "seconds", "mb", "per_1000_rows", "vs_first"])
        w.writeheader()
        w.writerows(table)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
