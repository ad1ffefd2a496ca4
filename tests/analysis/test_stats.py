"""eapbench.analysis.stats: the vectorised paired bootstrap against a naive loop, verdicts, permutation, BH (SPEC §6)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eapbench.analysis import metrics as M
from eapbench.analysis import stats as S
from edge_samples import qkv_mask

MASK = qkv_mask(6)  # 163 real edges
NAMED = ("intensity", "complexity", "complexity_pair", "kurtosis", "diversity", "output_entropy")


def model(rng: np.random.Generator, profile: np.ndarray, difficulty: np.ndarray, mask: np.ndarray, *,
          scale: float = 1.0, df: float = 4.0, ratio: float = 1.0) -> np.ndarray:
    """Scores of one model: a shared edge profile plus Student-t noise, scaled per problem."""
    noise = rng.standard_t(df, size=(difficulty.size,) + mask.shape)
    return np.where(mask, 1e-3 * difficulty[:, None, None] * scale * (profile + ratio * noise), 0.0)


def synthetic_pair(seed: int, n: int = 30, mask: np.ndarray = MASK, base: dict | None = None,
                   tuned: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A paired (base, tuned) sample: same problems (difficulty), same family profile."""
    rng = np.random.default_rng(seed)
    profile = rng.standard_t(4, size=mask.shape)
    difficulty = rng.uniform(0.5, 2.0, size=n)
    return (model(rng, profile, difficulty, mask, **(base or {})),
            model(rng, profile, difficulty, mask, **(tuned or {})))


def naive_metric(name: str, scores: np.ndarray, tuned_for_range: np.ndarray | None = None, bins: int = 100):
    if name == "complexity_pair":
        return M.information_complexity(scores, MASK, bins=bins,
                                        value_range=M.pair_value_range(scores, tuned_for_range, MASK))
    if name == "complexity":
        return M.information_complexity(scores, MASK, bins=bins)
    return {"intensity": M.activation_intensity, "kurtosis": M.distribution_kurtosis,
            "diversity": M.inter_sample_diversity, "output_entropy": M.output_edge_entropy}[name](scores, MASK)


# --------------------------------------------------------------------------- exactness

@pytest.mark.parametrize("name", NAMED)
def test_vectorised_bootstrap_equals_naive_loop(name):
    base, tuned = synthetic_pair(1, n=12, tuned=dict(scale=1.2, df=6.0))
    idx = np.random.default_rng(5).integers(0, 12, size=(60, 12))
    np.testing.assert_array_equal(S.bootstrap_indices(12, 60, 5), idx)
    vb, vt = S.bootstrap_distribution(name, base, tuned, MASK, n_resamples=60, seed=5, bins=50, progress=False)
    nb = np.array([naive_metric(name, base[i], tuned[i], bins=50) for i in idx])
    nt = np.array([naive_metric(name, tuned[i], base[i], bins=50) for i in idx])
    if name.startswith("complexity"):
        assert len(np.unique([np.abs(base[i][:, MASK]).max() for i in idx])) > 1  # several histogram ranges
        np.testing.assert_array_equal(vb, nb)
        np.testing.assert_array_equal(vt, nt)
    else:
        np.testing.assert_allclose(vb, nb, rtol=1e-12)
        np.testing.assert_allclose(vt, nt, rtol=1e-12)
    rel = (nt - nb) / np.abs(nb)
    res = S.paired_bootstrap(name, base, tuned, MASK, n_resamples=60, seed=5, bins=50, progress=False)
    np.testing.assert_allclose([res.ci_low, res.ci_high], np.quantile(rel, [0.025, 0.975]), rtol=1e-10)
    assert res.base == pytest.approx(naive_metric(name, base, tuned, bins=50), rel=1e-12)
    assert res.tuned == pytest.approx(naive_metric(name, tuned, base, bins=50), rel=1e-12)


