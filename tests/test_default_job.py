"""The README's default job, cut to 2,000 images, gives the labels it gave before the library-first rework (issue 20):
the CLI is now a thin layer over gpuclust's Python pieces, and its numbers must not have moved.

The reference labels (tests/data/default_job_2000_labels.npy) were written by the CLI at commit b3ed2ef, from a fresh
embedding store on this project's 2-core CPU machine, with ONNX Runtime as the encoder's runtime (auto) and every
library on one thread: the thread count changes float rounding in the encoder and k-means, which UMAP amplifies into
another layout (0.684 on one thread, 0.671 on two), so the test pins it. A machine whose floating point differs
(another CPU family) may still land elsewhere; the AMI check says how far."""
import json

import numpy as np
import pandas as pd
import pytest

from helpers import ONE_THREAD, ROOT, run_cli

REFERENCE_AMI = 0.6841909222496354


def test_default_job_labels_are_unchanged(tmp_path):
    pytest.importorskip("onnxruntime")  # the reference was encoded by ONNX Runtime (the set-up installs it)
    out = tmp_path / "run"
    r = run_cli("--limit", "2000", "--gallery", "0", "--output", str(out), "-q",
                env={"GPUCLUST_CACHE": str(tmp_path / "store"), **ONE_THREAD})
    assert r.returncode == 0, r.stderr
    labels = pd.read_parquet(out / "labels.parquet")
    reference = np.load(ROOT / "tests" / "data" / "default_job_2000_labels.npy")
    assert labels["row"].tolist() == list(range(2000))
    ami = json.loads((out / "metrics.json").read_text())["ami"]
    assert ami == pytest.approx(REFERENCE_AMI, abs=1e-9), f"AMI {ami}, reference {REFERENCE_AMI}"
    assert np.array_equal(labels["label_pred"].to_numpy(), reference)
