"""Top-k edge-set stability (eapbench.analysis.stability) against a direct set computation, with property tests."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from eapbench.analysis.stability import StabilityResult, jaccard, k_for, top_k_sets, topk_stability
from eapbench.analysis.stats import bootstrap_indices

# integer-valued scores keep every sum exact, so rankings cannot flip on rounding
int_scores = st.integers(2, 6).flatmap(lambda n: st.integers(3, 30).flatmap(
    lambda e: arrays(np.float64, (n, e), elements=st.integers(-50, 50).map(float))))


def _direct(x: np.ndarray, fraction: float, n_resamples: int, seed: int, absolute: bool = True):
    """Python sets and sorted(): the full-sample top-k, each resample's top-k and their Jaccards."""
    n, e = x.shape
    k = max(1, int(np.floor(fraction * e + 1e-9)))

    def top(rows) -> set[int]:
        total = [sum(x[r, j] for r in rows) for j in range(e)]
        key = [abs(t) if absolute else t for t in total]
        return set(sorted(range(e), key=lambda j: (-key[j], j))[:k])

    full = top(range(n))
    sets = [top(row) for row in bootstrap_indices(n, n_resamples, seed)]
    vs_full = [len(s & full) / len(s | full) for s in sets]
    pairs = [len(a & b) / len(a | b) for a, b in itertools.combinations(sets, 2)]
    return k, vs_full, float(np.mean(pairs))


@settings(max_examples=40, deadline=None)
@given(x=int_scores, fraction=st.sampled_from([0.05, 0.2, 0.5, 1.0]), seed=st.integers(0, 1000),
       absolute=st.booleans())
def test_matches_direct_set_computation(x, fraction, seed, absolute):
    r = topk_stability(x, (fraction,), n_resamples=12, seed=seed, absolute=absolute, progress=False)
    k, vs_full, pair = _direct(x, fraction, 12, seed, absolute)
    assert r.ks == (k,)
    assert r.jaccard_mean[0] == pytest.approx(np.mean(vs_full), abs=1e-12)
    lo, hi = np.quantile(vs_full, [0.025, 0.975])
    assert (r.jaccard_low[0], r.jaccard_high[0]) == pytest.approx((lo, hi), abs=1e-12)
    assert r.pairwise_mean[0] == pytest.approx(pair, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(x=int_scores, seed=st.integers(0, 1000))
def test_jaccards_lie_in_unit_interval(x, seed):
    r = topk_stability(x, (0.1, 0.5, 1.0), n_resamples=10, seed=seed, progress=False)
    for values in (r.jaccard_mean, r.jaccard_low, r.jaccard_high, r.pairwise_mean):
        assert all(0.0 <= v <= 1.0 + 1e-12 for v in values)
    assert r.jaccard_mean[-1] == 1.0  # k = all edges: every set is the whole graph
    assert all(lo <= m <= hi + 1e-12 for lo, m, hi in zip(r.jaccard_low, r.jaccard_mean, r.jaccard_high))


@settings(max_examples=30, deadline=None)
@given(row=arrays(np.float64, st.integers(2, 40), elements=st.integers(-100, 100).map(float)),
       n=st.integers(1, 8), seed=st.integers(0, 100))
def test_identical_samples_are_perfectly_stable(row, n, seed):
    r = topk_stability(np.tile(row, (n, 1)), (0.05, 0.25, 0.5), n_resamples=8, seed=seed, progress=False)
    assert r.jaccard_mean == r.jaccard_low == r.jaccard_high == r.pairwise_mean == (1.0, 1.0, 1.0)


@settings(max_examples=20, deadline=None)
@given(x=int_scores, seed=st.integers(0, 1000))
def test_deterministic_for_a_seed(x, seed):
    a = topk_stability(x, n_resamples=9, seed=seed, progress=False)
    b = topk_stability(x.copy(), n_resamples=9, seed=seed, progress=False)
    assert a == b


def test_real_valued_scores_and_inputs():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 400)) + np.linspace(3, 0, 400)  # a clear ranking at the top, noise below
    r = topk_stability(torch.from_numpy(x).float(), n_resamples=300, seed=1, progress=False)
    assert isinstance(r, StabilityResult) and r.ks == (4, 20, 40) and r.n_samples == 30 and r.n_edges == 400
    d = r.to_dict()
    assert d["jaccard_mean"] == r.jaccard_mean and d["per_k"][1]["k"] == 20 and d["per_k"][1]["percent"] == 5
    assert 0 < r.jaccard_mean[0] <= 1 and r.jaccard_low[0] <= r.jaccard_mean[0] <= r.jaccard_high[0]
    noisy = topk_stability(rng.normal(size=(30, 400)), n_resamples=300, seed=1, progress=False)
    assert noisy.jaccard_mean[1] < r.jaccard_mean[1]  # pure noise is less stable than a ranked signal

    class Scores:  # EdgeScores-like
        def edge_vectors(self):
            return torch.from_numpy(x)
    assert topk_stability(Scores(), n_resamples=300, seed=1, progress=False).jaccard_mean == pytest.approx(
        topk_stability(x, n_resamples=300, seed=1, progress=False).jaccard_mean)


def test_helpers_and_errors():
    assert [k_for(f, 3221) for f in (0.01, 0.05, 0.1)] == [32, 161, 322] and k_for(0.001, 10) == 1
    sets = top_k_sets(np.array([[1.0, -3.0, 3.0, 0.5]]), 2)
    assert sets.tolist() == [[False, True, True, False]]
    assert top_k_sets(np.array([[1.0, -3.0, 3.0, 0.5]]), 2, absolute=False).tolist() == [[True, False, True, False]]
    assert jaccard(np.array([True, False]), np.array([False, False])) == 0.0
    with pytest.raises(ValueError, match="n_samples, n_edges"):
        topk_stability(np.zeros(5), progress=False)
    with pytest.raises(ValueError, match="fractions"):
        topk_stability(np.zeros((3, 5)), (0.0,), progress=False)
    with pytest.raises(ValueError, match="n_resamples"):
        topk_stability(np.zeros((3, 5)), n_resamples=1, progress=False)
    with pytest.raises(ValueError, match="NaN"):
        topk_stability(np.full((3, 5), np.nan), progress=False)