def test_complexity_bootstrap_with_many_distinct_maxima():
    # every sample's maximum is close: resample maxima spread over many samples
    rng = np.random.default_rng(2)
    base = np.where(MASK, rng.laplace(size=(15,) + MASK.shape), 0.0)
    base[:, 0, -1] = 50.0 + np.arange(15) * 1e-3  # each sample's max, all distinct
    tuned = base * rng.uniform(0.9, 1.1, size=base.shape)
    idx = S.bootstrap_indices(15, 400, 0)
    assert len({base[i][:, 0, -1].max() for i in idx}) >= 5
    vb, vt = S.bootstrap_distribution("complexity", base, tuned, MASK, n_resamples=400, seed=0, progress=False)
    np.testing.assert_array_equal(vb, [M.information_complexity(base[i], MASK) for i in idx])
    np.testing.assert_array_equal(vt, [M.information_complexity(tuned[i], MASK) for i in idx])


def test_callable_metric_uses_the_same_resamples():
    base, tuned = synthetic_pair(3, n=10, tuned=dict(scale=1.1))

    def custom(scores, mask):  # not a registered metric: recomputed per resample
        return float(np.median(np.abs(scores[:, mask])))

    vb, vt = S.bootstrap_distribution(custom, base, tuned, MASK, n_resamples=30, seed=4, progress=False)
    idx = S.bootstrap_indices(10, 30, 4)
    np.testing.assert_array_equal(vb, [custom(base[i], MASK) for i in idx])
    fast = S.paired_bootstrap("intensity", base, tuned, MASK, n_resamples=30, seed=4, progress=False)
    slow = S.paired_bootstrap(lambda s, m: M.activation_intensity(s, m), base, tuned, MASK,
                              n_resamples=30, seed=4, progress=False)
    assert slow.ci_low == pytest.approx(fast.ci_low, rel=1e-10)
    assert slow.ci_high == pytest.approx(fast.ci_high, rel=1e-10)
    assert slow.metric == "<lambda>" and fast.metric == "intensity"
    assert S.paired_bootstrap(M.activation_intensity, base, tuned, MASK, n_resamples=30, seed=4,
                              progress=False) == fast


@pytest.mark.parametrize("name", NAMED)
def test_vectorised_permutation_equals_naive_loop(name):
    base, tuned = synthetic_pair(4, n=10, tuned=dict(scale=1.05, ratio=1.2))
    got = S.paired_permutation_test(name, base, tuned, MASK, n_permutations=80, seed=9, bins=50, progress=False)
    swap = np.random.default_rng(9).integers(0, 2, size=(80, 10)).astype(bool)
    observed = abs(naive_metric(name, tuned, base, bins=50) - naive_metric(name, base, tuned, bins=50))
    hits = 0
    for sw in swap:
        pb = np.where(sw[:, None, None], tuned, base)
        pt = np.where(sw[:, None, None], base, tuned)
        d = naive_metric(name, pt, pb, bins=50) - naive_metric(name, pb, pt, bins=50)
        hits += abs(d) >= observed * (1 - 1e-9)
    assert got == (1 + hits) / 81


def test_bootstrap_is_deterministic():
    base, tuned = synthetic_pair(0, n=25, tuned=dict(scale=1.1))
    for name in NAMED:
        a = S.paired_bootstrap(name, base, tuned, MASK, n_resamples=500, seed=11, progress=False)
        b = S.paired_bootstrap(name, base.copy(), tuned.copy(), MASK, n_resamples=500, seed=11, progress=False)
        assert a == b and a.to_dict() == b.to_dict()  # bit-identical
        c = S.paired_bootstrap(name, base, tuned, MASK, n_resamples=500, seed=12, progress=False)
        assert (c.ci_low, c.ci_high) != (a.ci_low, a.ci_high)
    t = S.paired_bootstrap("intensity", torch.from_numpy(base), torch.from_numpy(tuned), torch.from_numpy(MASK),
                           n_resamples=500, seed=11, progress=False)
    assert t == S.paired_bootstrap("intensity", base, tuned, MASK, n_resamples=500, seed=11, progress=False)


