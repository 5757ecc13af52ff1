"""Label-free picks with a confidence (gpuclust/select) on real images: scikit-learn's digits, clustered in a
PCA space of their pixels (fast; the criterion is the same in any space)."""
import numpy as np
import pytest
from sklearn.cluster import AgglomerativeClustering, KMeans
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score, silhouette_samples

from gpuclust.backend import resolve_backend
from gpuclust.errors import UserError
from gpuclust.select import (
    MIN_CONSENSUS_RUNS,
    SAMPLE_ROWS,
    Candidate,
    pick,
    sample_positions,
    selection_rows,
)
from gpuclust.select.ari import ari_weighted, pair_ari


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return PCA(10, random_state=0).fit_transform(d.data).astype(np.float32), d.target


@pytest.fixture(scope="module")
def runs(digits):
    """Eight clusterings of the digits: KMeans and ward at k = 4, 10, 16 and 30 (what a sweep over k would hold)."""
    Z, _ = digits
    out = {}
    for k in (4, 10, 16, 30):
        out[f"kmeans{k}"] = KMeans(k, n_init=4, random_state=0).fit_predict(Z)
        out[f"ward{k}"] = AgglomerativeClustering(k).fit_predict(Z)
    return out


def _cands(Z, runs, ids, k=None):
    return [Candidate.from_space(i, Z, runs[i], k=k) for i in ids]


def test_weighted_ari_is_scikit_learns_on_the_repeated_rows(digits, runs):
    a, b = runs["kmeans10"], runs["ward16"]
    b = np.where(np.arange(len(b)) % 7 == 0, -1, b)  # noise rows count as one cluster, as in the metrics
    rng = np.random.default_rng(1)
    W = np.stack([np.ones(len(a))] + [np.bincount(rng.integers(0, len(a), len(a)), minlength=len(a))
                                      for _ in range(3)]).astype(float)
    got = ari_weighted(a, b, W)
    assert got[0] == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)
    for w, g in zip(W[1:], got[1:]):
        idx = np.repeat(np.arange(len(a)), w.astype(int))
        assert g == pytest.approx(adjusted_rand_score(a[idx], b[idx]), abs=1e-12)
    m = pair_ari([a, b, a], W[:1])[0]
    assert m[0, 2] == pytest.approx(1.0) and m[0, 1] == pytest.approx(m[1, 0]) and np.allclose(np.diag(m), 1)


def test_weighted_ari_of_fine_partitions_holds_only_the_occupied_cells():
    """Two runs of 2,000 clusters on 4,000 rows: a dense contingency table per weighting would be 51 x 4M counts
    (1.6 GB); the occupied cells are at most one per row."""
    import tracemalloc

    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 2000, 4000), rng.integers(0, 2000, 4000)
    W = np.stack([np.ones(4000)] + [np.bincount(rng.integers(0, 4000, 4000), minlength=4000)
                                    for _ in range(50)]).astype(float)
    tracemalloc.start()
    got = ari_weighted(a, b, W)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 100e6
    assert got[0] == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)
    idx = np.repeat(np.arange(4000), W[1].astype(int))
    assert got[1] == pytest.approx(adjusted_rand_score(a[idx], b[idx]), abs=1e-12)


