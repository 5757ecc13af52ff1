"""`--k auto` says how sure it is (gpuclust/select/kauto.py), on real images in the study's UMAP-50 space (30
neighbours, min_dist 0, seed 0, umap-learn's own epochs: the spaces the rule was measured on): scikit-learn's digits
(the silhouette and prediction strength agree near 10) and 2,000 Fashion-MNIST test images as pixels (the silhouette
picks the coarse k = 2, prediction strength a finer one: low confidence). The rule and the agreement also reproduce
the study's counts from its committed CSVs. (In gpuclust's default 200-epoch space the digits' silhouette k is 12,
prediction strength's 11: docs/selection-study.md.)"""
import importlib.util
import logging

import numpy as np
import pytest
from sklearn.datasets import load_digits

from gpuclust.backend import resolve_backend
from gpuclust.cluster import choose_k
from gpuclust.select.kauto import (PS_THRESHOLD, KChoice, agree, k_by_prediction_strength, prediction_strength,
                                   ps_halves)
from helpers import ROOT, one_thread


def _umap50(X) -> np.ndarray:
    from gpuclust.reduce import umap

    with one_thread():
        study = {"n_neighbors": 30, "min_dist": 0.0, "n_epochs": None}
        return umap(np.asarray(X, np.float32), 50, study, resolve_backend("cpu"), 0)[0]


@pytest.fixture(scope="module")
def digits_space():
    return _umap50(load_digits().data)


@pytest.fixture(scope="module")
def fashion_space():
    import gpuclust as gc

    ds = gc.load_dataset("fashion-mnist", limit=2000)
    return _umap50(np.asarray(ds.images, np.float32).reshape(len(ds), -1) / 255)


def test_prediction_strength_is_high_at_a_coarse_k_and_falls_at_fine_ks(backend, digits_space):
    Z = backend.asarray(digits_space)
    halves = ps_halves(len(digits_space), seed=0)
    with one_thread():
        ps = {k: prediction_strength(Z, "kmeans", k, {}, backend, 0, halves) for k in (2, 18, 19, 20)}
    assert all(0 <= v <= 1 for v in ps.values())
    assert ps[2] >= 0.95  # two halves of digits split the same way
    assert np.mean([ps[18], ps[19], ps[20]]) < 0.75  # 20 clusters of 10 digits do not replicate across halves
    assert prediction_strength(Z[:10], "kmeans", 6, {}, backend) is None  # halves of 5 rows cannot hold 6 clusters


def test_halves_are_a_bounded_seeded_sample_the_same_for_every_k():
    a, b = ps_halves(1_000_000, seed=3, max_rows=10_000)
    assert len(a) == len(b) == 5_000 and not set(a) & set(b)
    assert all((x == y).all() for x, y in zip((a, b), ps_halves(1_000_000, seed=3, max_rows=10_000)))
    assert len(ps_halves(7)[0]) == 3 and len(ps_halves(7)[1]) == 3


def test_digits_silhouette_and_prediction_strength_agree(digits_space, caplog):
    with one_thread(), caplog.at_level(logging.WARNING):
        choice = choose_k(digits_space, digits_space, "kmeans", {}, resolve_backend("cpu"), 0, (2, 20))
    k, scores = choice  # unpacks as choose_k always returned
    assert k == choice.k == 10 and set(scores) == set(choice.prediction_strength) == set(range(2, 21))
    assert 8 <= choice.k_ps <= 12 and choice.prediction_strength[choice.k_ps] >= PS_THRESHOLD
    assert not choice.low_confidence and choice.warning() is None and "low confidence" not in caplog.text
    rec = choice.record()
    assert rec["k_auto_ps"] == choice.k_ps and rec["k_auto_low_confidence"] is False
    assert rec["k_auto_prediction_strength"] == choice.prediction_strength


def test_fashion_mnist_coarse_silhouette_k_is_low_confidence(fashion_space, caplog):
    with one_thread(), caplog.at_level(logging.WARNING):
        choice = choose_k(fashion_space, fashion_space, "kmeans", {}, resolve_backend("cpu"), 0, (2, 14))
    assert choice.k == 2  # the top of the hierarchy (the study: k = 2 for these 10 classes)
    assert 3 <= choice.k_ps <= 12 and choice.low_confidence and choice.record()["k_auto_low_confidence"] is True
    line = f"--k auto: low confidence: the silhouette chose k=2, prediction strength k={choice.k_ps}"
    assert line in caplog.text and "k_auto.png" in caplog.text


def test_rule_and_agreement():
    assert k_by_prediction_strength({2: 1.0, 3: 0.6, 5: 0.81, 6: 0.79, 7: None}) == 5  # largest k with PS >= 0.8
    assert k_by_prediction_strength({2: 0.5, 3: 0.7, 4: 0.7}) == 3  # none reaches 0.8: the best (smallest on ties)
    assert k_by_prediction_strength({2: None}) is None
    assert agree(10, 8) and agree(10, 12) and agree(5, 4) and agree(3, 3)
    assert not agree(10, 13) and not agree(2, 3) and not agree(8, 10) and not agree(4, None)
    assert KChoice(4, {4: 0.5}, {4: None}, None).low_confidence


def test_the_rule_and_agreement_reproduce_the_study():
    spec = importlib.util.spec_from_file_location("kauto_conf", ROOT / "benchmarks" / "selection_kauto_confidence.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    frame = mod.cases()
    s = mod.summary(frame)
    assert s["rule_matches_study"] == s["cases"] == 32  # the library's rule gives the study's k in every case
    assert s["agree"] == 7 and s["right_when_agree"] == 5  # "they agreed in 7 of 32 cases, right in 5"
    assert frame.loc[frame["agree"] & frame["right"], "loss"].max() < 0.015  # "(loss <= 0.014)", rounded
    assert s["flagged_loss_over_0.05"] == 17  # 68% of the 25 flagged cases lose more than 0.05
