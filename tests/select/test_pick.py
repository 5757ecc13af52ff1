"""Label-free picks with a confidence (gpuclust/select), on real images: scikit-learn's digits in a UMAP-like space
(PCA of the pixels here, to keep the test fast)."""
import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_mutual_info_score

from gpuclust.errors import UserError
from gpuclust.select import LOW_CONFIDENCE, Candidate, pick


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return PCA(10, random_state=0).fit_transform(d.data).astype(np.float32), d.target


def test_the_pick_on_real_digits_is_near_the_best_and_sure_of_it(digits):
    Z, y = digits
    cands = [Candidate(f"k{k}", KMeans(k, n_init=4, random_state=0).fit_predict(Z), Z) for k in (2, 4, 10, 25)]
    p = pick(cands, resamples=20)
    ami = {c.id: adjusted_mutual_info_score(y, c.labels) for c in cands}
    assert max(ami.values()) - ami[p.id] < 0.1  # the silhouette's pick is among the good partitions
    assert set(p.scores) == set(ami) and p.scores[p.id] == max(p.scores.values())
    assert p.runner_up != p.id and 0 <= p.confidence <= 1 and p.low == (p.confidence < LOW_CONFIDENCE)
    assert p.to_dict()["run"] == p.id


def test_near_ties_are_low_confidence(digits):
    Z, _ = digits
    # Two k-means runs of the same k with other seeds: the criterion cannot tell them apart on resampled rows.
    labels = [KMeans(10, n_init=1, random_state=s).fit_predict(Z) for s in (0, 1, 2)]
    p = pick([Candidate(f"seed{s}", lab, Z) for s, lab in enumerate(labels)], resamples=30)
    clear = pick([Candidate("k10", labels[0], Z), Candidate("k2", KMeans(2, n_init=2, random_state=0).fit_predict(Z), Z)],
                 resamples=30)
    assert clear.confidence > p.confidence and clear.confidence >= LOW_CONFIDENCE


def test_bad_candidates_are_refused(digits):
    Z, y = digits
    with pytest.raises(UserError, match="no finished run"):
        pick([])
    with pytest.raises(UserError, match="different rows"):
        pick([Candidate("a", y, Z), Candidate("b", y[:-1], Z[:-1])])
    with pytest.raises(UserError, match="criterion"):
        pick([Candidate("a", y, Z)], criterion="nope")