def test_a_runs_kept_rows_hold_scikit_learns_silhouettes(digits, runs):
    Z, _ = digits
    labels = runs["kmeans10"].copy()
    labels[:50] = -1  # noise: no silhouette, and the others are scored among the clustered rows only
    sel = selection_rows(resolve_backend("cpu"), Z, labels, np.arange(len(labels)) + 100)
    assert np.array_equal(sel["row"], np.arange(len(labels)) + 100) and np.array_equal(sel["label_pred"], labels)
    assert np.isnan(sel["silhouette"][:50]).all()
    np.testing.assert_allclose(sel["silhouette"][50:], silhouette_samples(Z[50:], labels[50:]), atol=1e-5)
    ids = np.arange(10 * SAMPLE_ROWS)
    big = sample_positions(ids)
    assert len(big) == SAMPLE_ROWS and np.array_equal(big, np.sort(big))
    assert 0.4 < np.mean(big < len(ids) // 2) < 0.6  # spread over the ids, not the first ones
    # chosen by row id alone: two samples of the same rows (another order, another subset) keep the same shared rows
    rng = np.random.default_rng(3)
    a, b = rng.choice(ids, 8 * SAMPLE_ROWS, replace=False), rng.choice(ids, 8 * SAMPLE_ROWS, replace=False)
    kept_a, kept_b = set(a[sample_positions(a)]), set(b[sample_positions(b)])
    assert set(ids[big]) & set(a) <= kept_a  # every row the whole set would score, a sample that has it scores
    assert len(kept_a & kept_b) > 0.6 * SAMPLE_ROWS  # seeded position samples would share about 0.16 x SAMPLE_ROWS


def test_the_band_keeps_a_coarse_split_from_winning(digits, runs):
    Z, y = digits
    ids = list(runs)
    free = pick(_cands(Z, runs, ids))  # no asked k: the silhouette x consensus over all, coarse splits included
    at10 = pick(_cands(Z, runs, ids), k=10)
    ami = {i: adjusted_mutual_info_score(y, runs[i]) for i in ids}
    assert at10.criterion == "silhouette_x_consensus" and at10.k == 10
    assert at10.id in ("kmeans10", "ward10") and max(ami.values()) - ami[at10.id] < 0.03
    assert {i for i, b in at10.in_band.items() if b} == {"kmeans10", "ward10"}
    assert at10.order()[:2] == sorted(["kmeans10", "ward10"], key=lambda i: -at10.scores[i])
    assert free.k is None and any("no run was asked" in n for n in free.notes)
    # the score is the mean per-row silhouette (noise 0) times the mean ARI to the other runs
    others = [adjusted_rand_score(runs[at10.id], runs[j]) for j in ids if j != at10.id]
    assert at10.consensus[at10.id] == pytest.approx(np.mean(others), abs=1e-9)
    assert at10.scores[at10.id] == pytest.approx(at10.silhouette[at10.id] * at10.consensus[at10.id])
    d = at10.to_dict()
    assert d["run"] == at10.id and d["runs"][0]["run"] == at10.id and len(d["runs"]) == len(ids)


def test_runs_asked_for_one_k_draw_the_band_around_it(digits, runs):
    Z, _ = digits
    cands = [Candidate.from_space(i, Z, runs[i], k=10 if i.startswith(("kmeans", "ward")) else None) for i in runs]
    cands[-1].k = None
    p = pick(cands)
    assert p.k == 10  # the k the k-taking runs were asked for
    several = [Candidate.from_space(i, Z, runs[i], k=int(i.lstrip("kmeanswrd"))) for i in runs]
    q = pick(several)
    assert q.k is None and any("several numbers of clusters" in n for n in q.notes)


def test_runs_that_chose_k_themselves_leave_no_band(digits, runs):
    Z, _ = digits
    cands = [Candidate.from_space(i, Z, runs[i], k="auto" if i == "kmeans4" else 4) for i in runs]
    p = pick(cands)
    assert p.k is None and all(p.in_band.values()) and any("--k auto" in n for n in p.notes)


def test_a_runner_up_outside_the_band_gives_no_margin(digits, runs):
    Z, _ = digits
    p = pick(_cands(Z, runs, ["kmeans10", "kmeans30", "ward30", "kmeans4"]), k=10)
    assert p.id == "kmeans10" and p.margin is None and not p.low and p.confidence == 1.0
    assert any("outside" in n for n in p.notes) and p.to_dict()["margin"] is None
    one = pick(_cands(Z, runs, ["kmeans10"]))
    assert one.id == "kmeans10" and one.runner_up is None and any("nothing to choose" in n for n in one.notes)


def test_few_runs_use_the_silhouette_alone(digits, runs):
    Z, _ = digits
    ids = ["kmeans10", "ward10", "kmeans16"][: MIN_CONSENSUS_RUNS - 1]
    p = pick(_cands(Z, runs, ids), k=10)
    assert p.criterion == "silhouette_umap_all" and p.consensus is None
    assert p.id == max(("kmeans10", "ward10"), key=lambda i: p.silhouette[i])


def test_confidence_is_high_for_a_clear_pick_and_low_for_a_near_tie(digits, runs):
    Z, _ = digits
    clear = pick(_cands(Z, runs, ["kmeans10", "kmeans4", "kmeans30", "ward30"]), k=25)
    assert clear.id in ("kmeans30", "ward30") and clear.confidence >= 0.9 and not clear.low and clear.margin > 2
    # The same KMeans with its 10 least certain rows moved to their second-nearest cluster: two partitions that
    # differ where the silhouette is near 0, so no resampling of the rows can tell them apart reliably.
    a = runs["kmeans10"]
    cent = np.stack([Z[a == c].mean(axis=0) for c in range(10)])
    dist = ((Z[:, None, :] - cent[None]) ** 2).sum(-1)
    dist[np.arange(len(a)), a] = np.inf
    moved = np.argsort(np.abs(silhouette_samples(Z, a)))[:10]
    b = a.copy()
    b[moved] = dist[moved].argmin(axis=1)
    near = {"a": a, "b": b, "kmeans4": runs["kmeans4"], "kmeans30": runs["kmeans30"]}
    tie = pick(_cands(Z, near, list(near)), k=10)
    assert {tie.id, tie.runner_up} == {"a", "b"} and tie.low and (tie.confidence < 0.9 or tie.margin < 2)
    # a second run with the very same partition is the pick's twin: it does not lower the confidence
    twin = pick([*_cands(Z, runs, ["kmeans10", "kmeans4", "kmeans30"]),
                 Candidate.from_space("copy", Z, runs["kmeans10"] + 100)], k=10)
    assert twin.id == "kmeans10" and twin.confidence == 1.0 and twin.runner_up != "copy"


def test_runs_over_other_rows_are_compared_on_the_rows_they_share(digits, runs):
    Z, _ = digits
    a = Candidate.from_space("a", Z, runs["kmeans10"])
    b = Candidate.from_space("b", Z[:900], runs["ward10"][:900])
    p = pick([a, b], resamples=5)
    assert p.rows == 900 and any("share only 900" in n for n in p.notes)
    far = Candidate.from_space("far", Z[:10], runs["ward10"][:10], rows=np.arange(5000, 5010))
    with pytest.raises(UserError, match="different images"):
        pick([a, far])
    with pytest.raises(UserError, match="no finished run"):
        pick([])
    with pytest.raises(UserError, match="repeated"):
        pick([a, a])


class _OnDevice:
    """Stands in for a CuPy array where there is none: the CUDA array interface, `.get()` to the host, indexing."""

    __cuda_array_interface__: dict = {}

    def __init__(self, a):
        self.a = np.asarray(a)

    def get(self):
        return self.a

    def __getitem__(self, i):
        return _OnDevice(self.a[np.asarray(i)])

    def __len__(self):
        return len(self.a)

    @property
    def shape(self):
        return self.a.shape


def test_a_candidate_from_device_arrays_is_scored_as_from_host_ones(digits, runs):
    """A GPU user's UMAP space and labels (CuPy) scored by the CPU twin: brought to the host, not refused."""
    Z, _ = digits
    cpu = resolve_backend("cpu")
    host = Candidate.from_space("a", Z, runs["kmeans10"], k=10, backend=cpu)
    dev = Candidate.from_space("a", _OnDevice(Z), _OnDevice(runs["kmeans10"]), k=10, backend=cpu)
    assert np.array_equal(dev.labels, host.labels) and np.array_equal(dev.rows, host.rows)
    np.testing.assert_array_equal(dev.silhouette, host.silhouette)
    assert dev.n_clusters == host.n_clusters == 10