def test_result_records_its_provenance():
    base, tuned = synthetic_pair(0, n=20, tuned=dict(scale=1.2))
    r = S.paired_bootstrap("intensity", base, tuned, MASK, n_resamples=200, seed=3, confidence=0.9, progress=False)
    d = r.to_dict()
    assert d == dict(base=r.base, tuned=r.tuned, rel_change=r.rel_change, ci_low=r.ci_low, ci_high=r.ci_high,
                     n=20, n_resamples=200, seed=3, confidence=0.9, metric="intensity")
    assert r.rel_change == M.relative_change(r.base, r.tuned)
    assert r.ci_low < r.rel_change < r.ci_high


# --------------------------------------------------------------------------- verdicts on synthetic pairs

SHIFTS = {  # metric: (expected direction, base generator, tuned generator)
    "intensity": (+1, {}, dict(scale=1.3)),
    "complexity": (+1, dict(df=2.5), dict(df=50.0)),
    "complexity_pair": (+1, {}, dict(scale=1.3)),
    "kurtosis": (-1, dict(df=5.0, ratio=2.0), dict(df=50.0, ratio=2.0)),
    "diversity": (+1, {}, dict(ratio=1.5)),
    "output_entropy": (+1, dict(df=2.5, ratio=2.0), dict(df=50.0, ratio=2.0)),
}


@pytest.mark.parametrize("name", NAMED)
def test_clear_shift_passes_and_reverse_fails(name):
    expected, base_kw, tuned_kw = SHIFTS[name]
    for seed in range(3):
        base, tuned = synthetic_pair(seed, n=60, base=base_kw, tuned=tuned_kw)
        r = S.paired_bootstrap(name, base, tuned, MASK, n_resamples=999, seed=seed, progress=False)
        assert S.verdict(r, expected).status == "pass", S.verdict(r, expected).message
        assert S.verdict(r, -expected).status == "fail", S.verdict(r, -expected).message
        swapped = S.paired_bootstrap(name, tuned, base, MASK, n_resamples=999, seed=seed, progress=False)
        assert S.verdict(swapped, expected).status == "fail"


@pytest.mark.parametrize("name", NAMED)
def test_null_is_inconclusive_in_at_least_90_percent_of_seeds(name):
    seeds = 100
    inconclusive = 0
    for seed in range(seeds):
        base, tuned = synthetic_pair(seed, n=30)
        r = S.paired_bootstrap(name, base, tuned, MASK, n_resamples=499, seed=seed, progress=False)
        inconclusive += S.verdict(r, +1).status == "inconclusive"
    assert inconclusive >= 0.9 * seeds, f"{name}: only {inconclusive}/{seeds} null pairs inconclusive"


def _result(rel: float, lo: float, hi: float, n: int = 100, metric: str = "intensity") -> S.BootstrapResult:
    return S.BootstrapResult(base=1.0, tuned=1.0 + rel, rel_change=rel, ci_low=lo, ci_high=hi, n=n,
                             n_resamples=9999, seed=0, confidence=0.95, metric=metric)


