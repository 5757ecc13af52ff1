"""A run directory holds one run's files only: runs started in the same second get two directories, a rerun into
an earlier run's folder replaces it whole (and only when it succeeds), and a folder with other files is refused."""
import json
import time
from pathlib import Path

from gpuclust.report import run_dir
from gpuclust.run import main


def test_runs_started_in_the_same_second_get_two_directories(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20261205-120000")
    with run_dir(None, "digits", "pixels", "pca", "kmeans") as (a, _), \
            run_dir(None, "digits", "pixels", "pca", "kmeans") as (b, _):
        (a / "metrics.json").write_text("{}")
        (b / "metrics.json").write_text("{}")
    assert a != b and a.name + "-2" == b.name and a.parent == b.parent == Path("runs")


def _run(out, cache, *extra):
    return main(["--dataset", "digits", "--encoder", "pixels", "--reduce", "pca", "--dims", "10", "--gallery", "0",
                 "-q", "--output", str(out), "--cache-dir", str(cache), *extra])


def test_a_rerun_replaces_the_earlier_runs_files(tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    assert _run(out, cache, "--k", "auto", "--k-range", "9:10") == 0
    assert (out / "k_auto.png").is_file()
    (out / "skipped.csv").write_text("row,path,reason\n")  # as a run with an unreadable image leaves it
    assert _run(out, cache, "--k", "10") == 0
    assert not (out / "k_auto.png").exists() and not (out / "skipped.csv").exists()
    assert json.loads((out / "config.json").read_text())["cluster"]["k"] == 10
    assert not [p for p in out.iterdir() if p.name.startswith(".gpuclust-")]  # no staging folder left


def test_a_failed_rerun_keeps_the_earlier_run(tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    assert _run(out, cache, "--k", "10") == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    # found late: by scikit-learn, in the cluster stage, after the run has begun writing
    assert _run(out, cache, "--k", "10", "--cluster-param", "tol=-1") == 2
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert not [p for p in out.iterdir() if p.name.startswith(".gpuclust-")]


def test_a_folder_with_other_files_is_refused(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    assert _run(out, tmp_path / "cache", "--k", "10") == 2
    assert "notes.txt" in capsys.readouterr().err and (out / "notes.txt").read_text() == "my notes"


def test_a_rerun_in_a_sweep_keeps_its_log_and_drops_the_earlier_files(tmp_path):
    """A sweep child's stdout (log.txt) is open in the folder while the run writes beside it: it stays."""
    out = tmp_path / "0001-run"
    out.mkdir()
    (out / "metrics.json").write_text('{"old": 1}')
    (out / "k_auto.png").write_bytes(b"png")
    with open(out / "log.txt", "w") as log:
        log.write("started\n")
        log.flush()
        with run_dir(str(out), "digits", "pixels", "pca", "kmeans") as (d, final):
            assert d != out and d.parent == out and final == out
            (d / "metrics.json").write_text('{"new": 1}')
        log.write("finished\n")
    assert sorted(p.name for p in out.iterdir() if p.name != ".gpuclust.lock") == ["log.txt", "metrics.json"]
    assert (out / "log.txt").read_text() == "started\nfinished\n" and "new" in (out / "metrics.json").read_text()


def _earlier(folder):
    folder.mkdir(exist_ok=True)
    (folder / "metrics.json").write_text('{"old": 1}')
    (folder / "k_auto.png").write_bytes(b"png")


def _rerun(output):
    with run_dir(str(output), "digits", "pixels", "pca", "kmeans") as (d, final):
        (d / "metrics.json").write_text('{"new": 1}')
    return final


def _names(folder):
    return sorted(p.name for p in folder.iterdir() if p.name != ".gpuclust.lock")


def test_a_rerun_into_dot_or_a_symlink_replaces_the_files_where_they_are(tmp_path, monkeypatch):
    target = tmp_path / "target"
    _earlier(target)
    (tmp_path / "link").symlink_to(target)
    _rerun(tmp_path / "link")
    assert (tmp_path / "link").is_symlink() and _names(target) == ["metrics.json"]
    assert "new" in (target / "metrics.json").read_text()
    _earlier(target)
    monkeypatch.chdir(target)
    _rerun(".")
    assert _names(target) == ["metrics.json"] and "new" in (target / "metrics.json").read_text()


def test_one_run_writes_into_a_folder_at_a_time(tmp_path):
    import pytest

    from gpuclust.errors import UserError

    with run_dir(str(tmp_path / "run"), "digits", "pixels", "pca", "kmeans"):
        with pytest.raises(UserError, match="another gpuclust run is writing there"):
            with run_dir(str(tmp_path / "run"), "digits", "pixels", "pca", "kmeans"):
                pass


def test_a_killed_reruns_staging_is_removed_and_other_dot_files_are_refused(tmp_path):
    import pytest

    from gpuclust.errors import UserError

    out = tmp_path / "run"
    _earlier(out)
    (out / ".gpuclust-staging-dead0001").mkdir()  # a rerun killed before it could swap its files in
    (out / ".gpuclust-staging-dead0001" / "labels.parquet").write_bytes(b"partial")
    _rerun(out)
    assert _names(out) == ["metrics.json"]
    (out / ".notes").write_text("mine")
    with pytest.raises(UserError, match="'.notes'"):
        _rerun(out)
    assert (out / ".notes").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="a file, not a folder"):
        _rerun(tmp_path / "file")
