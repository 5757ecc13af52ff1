"""Gaussian mixture: scikit-learn's GaussianMixture, a soft k-means with a covariance per cluster.

cuML has no Gaussian mixture (26.10), so a GPU run fits it on the CPU twin, the reduced rows moved to the host for
this step only; in a 50-d UMAP space that is seconds for tens of thousands of rows. The number of clusters is
scikit-learn's `n_components`, which `--k` fills as for the other k-takers.
"""
from __future__ import annotations

from ...backend import Algorithm, register
from ..checks import check_at_least_1, check_choice, check_range

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


def _check(p: dict) -> None:
    check_at_least_1(p, "n_init", "max_iter")
    check_range(p, "reg_covar", 0, float("inf"), "must be a number >= 0")
    check_choice(p, "covariance_type", "full", COVARIANCE_TYPES)
    check_choice(p, "init_params", "kmeans", ("kmeans", "k-means++", "random", "random_from_data"))


def _prepare(backend, Z, p: dict) -> tuple:
    """Rows in float64 and a covariance floor of 1e-4 unless given: UMAP with min_dist 0 packs a cluster's rows so
    tightly that, in float32 with scikit-learn's floor (1e-6), a component's covariance can come out singular and the
    fit fails. On Fashion-MNIST's UMAP space the floor moved AMI by 0.001."""
    return Z.astype(backend.xp.float64), {"reg_covar": 1e-4, **p}, {}


GAUSSIAN_MIXTURE = register(Algorithm(
    "gaussian_mixture",
    "sklearn.mixture.GaussianMixture",
    None,
    notes="cuML has none: the CPU twin runs on GPU runs (the rows reach the host for this step)",
    help="Gaussian mixture, --k components, covariance_type full/tied/diag/spherical; sklearn (CPU on both twins)",
    k_param="n_components",
    seeded=True,
    check=_check,
    prepare=_prepare,
))
