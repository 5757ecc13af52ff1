"""`gpuclust.sweep.run_sweep`: a sweep from Python as a DataFrame, equal to the CLI's table on the same grid, the
label-free pick in attrs["best"], results.csv equal to the frame when kept, and bad input raised before anything
runs."""
import csv
import json
import math
import numbers
import tempfile

import pandas as pd
import pytest

from gpuclust.errors import UserError
from gpuclust.sweep import main, parse_options, plan, run_sweep, sweep_options

GRID = dict(datasets=["digits"], encoders=["pixels"], reducers=["pca"], clusterers=["kmeans", "agglomerative"])
CLI_GRID = ["--dataset", "digits", "--encoder", "pixels", "--reduce", "pca", "--dims", "10", "--cluster",
            "kmeans,agglomerative", "--device", "cpu"]


def _rows(sweep_dir):
    with open(sweep_dir / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def frame(cache_dir, tmp_path_factory):
    """The grid from Python into a temporary directory (tempfile's default folder pointed at an empty one here, to
    see that it is removed)."""
    tmp = tmp_path_factory.mktemp("tempdirs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tempfile, "tempdir", str(tmp))
        df = run_sweep(**GRID, dims=10, device="cpu", cache_dir=str(cache_dir), progress=False)
    return df, tmp


def test_a_python_sweep_returns_one_row_per_run_and_the_label_free_pick(frame):
    df, tmp = frame
    assert list(df["run"]) == ["0001", "0002"] and list(df["status"]) == ["ok", "ok"]
    assert list(df["cluster.method"]) == ["kmeans", "agglomerative"]
    assert (df["ami"] > 0.5).all(), df["ami"]  # pixels PCA-10 on digits: about 0.67 and 0.71
    assert (df["n_clusters"] == 10).all() and (df["n_rows"] == 1797).all()
    best = df.attrs["best"]
    assert best["rank_by"] == "ami" and best["ok"] == 2
    free = best["best"]["silhouette_umap_all"]  # the best run by the silhouette alone: no labels used
    top = df.loc[df["silhouette_umap_all"].idxmax()]
    assert free["run"] == top["run"] and free["value"] == top["silhouette_umap_all"]
    assert free["config"]["cluster"]["method"] == top["cluster.method"]
    pick = best["label_free"]  # the label-free pick: two runs are too few to weigh agreement, the silhouette at k
    assert pick["criterion"] == "silhouette_umap_all" and pick["k"] == 10 and pick["run"] == top["run"]
    assert list(df["label_free_score"]) == [e["score"] for e in sorted(pick["runs"], key=lambda e: e["run"])]
    assert 0 <= pick["confidence"] <= 1 and pick["ami_lost"] == pytest.approx(df["ami"].max() - top["ami"], abs=1e-4)
    assert best["best"]["ami"]["run"] == df.loc[df["ami"].idxmax(), "run"]
    assert df.attrs["output"] is None and list(tmp.iterdir()) == []  # the temporary sweep directory is gone


def test_the_cli_on_the_same_grid_gives_the_same_table(frame, cache_dir, tmp_path):
    df, _ = frame
    assert main([*CLI_GRID, "--cache-dir", str(cache_dir), "--output", str(tmp_path / "s"), "-q"]) == 0
    rows = _rows(tmp_path / "s")
    assert [float(r["ami"]) for r in rows] == list(df["ami"])
    assert [float(r["nmi"]) for r in rows] == list(df["nmi"])
    assert [float(r["silhouette_umap_all"]) for r in rows] == pytest.approx(list(df["silhouette_umap_all"]), rel=1e-9)
    assert [r["run_dir"] for r in rows] == list(df["run_dir"])
    best = json.loads((tmp_path / "s" / "best.json").read_text())
    assert best["best"]["silhouette_umap_all"]["run"] == df.attrs["best"]["best"]["silhouette_umap_all"]["run"]


def _same_cell(text: str, value) -> bool:
    """A results.csv cell against the DataFrame's value (the csv module writes None as "" and floats in full)."""
    if text == "":
        return value is None or value == "" or (isinstance(value, float) and math.isnan(value))
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        return float(text) == float(value)
    return text == str(value)


def test_an_output_directory_keeps_results_equal_to_the_frame_and_resumes(cache_dir, tmp_path):
    out = tmp_path / "s"
    df = run_sweep(**GRID, grid={"reduce.dims": [10]}, device="cpu", cache_dir=str(cache_dir), output=out,
                   progress=False)
    rows = _rows(out)
    assert list(rows[0]) == list(df.columns) and len(rows) == len(df) == 2
    for row, record in zip(rows, df.to_dict("records")):
        for column, text in row.items():
            assert _same_cell(text, record[column]), (row["run"], column, text, record[column])
    assert df.attrs["output"] == out and df.attrs["best"] == json.loads((out / "best.json").read_text())
    assert {"results.parquet", "by_setting.csv", "report.html", "sweep.json"} <= {p.name for p in out.iterdir()}

    before = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/metrics.json")}
    again = run_sweep(**GRID, grid={"reduce.dims": [10]}, device="cpu", cache_dir=str(cache_dir), output=out,
                      progress=False)
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/metrics.json")} == before and len(before) == 2
    pd.testing.assert_frame_equal(again, df)  # done rows are read back from their run directories


def test_a_run_failing_on_its_settings_is_a_row_not_an_exception(cache_dir):
    df = run_sweep(datasets="digits", encoders="pixels", reducers="pca", grid={"cluster.k": [10, 5000]}, dims=10,
                   limit=300, device="cpu", cache_dir=str(cache_dir), progress=False, silhouette_umap=False)
    assert list(df["status"]) == ["ok", "error"]
    assert df["error"][1] == "--k 5000: must be between 1 and the number of images (300)"
    assert df["ami"][0] > 0.5 and math.isnan(df["ami"][1])
    assert df.attrs["best"]["best"]["ami"]["run"] == "0001"


@pytest.mark.parametrize("kwargs,needle", [
    (dict(clusterers=["kmeans", "nosuch"]), "unknown clusterer 'nosuch'"),
    (dict(clusterers=[]), "clusterers=: an empty list"),
    (dict(limt=100), "limt=: not a run setting"),
    (dict(spec="digits"), "use datasets=/encoders="),
    (dict(clusterers=["kmeans"], grid={"cluster.method": ["hdbscan"]}), "both vary the same setting"),
    (dict(grid={"cluster.metod": ["kmeans"]}), "unknown grid key 'cluster.metod'"),
    (dict(base={"reduce": {"dims": "abc"}}), "base.reduce.dims 'abc'"),
    (dict(limit="100"), "expected an integer"),
    (dict(rank_by="silhouette_bogus"), "not a metric"),
    (dict(jobs=0), "--jobs 0"),
])
def test_bad_input_raises_before_anything_runs(kwargs, needle, tmp_path):
    with pytest.raises(UserError) as info:
        run_sweep(**{"datasets": ["digits"], "encoders": ["pixels"], "device": "cpu", "progress": False, **kwargs},
                  cache_dir=str(tmp_path / "cache"), output=tmp_path / "s")
    assert needle in str(info.value)
    assert not (tmp_path / "s").exists() and not (tmp_path / "cache").exists()


def test_python_arguments_and_cli_flags_plan_the_same_runs():
    """The same grid from run_sweep's arguments and from the command's flags: the same runs, directories and order."""
    from gpuclust.config import DataConfig, RunConfig

    flags = plan(parse_options([*CLI_GRID, "--seed", "0,1", "--limit", "500"]))[0]
    for base in ({"data": {"limit": 500}}, RunConfig(data=DataConfig(limit=500))):
        settings = {"dims": 10, "device": "cpu"}
        python = plan(sweep_options(**GRID, grid={"seed": [0, 1]}, base=base, settings=settings))[0]
        assert len(python) == 4 and [(r.dir, r.cfg) for r in python] == [(r.dir, r.cfg) for r in flags]


def test_the_package_is_callable_as_the_sweep_function(monkeypatch):
    """`gpuclust.sweep` names both the package and, on `gpuclust`, the function: calling the package runs a sweep."""
    import gpuclust.sweep as sw

    monkeypatch.setattr(sw, "run_sweep", lambda *a, **k: ("ran", a, k))
    assert sw(["digits"], clusterers=["kmeans"]) == ("ran", (["digits"],), {"clusterers": ["kmeans"]})
