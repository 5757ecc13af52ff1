"""The README's default job, cut to 2,000 images, gives the labels it gave before the library-first rework (issue 20):
the CLI is now a thin layer over gpuclust's Python pieces, and its numbers must not have moved.

The reference labels (tests/data/default_job_2000_labels.npy) were written by the CLI at commit b3ed2ef and written
again when UMAP's default became 200 epochs at every size (AMI 0.6842 -> 0.6741 on these 2,000 rows, within the
seeds' spread: benchmarks/results/README.md, "UMAP's epochs"), from a fresh embedding store on this project's 2-core
CPU machine, with ONNX Runtime as the encoder's runtime (auto) and every
library on one thread: the thread count changes float rounding in the encoder and k-means, which UMAP amplifies into
another layout (0.684 on one thread, 0.671 on two), so the test pins it. A machine whose floating point differs
(another CPU family) may still land elsewhere; the AMI check says how far."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from PIL import Image

from explore.browser import needs_browser, open_explorer
from helpers import ONE_THREAD, ROOT, run_cli

REFERENCE_AMI = 0.6741078458652587


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """The README's first command at --limit 2000, with its own embedding store: (run folder, environment)."""
    pytest.importorskip("onnxruntime")  # the reference was encoded by ONNX Runtime (the set-up installs it)
    tmp = tmp_path_factory.mktemp("default-job")
    env = {"GPUCLUST_CACHE": str(tmp / "store"), **ONE_THREAD}
    out = tmp / "run"
    r = run_cli("--limit", "2000", "--gallery", "0", "--output", str(out), "-q", env=env)
    assert r.returncode == 0, r.stderr
    return out, env


def test_default_job_labels_are_unchanged(default_run):
    out, _ = default_run
    labels = pd.read_parquet(out / "labels.parquet")
    reference = np.load(ROOT / "tests" / "data" / "default_job_2000_labels.npy")
    assert labels["row"].tolist() == list(range(2000))
    ami = json.loads((out / "metrics.json").read_text())["ami"]
    assert ami == pytest.approx(REFERENCE_AMI, abs=1e-9), f"AMI {ami}, reference {REFERENCE_AMI}"
    assert np.array_equal(labels["label_pred"].to_numpy(), reference)


@needs_browser
def test_the_default_job_opens_in_the_explorer(default_run, tmp_path):
    """The one more command after the README's two: the default job's images as an interactive map with thumbnails,
    in a real browser (headless Chromium driven by selenium), with no console errors."""
    out, env = default_run
    r = subprocess.run([sys.executable, "-m", "gpuclust.explore", str(out), "--export", str(tmp_path / "site"), "-q"],
                       capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, **env})
    assert r.returncode == 0, r.stderr
    state = open_explorer(tmp_path / "site" / "index.html", row=123, screenshot=tmp_path / "explore.png")
    assert state["points"] == 2000 and state["counts"].startswith("2,000 images · 10 clusters")
    assert state["thumbnail"] == "thumbs/123.webp" and state["neighbours"] == 10
    assert state["errors"] == []
    pixels = np.asarray(Image.open(tmp_path / "explore.png").convert("L"), dtype=np.float32)
    assert pixels.std() > 20  # the map, the panel and the thumbnail drawn, not a blank page
