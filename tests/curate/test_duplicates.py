"""Near-duplicates: altered copies of real photo tiles found at the default threshold without grouping distinct
tiles, the rule against chaining, the IVF search against exact, and the CLI (--duplicates, report strips,
export --drop-duplicates, bad thresholds)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from helpers import ROOT, run_cli

import gpuclust as gc
from gpuclust.backend import cpu_backend
from gpuclust.curate.duplicates import DEFAULT_THRESHOLD, candidate_pairs, duplicate_groups
from gpuclust.curate.neighbours import NeighbourIndex
from gpuclust.errors import UserError

ALTERED = ("jpeg", "resize", "brightness", "flip")  # cropping is the hardest; the benchmark measures it
RECALL, MERGED = 0.6, 9  # measured on these 100 images at 0.9: recall 0.71 of the copies, 7 of 20 tiles merged


def _bench():
    spec = importlib.util.spec_from_file_location("bench_duplicates", ROOT / "benchmarks" / "bench_duplicates.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def altered_folder(tmp_path_factory):
    """20 distinct tiles of scikit-learn's sample photos and 4 altered copies of each (100 real images) as files:
    returns (folder, {file name: original id})."""
    bench = _bench()
    tiles = bench.photo_tiles(size=96)
    tiles = tiles[:: max(1, len(tiles) // 20)][:20]
    images, source, _, alteration = bench.altered_set({"photos": tiles}, ALTERED)
    root = tmp_path_factory.mktemp("dups") / "imgs"
    root.mkdir()
    truth = {}
    for i, (img, src, how) in enumerate(zip(images, source, alteration)):
        name = f"{i:03d}-{how}.png"
        img.save(root / name)
        truth[name] = int(src)
    return root, truth


@pytest.fixture(scope="module")
def encoded(altered_folder):
    folder, truth = altered_folder
    X, rows = gc.embed(str(folder), "efficientnet_lite0", device="cpu", progress=False, return_rows=True)
    ds = gc.load_dataset(f"folder:{folder}")
    names = [p.rpartition("/")[2] for p in np.asarray(ds.paths)[rows]]
    return np.asarray(X), np.array([truth[n] for n in names]), np.array(["original" in n for n in names])


def test_altered_copies_are_found_and_distinct_tiles_are_rarely_grouped(encoded):
    X, source, original = encoded
    frame = gc.find_duplicates(X)  # the default threshold
    group = np.full(len(X), -1)
    group[frame.row] = frame.group
    orig_group = {s: group[np.flatnonzero(original & (source == s))[0]] for s in np.unique(source)}
    copies = np.flatnonzero(~original)
    found = np.mean([group[c] >= 0 and group[c] == orig_group[source[c]] for c in copies])
    assert found >= RECALL, found
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    merged = set()
    for _, part in frame.groupby("group"):
        assert part.kept.sum() == 1 and part.kept.iloc[0] and (part.similarity >= DEFAULT_THRESHOLD - 1e-6).all()
        kept = part.row.iloc[0]
        assert (U[part.row] @ U[kept] >= DEFAULT_THRESHOLD - 1e-5).all()  # every member near the kept row
        if source[part.row].min() != source[part.row].max():
            merged |= set(source[part.row].tolist())
    # Tiles of one photo can look alike to the encoder (two patches of sky); few are grouped, none by a chain.
    assert len(merged) <= MERGED, merged


def test_a_chain_of_pairs_is_split_at_the_kept_row():
    # a~b (0.951), b~c (0.951), but a !~ c (0.809): connected, yet c is not a duplicate of the kept row a.
    t = np.radians([0.0, 18.0, 36.0, 90.0])
    X = np.stack([np.cos(t), np.sin(t), np.zeros(4)], axis=1).astype(np.float32)
    frame = gc.find_duplicates(X, 0.9, device="cpu")
    assert frame.row.tolist() == [0, 1] and frame.kept.tolist() == [True, False]
    # The kept row is the one closest to its cluster's centre in Z: row 1 here, and then all three belong.
    frame = gc.find_duplicates(X, 0.9, device="cpu", labels=np.array([0, 0, 0, 1]), Z=np.array([[0.], [1.], [2.], [9.]]))
    assert frame.row.tolist()[0] == 1 and sorted(frame.row) == [0, 1, 2] and frame.kept.sum() == 1
    # A longer chain a-b-c-d-e splits greedily: {a, b}, then {c, d} (c first in the order), e alone.
    t = np.radians([0.0, 18.0, 36.0, 54.0, 72.0])
    X = np.stack([np.cos(t), np.sin(t)], axis=1)
    frame = gc.find_duplicates(X, 0.9, device="cpu")
    assert [sorted(p.row) for _, p in frame.groupby("group")] == [[0, 1], [2, 3]]


def test_more_copies_than_candidates_still_form_one_group():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 32)).astype(np.float32)
    X[100:140] = X[0] + 0.05 * rng.standard_normal((40, 32))  # 41 near-identical rows, candidates=16
    frame = gc.find_duplicates(X, 0.95, device="cpu", candidates=4)
    big = frame[frame.group == 0]
    assert sorted(big.row) == [0, *range(100, 140)] and frame.group.max() == 0


@pytest.mark.parametrize("bad", [0, -0.5, 1.01, "0.9", True, float("nan")])
def test_bad_thresholds_are_refused(bad):
    with pytest.raises(UserError, match="threshold"):
        gc.find_duplicates(np.eye(3), bad)


def test_the_ivf_search_finds_the_exact_pairs():
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((30, 128)).astype(np.float32)
    X = centres[rng.integers(0, 30, 4000)] + 1.2 * rng.standard_normal((4000, 128)).astype(np.float32)
    X[3000:3400] = X[:400] + 0.3 * rng.standard_normal((400, 128)).astype(np.float32)
    b = cpu_backend()
    exact = NeighbourIndex(b, X, ivf_min_rows=10**9)
    ivf = NeighbourIndex(b, X, ivf_min_rows=1000)
    assert ivf.ivf and not exact.ivf

    def pairs(nx):
        i, j, _ = candidate_pairs(nx, 0.9, 16)
        return set(zip(np.minimum(i, j).tolist(), np.maximum(i, j).tolist()))

    want, got = pairs(exact), pairs(ivf)
    assert len(want) >= 400 and len(got & want) >= 0.99 * len(want) and got <= want
    g_exact = duplicate_groups(b, X, 0.9, np.zeros(len(X)), ivf_min_rows=10**9).group
    g_ivf = duplicate_groups(b, X, 0.9, np.zeros(len(X)), ivf_min_rows=1000).group
    assert np.mean(g_exact == g_ivf) >= 0.99


def _export(*args):
    return subprocess.run([sys.executable, "-m", "gpuclust.export", *map(str, args), "-q"], capture_output=True,
                          text=True, cwd=ROOT)


def test_cli_marks_duplicates_shows_them_and_export_drops_them(altered_folder, tmp_path):
    folder, truth = altered_folder
    common = ["--dataset", f"folder:{folder}", "--encoder", "efficientnet_lite0", "--reduce", "pca", "--dims", "10",
              "--cluster", "kmeans", "--k", "5", "--device", "cpu", "--no-silhouette-umap", "-q"]
    r = run_cli(*common, "--duplicates", "0.9", "--output", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    run = tmp_path / "run"
    dups = pd.read_parquet(run / "duplicates.parquet")
    labels = pd.read_parquet(run / "labels.parquet")
    assert list(dups.columns) == ["group", "row", "path", "kept", "similarity"]
    assert {"duplicate_group", "duplicate_of"} <= set(labels.columns)
    marked = labels[labels.duplicate_of >= 0]
    kept_rows = set(dups.row[dups.kept])
    assert set(marked.duplicate_of) <= kept_rows and len(marked) == int((~dups.kept).sum()) >= 50  # 64 measured
    assert (labels.duplicate_group[labels.duplicate_of < 0].isin(dups.group[dups.kept]) |
            (labels.duplicate_group[labels.duplicate_of < 0] == -1)).all()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_duplicates"] == len(marked) and metrics["duplicates_threshold"] == 0.9
    assert metrics["n_duplicate_groups"] == dups.group.nunique()
    html = (run / "report.html").read_text()
    assert "Near-duplicates" in html and "curate/" in html and any((run / "curate").glob("*.jpg"))

    assert _export(run, tmp_path / "out", "--drop-duplicates").returncode == 0
    listing = pd.read_csv(tmp_path / "out" / "export.csv")
    assert set(listing.row) == set(labels.row) - set(marked.row)

    r = run_cli(*common, "--output", str(tmp_path / "plain"))
    assert r.returncode == 0, r.stderr
    r = _export(tmp_path / "plain", tmp_path / "out2", "--drop-duplicates")
    assert r.returncode == 2 and "--duplicates" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out2").exists()


@pytest.mark.parametrize("bad", ["0", "1.5", "-1", "abc"])
def test_cli_bad_thresholds_exit_2(bad, tmp_path):
    r = run_cli("--dataset", "digits", "--encoder", "pixels", "--duplicates", bad, "--output", str(tmp_path / "x"), "-q")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
