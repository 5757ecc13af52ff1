"""`--k auto`: k chosen by the silhouette in UMAP space finds the true k on well-separated data."""
import json

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from gpuclust.backend import resolve_backend
from gpuclust.cluster import choose_k
from gpuclust.errors import UserError
from helpers import run_cli


@pytest.mark.parametrize("method", ["kmeans", "agglomerative", "spectral"])
def test_auto_k_finds_the_true_k(backend, method):
    X, _ = make_blobs(n_samples=900, centers=7, n_features=10, cluster_std=0.5, random_state=3)
    X = backend.asarray(X.astype(np.float32))
    k, scores = choose_k(X, X, method, {}, backend, seed=0, k_range=(2, 12))
    assert k == 7 and len(scores) == 11
    assert scores[7] == max(scores.values()) and scores[7] > scores[6] and scores[7] > scores[8]


def test_auto_k_rejects_clusterers_that_choose_k():
    X = np.zeros((10, 2), np.float32)
    with pytest.raises(UserError, match="finds the number of clusters itself"):
        choose_k(X, X, "hdbscan", {}, resolve_backend("cpu"))
    with pytest.raises(UserError, match="--k-range"):
        choose_k(X, X, "kmeans", {}, resolve_backend("cpu"), k_range=(1, 5))


def test_k_range_beyond_the_rows_is_cut_to_them_and_says_so(caplog):
    X, _ = make_blobs(n_samples=8, centers=2, n_features=3, cluster_std=0.1, random_state=0)
    k, scores = choose_k(X.astype(np.float32), X, "kmeans", {}, resolve_backend("cpu"), k_range=(2, 100))
    assert sorted(scores) == list(range(2, 8)) and k == 2
    assert "--k-range 2:100: 8 images allow k up to 7; trying 2:7" in caplog.text


def test_cli_k_auto_on_digits(tmp_path):
    proc = run_cli("--dataset", "digits", "--encoder", "pixels", "--reduce", "pca", "--dims", "20", "--k", "auto",
                   "--k-range", "5:14", "--output", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "c"), "-q")
    assert proc.returncode == 0, proc.stderr
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert 5 <= m["k_auto"] <= 14 and m["n_clusters"] == m["k_auto"]
    assert set(cfg["resolved"]["cluster_params"]["k_auto_scores"]) == {str(k) for k in range(5, 15)}
    assert m["ami"] > 0.5  # digits clustered at a silhouette-chosen k
    scores = cfg["resolved"]["cluster_params"]["k_auto_scores"]
    assert m["k_auto"] == int(max(scores, key=lambda k: (scores[k], -int(k))))
    # How sure: prediction strength per k beside the silhouettes, its k and the flag in metrics.json.
    ps = cfg["resolved"]["cluster_params"]["k_auto_prediction_strength"]
    assert set(ps) == set(scores) and all(0 <= v <= 1 for v in ps.values())
    assert m["k_auto_ps"] == cfg["resolved"]["cluster_params"]["k_auto_ps"] and 5 <= m["k_auto_ps"] <= 14
    assert m["k_auto_low_confidence"] == (abs(m["k_auto"] - m["k_auto_ps"]) > 0.2 * m["k_auto"])
    assert ("low confidence" in proc.stderr) == m["k_auto_low_confidence"]
    from PIL import Image

    page = (tmp_path / "run" / "report.html").read_text()
    assert '<img src="k_auto.png"' in page and Image.open(tmp_path / "run" / "k_auto.png").format == "PNG"
    assert ("--k auto: low confidence" in page) == m["k_auto_low_confidence"] and "k_auto_low_confidence" in page


def test_cli_k_bad_value(tmp_path):
    proc = run_cli("--k", "many", "-q")
    assert proc.returncode == 2 and "integer or 'auto'" in proc.stderr and "Traceback" not in proc.stderr