def test_verdict_rules_and_message():
    v = S.verdict(_result(0.191, 0.123, 0.258), +1)
    assert v.status == "pass"
    assert v.message.startswith("intensity +19.1% [+12.3%, +25.8%], n=100: pass")
    assert "\n" not in v.message
    assert S.verdict(_result(0.191, 0.123, 0.258), -1).status == "fail"
    assert S.verdict(_result(-0.2, -0.3, -0.1), -1).status == "pass"
    assert S.verdict(_result(0.05, -0.01, 0.1), +1).status == "inconclusive"
    assert S.verdict(_result(0.05, -0.01, 0.1), -1).status == "inconclusive"
    few = S.verdict(_result(0.5, 0.4, 0.6, n=9), +1)
    assert few.status == "inconclusive" and "only 9 samples" in few.message
    assert S.verdict(_result(0.5, 0.4, 0.6, n=9), +1, min_samples=5).status == "pass"
    # minimum effect: the threshold moves to +/- min_effect
    assert S.verdict(_result(0.1, 0.06, 0.14), +1, min_effect=0.05).status == "pass"
    assert S.verdict(_result(0.06, 0.04, 0.08), +1, min_effect=0.05).status == "inconclusive"
    small = S.verdict(_result(0.02, 0.01, 0.03), +1, min_effect=0.05)
    assert small.status == "fail" and "below +5.0%" in small.message
    assert S.verdict(_result(-0.1, -0.14, -0.06), -1, min_effect=0.05).status == "pass"
    assert S.verdict(_result(-0.02, -0.03, -0.01), -1, min_effect=0.05).status == "fail"
    assert "p=0.0032" in S.verdict(_result(0.1, 0.05, 0.15), +1, p_value=0.0032).message
    assert S.verdict(_result(0.1, 0.05, 0.15), 1).to_dict()["status"] == "pass"


def test_verdict_rejects_bad_arguments():
    r = _result(0.1, 0.05, 0.15)
    for bad in (0, 2, True):
        with pytest.raises(ValueError, match=r"expected must be \+1"):
            S.verdict(r, bad)
    with pytest.raises(ValueError, match="min_effect"):
        S.verdict(r, 1, min_effect=-0.1)
    with pytest.raises(ValueError, match="min_samples"):
        S.verdict(r, 1, min_samples=0)


# --------------------------------------------------------------------------- permutation test and BH

def test_permutation_p_values_under_null_and_shift():
    ps = []
    for seed in range(60):
        base, tuned = synthetic_pair(seed, n=20)
        ps.append(S.paired_permutation_test("intensity", base, tuned, MASK, n_permutations=199, seed=seed,
                                            progress=False))
    ps = np.array(ps)
    assert ((ps > 0) & (ps <= 1)).all()
    assert (ps < 0.05).mean() <= 0.15  # nominal 5%
    assert scipy.stats.kstest(ps, "uniform").pvalue > 0.001
    base, tuned = synthetic_pair(0, n=30, tuned=dict(scale=1.3))
    assert S.paired_permutation_test("intensity", base, tuned, MASK, n_permutations=199, seed=0,
                                     progress=False) == 1 / 200


def bh_direct(p: np.ndarray) -> np.ndarray:
    m = len(p)
    return np.array([min(1.0, min(p[j] * m / (np.sum(p <= p[j])) for j in range(m) if p[j] >= p[i]))
                     for i in range(m)])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=1, max_size=40))
