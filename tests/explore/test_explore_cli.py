"""`python -m gpuclust.explore` as a user calls it, on a real run of the packaged digits: export, serve, atlas,
and the bad inputs that must be one line and exit code 2."""
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from helpers import ROOT, run_cli

ARGS = ["--dataset", "digits", "--encoder", "pixels", "--reduce", "pca", "--dims", "20", "--k", "10", "--device",
        "cpu", "--no-silhouette-umap", "--gallery", "0", "-q"]


def explore_cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpuclust.explore", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("explore-cli")
    env = {"GPUCLUST_CACHE": str(root / "cache")}
    r = run_cli(*ARGS, "--output", str(root / "run"), env=env)
    assert r.returncode == 0, r.stderr
    return root / "run", env


def test_export_writes_a_static_site_and_atlas(run, tmp_path):
    out, env = run
    r = explore_cli(str(out), "--export", str(tmp_path / "site"), "--atlas", str(tmp_path / "atlas"),
                    "--thumbnails", "500", "-q", env=env)
    assert r.returncode == 0, r.stderr
    assert "1,797 rows, 500 thumbnails" in r.stdout
    html = (tmp_path / "site" / "index.html").read_text()
    assert "<script src=\"http" not in html and "Bokeh" in html  # opens with no network
    assert len(list((tmp_path / "site" / "thumbs").glob("*.webp"))) == 500
    assert (tmp_path / "atlas" / "atlas.parquet").is_file() and "embedding-atlas" in \
        (tmp_path / "atlas" / "README.txt").read_text()
    # Again into the same folder: it is the explorer's own, so it is replaced, not refused.
    assert explore_cli(str(out), "--export", str(tmp_path / "site"), "--thumbnails", "0", "-q",
                       env=env).returncode == 0


def test_serves_the_run_until_stopped(run):
    out, env = run
    p = subprocess.Popen([sys.executable, "-m", "gpuclust.explore", str(out), "--port", "0", "--no-browser", "-q",
                          "--thumbnails", "50"], cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        deadline = time.monotonic() + 240
        while "explorer: http" not in line and time.monotonic() < deadline:
            line = p.stdout.readline()
            assert line or p.poll() is None, p.stderr.read()
        url = line.split()[1]
        page = urllib.request.urlopen(url, timeout=30).read().decode()
        assert "Bokeh" in page
        thumb = next((out / "explore" / "thumbs").glob("*.webp")).name
        assert urllib.request.urlopen(url + "thumbs/" + thumb, timeout=30).read()[:4] == b"RIFF"
    finally:
        p.terminate()
        p.wait(30)


def test_a_port_in_use_is_one_line_before_any_work(run, tmp_path):
    out, env = run
    env = {**env, "GPUCLUST_CACHE": str(tmp_path / "cache")}  # an empty thumbnail cache: the work would fill it
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = explore_cli(str(out), "--port", str(port), "--no-browser", env=env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and f"--port {port}: in use" in r.stderr
    assert not (tmp_path / "cache").exists()


def test_an_unwritable_export_is_one_line(run):
    out, env = run
    r = explore_cli(str(out), "--export", "/proc/no-such-folder/site", "-q", env=env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "cannot write" in r.stderr, r.stderr


@pytest.mark.parametrize("args,message", [
    (["{tmp}"], "not a gpuclust run directory"),
    (["{run}", "--thumbnails", "-1"], "--thumbnails -1"),
    (["{run}", "--export", "{file}"], "exists and is not a folder"),
    (["{run}", "--export", "{full}"], "holds other files"),
])
def test_bad_input_is_one_line_and_exit_2(run, tmp_path, args, message):
    out, env = run
    (tmp_path / "file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("x")
    args = [a.format(tmp=tmp_path, run=out, file=tmp_path / "file", full=tmp_path / "full") for a in args]
    r = explore_cli(*args, env=env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_without_bokeh_the_command_says_the_install_line(run, capsys, monkeypatch):
    from gpuclust.explore.cli import main

    out, env = run
    monkeypatch.setitem(sys.modules, "bokeh", None)  # import bokeh now fails as when it is not installed
    assert main([str(out), "--export", "unused", "-q"]) == 2
    assert "pip install 'gpuclust[explore]'" in capsys.readouterr().err


def test_no_display_means_no_browser_the_url_is_printed(monkeypatch):
    from gpuclust.explore.cli import open_browser

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert open_browser("http://127.0.0.1:1/") is False
