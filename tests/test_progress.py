"""Progress on stderr for long stages (gpuclust.progress): shown with progress on, nothing with -q, same labels."""
from __future__ import annotations

import pandas as pd
import pytest
from helpers import ONE_THREAD, run_cli

from gpuclust import progress


@pytest.fixture
def at_once(monkeypatch):
    """Lines appear at once instead of after SHOW_AFTER_S."""
    monkeypatch.setenv("GPUCLUST_PROGRESS_AFTER", "0")


def test_stage_line_on_stderr_and_relabelled(at_once, capfd):
    with progress.stage_progress("reduce", True):
        assert progress.active()
        with progress.step("umap fit"):
            assert progress._open[-1].bar.desc == "reduce: umap fit"
        assert progress._open[-1].bar.desc == "reduce"
        assert list(progress.track(range(3), "k auto", 3)) == [0, 1, 2]
        assert progress.umap_tqdm_kwds()["disable"] is False
    assert not progress.active()
    err = capfd.readouterr().err
    assert "reduce" in err and "k auto" in err


def test_nothing_when_disabled(at_once, capfd):
    with progress.stage_progress("reduce", False):
        assert not progress.active()
        with progress.step("umap fit"):
            pass
        items = range(3)
        assert progress.track(items, "k auto") is items
        assert progress.umap_tqdm_kwds()["disable"] is True
    assert capfd.readouterr().err == ""


def test_line_waits_for_its_delay(monkeypatch, capfd):
    monkeypatch.setenv("GPUCLUST_PROGRESS_AFTER", "60")
    with progress.stage_progress("cluster", True):
        pass
    assert "cluster" not in capfd.readouterr().err


def test_show_after_reads_the_environment(monkeypatch):
    monkeypatch.setenv("GPUCLUST_PROGRESS_AFTER", "0.5")
    assert progress.show_after() == 0.5
    monkeypatch.setenv("GPUCLUST_PROGRESS_AFTER", "soon")
    assert progress.show_after() == progress.SHOW_AFTER_S


def _run(tmp_path, name: str, *extra: str):
    args = ["--dataset", "digits", "--encoder", "pixels", "--limit", "400", "--map", "none", "--k", "auto",
            "--k-range", "8:10", "--silhouette-original", "--silhouette-metrics", "euclidean,cosine",
            "--output", str(tmp_path / name), "--cache-dir", str(tmp_path / f"cache-{name}"), *extra]
    res = run_cli(*args, env={**ONE_THREAD, "GPUCLUST_PROGRESS_AFTER": "0"})
    assert res.returncode == 0, res.stderr
    return res.stderr, pd.read_parquet(tmp_path / name / "labels.parquet")


def test_cli_progress_and_quiet_give_the_same_labels(tmp_path):
    """Each stage's line, UMAP's epoch bar and the k candidates' bar with progress on; nothing with -q; the same
    labels either way (each run with its own cache, so neither reuses the other's UMAP space)."""
    err, labels = _run(tmp_path, "shown")
    # (a step's label is drawn as the step starts once the line shows, here at once)
    for text in ("reduce: umap fit", "umap epochs", "k auto", "cluster", "evaluate"):
        assert text in err, text
    quiet_err, quiet_labels = _run(tmp_path, "quiet", "-q")
    assert "umap" not in quiet_err and "[00:" not in quiet_err
    pd.testing.assert_frame_equal(labels, quiet_labels)