def test_benjamini_hochberg_matches_scipy_and_definition(pvalues):
    p = np.array(pvalues)
    q = S.benjamini_hochberg(p)
    np.testing.assert_allclose(q, scipy.stats.false_discovery_control(p, method="bh"), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(q, bh_direct(p), rtol=1e-12, atol=1e-15)
    assert (q >= p).all() and (q <= 1).all()


def test_benjamini_hochberg_shapes_and_errors():
    grid = np.array([[0.01, 0.04], [0.03, 0.5]])
    q = S.benjamini_hochberg(grid)
    assert q.shape == (2, 2)
    np.testing.assert_allclose(q.ravel(), scipy.stats.false_discovery_control(grid.ravel()))
    assert S.benjamini_hochberg([]).size == 0
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        S.benjamini_hochberg([0.1, float("nan")])
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        S.benjamini_hochberg([0.1, 1.2])


# --------------------------------------------------------------------------- sensitivity report

def test_complexity_sensitivity_table():
    base, tuned = synthetic_pair(0, n=15, tuned=dict(scale=1.3, df=8.0))
    table = S.complexity_sensitivity(base, tuned, MASK, n_resamples=200, seed=1)
    assert isinstance(table, pd.DataFrame) and len(table) == 6
    assert list(table[["bins", "range"]].itertuples(index=False, name=None)) == [
        (50, "model"), (50, "pair"), (100, "model"), (100, "pair"), (200, "model"), (200, "pair")]
    shared = M.pair_value_range(base, tuned, MASK)
    for row in table.itertuples():
        rng = None if row.range == "model" else shared
        assert row.base == M.information_complexity(base, MASK, bins=row.bins, value_range=rng)
        assert row.tuned == M.information_complexity(tuned, MASK, bins=row.bins, value_range=rng)
        assert row.ci_low <= row.ci_high
        r = S.paired_bootstrap("complexity" if row.range == "model" else "complexity_pair", base, tuned, MASK,
                               n_resamples=200, seed=1, bins=row.bins, progress=False)
        assert (row.ci_low, row.ci_high) == (r.ci_low, r.ci_high)
    points = S.complexity_sensitivity(base, tuned, MASK, bins=(100,), n_resamples=0)
    assert len(points) == 2 and "ci_low" not in points
    np.testing.assert_array_equal(points["base"], table[table.bins == 100]["base"])


# --------------------------------------------------------------------------- bad input

def test_paired_inputs_are_checked():
    base, tuned = synthetic_pair(0, n=12)
    with pytest.raises(ValueError, match="base has 12 samples, tuned has 11"):
        S.paired_bootstrap("intensity", base, tuned[:11], MASK, n_resamples=10)
    with pytest.raises(ValueError, match="base has 12 samples, tuned has 11"):
        S.paired_permutation_test("intensity", base, tuned[:11], MASK, n_permutations=10)
    with pytest.raises(ValueError, match="no samples"):
        S.paired_bootstrap("intensity", base[:0], tuned[:0], MASK, n_resamples=10)
    with pytest.raises(ValueError, match="selects no edge"):
        S.paired_bootstrap("intensity", base, tuned, np.zeros_like(MASK), n_resamples=10)
    bad = tuned.copy()
    bad[3, 0, -1] = np.nan
    with pytest.raises(ValueError, match="tuned_scores contain 1 non-finite values .* first at sample 3"):
        S.paired_bootstrap("intensity", base, bad, MASK, n_resamples=10)
    with pytest.raises(ValueError, match="unknown metric 'entropy'"):
        S.paired_bootstrap("entropy", base, tuned, MASK, n_resamples=10)
    with pytest.raises(ValueError, match="confidence"):
        S.paired_bootstrap("intensity", base, tuned, MASK, confidence=95)
    with pytest.raises(ValueError, match="n_resamples"):
        S.paired_bootstrap("intensity", base, tuned, MASK, n_resamples=0)


def test_degenerate_base_is_reported():
    base, tuned = synthetic_pair(0, n=12)
    with pytest.raises(ValueError, match="base = 0"):
        S.paired_bootstrap("intensity", np.zeros_like(base), tuned, MASK, n_resamples=10)


# --------------------------------------------------------------------------- benchmark

@pytest.mark.perf
@pytest.mark.parametrize("name", NAMED)
def test_bootstrap_speed_paper_scale(benchmark, name):
    """9999 resamples x 100 samples x 4193 edges (L=32, the largest paper graph)."""
    mask = qkv_mask(32)
    base, tuned = synthetic_pair(0, n=100, mask=mask, tuned=dict(scale=1.1))
    result = benchmark.pedantic(S.paired_bootstrap, args=(name, base, tuned, mask),
                                kwargs=dict(n_resamples=9999, seed=0, progress=False), rounds=3, iterations=1)
    assert result.n_resamples == 9999 and result.ci_low <= result.ci_high


@pytest.mark.perf
@pytest.mark.parametrize("name", ("intensity", "complexity", "diversity"))
def test_permutation_speed_paper_scale(benchmark, name):
    mask = qkv_mask(32)
    base, tuned = synthetic_pair(0, n=100, mask=mask, tuned=dict(scale=1.1))
    p = benchmark.pedantic(S.paired_permutation_test, args=(name, base, tuned, mask),
                           kwargs=dict(n_permutations=9999, seed=0, progress=False), rounds=3, iterations=1)
    assert 0 < p <= 1
