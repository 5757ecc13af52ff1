"""The clusterer added as one record (gpuclust/cluster/algorithms/gaussian_mixture.py): k reaches scikit-learn's
n_components, a GPU run fits it on the CPU twin with a log line, bad values are one line, and the CLI runs it."""
import json

import numpy as np
import pytest
import scipy.special

from gpuclust.backend import ALGORITHMS, Backend, make_estimator
from gpuclust.cluster import CLUSTERERS, cluster, list_clusterers
from gpuclust.errors import UserError


def test_the_record_is_registered_with_its_k_keyword():
    algo = CLUSTERERS["gaussian_mixture"]
    assert "gaussian_mixture" in list_clusterers() and ALGORITHMS["gaussian_mixture"] is algo
    assert algo.k_param == "n_components" and algo.needs_k({}) and algo.seeded
    assert algo.gpu_gap({}) == "a GPU implementation"


def test_k_is_n_components_and_the_covariance_floor_is_set(digits_pca):
    from sklearn.metrics import adjusted_mutual_info_score

    Z, y = digits_pca
    be = Backend("cpu", np, scipy.special)
    labels, twin, params = cluster(Z, "gaussian_mixture", 10, {}, be, seed=0)
    assert twin == "cpu" and params["n_components"] == 10 and params["reg_covar"] == 1e-4
    assert len(np.unique(labels)) == 10 and adjusted_mutual_info_score(y, labels) > 0.6


def test_a_gpu_run_fits_it_on_the_cpu_twin(caplog):
    gpu = Backend("gpu", np, scipy.special)  # numpy standing in for CuPy: the decision, not the device
    built = make_estimator("gaussian_mixture", gpu, n_components=3)
    assert built.twin == "cpu" and type(built.obj).__name__ == "GaussianMixture"
    assert "lacks a GPU implementation" in caplog.text


@pytest.mark.parametrize("params,text", [
    ({"covariance_type": "round"}, "covariance_type=round"),
    ({"n_init": 0}, "n_init=0"),
    ({"reg_covar": -1}, "reg_covar=-1"),
    ({"n_clusters": 3}, "GaussianMixture has no parameter n_clusters"),
])
def test_bad_values_are_one_line(digits_pca, params, text):
    Z, _ = digits_pca
    with pytest.raises(UserError, match=text):
        cluster(Z, "gaussian_mixture", 10, params, Backend("cpu", np, scipy.special))


def test_cli_runs_it(tmp_path):
    from gpuclust.run import main

    out = tmp_path / "run"
    code = main(["--dataset", "digits", "--encoder", "pixels", "--reduce", "pca", "--dims", "20",
                 "--cluster", "gaussian_mixture", "--device", "cpu", "--gallery", "0", "--output", str(out), "-q"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert code == 0 and metrics["n_clusters"] == 10 and metrics["ami"] > 0.6


@pytest.fixture(scope="module")
def digits_pca():
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA

    X, y = load_digits(return_X_y=True)
    return PCA(20, random_state=0).fit_transform(X / 16.0), y
