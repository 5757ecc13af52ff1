"""report.html as a user opens it: headless Chromium (Debian's `chromium`, installed by .ci/run) renders a run's
report with the curate sections, every picture it names is there, and the screenshot is not blank."""
import shutil
import subprocess

import numpy as np
import pytest

from helpers import run_cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt install chromium; .ci/run installs it)")
def test_report_with_duplicates_and_outliers_renders_in_chromium(tmp_path):
    from PIL import Image

    out = tmp_path / "run"
    r = run_cli("--dataset", "digits", "--encoder", "pixels", "--reduce", "pca", "--dims", "20", "--k", "10",
                "--device", "cpu", "--duplicates", "0.97", "--outliers", "0.02", "--output", str(out), "-q")
    assert r.returncode == 0, r.stderr
    dom = _chromium("--dump-dom", (out / "report.html").as_uri()).stdout
    assert "Near-duplicates" in dom and "Outliers" in dom and "clusters" in dom
    images = [s.split('"')[0] for s in dom.split('<img src="')[1:]]
    assert len(images) >= 10 and all((out / src).is_file() for src in images), images
    assert sum(src.startswith("curate/") for src in images) >= 3  # duplicate groups and two outlier strips
    shot = tmp_path / "report.png"
    _chromium("--window-size=1000,6000", f"--screenshot={shot}", (out / "report.html").as_uri())
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    drawn = np.flatnonzero(pixels.min(axis=1) < 200)  # rows of the page holding anything darker than the paper
    assert pixels.std() > 20 and drawn.size > 2000  # plots, strips and text drawn down the page, not a blank page
