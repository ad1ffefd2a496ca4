"""eapbench.analysis.metrics against direct, independent numpy/scipy computations (SPEC §5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eapbench.analysis import metrics as M
from edge_samples import heavy_scores, qkv_mask


MASK = qkv_mask(3)  # 7 sources, 13 destinations, 4*9 + 9 + 1 = 46 edges


@pytest.fixture(params=[("t", False), ("laplace", False), ("t", True)], ids=["student-t", "laplace", "t-garbage"])
def scores(request) -> np.ndarray:
    kind, garbage = request.param
    return heavy_scores(np.random.default_rng(7), 12, MASK, kind=kind, garbage=garbage)


def real(scores: np.ndarray) -> list[np.ndarray]:
    return [scores[k][MASK] for k in range(scores.shape[0])]


def test_qkv_mask_edge_counts():
    for layers, edges in ((28, 3221), (30, 3691), (32, 4193)):
        assert qkv_mask(layers).sum() == edges == 4 * layers**2 + 3 * layers + 1
    assert MASK.shape == (7, 13) and MASK.sum() == 46


# --------------------------------------------------------------------------- oracles

def test_intensity_matches_direct(scores):
    total = sum(float(np.sum(np.abs(w))) for w in real(scores))
    assert M.activation_intensity(scores, MASK) == pytest.approx(total / (len(scores) * MASK.sum()), rel=1e-12)


@pytest.mark.parametrize("bins", [50, 100, 200])
def test_complexity_matches_histogram(scores, bins):
    pooled = np.abs(np.concatenate(real(scores)))
    counts, _ = np.histogram(pooled, bins=bins, range=(0.0, pooled.max()))
    p = counts / counts.sum()
    expected = -np.sum(p * np.log(p + 1e-12))
    assert M.information_complexity(scores, MASK, bins=bins) == pytest.approx(expected, rel=1e-12)


def test_complexity_shared_range_matches_histogram(scores):
    tuned = scores * 1.7
    rng = M.pair_value_range(scores, tuned, MASK)
    hi = max(np.abs(np.concatenate(real(scores))).max(), np.abs(np.concatenate(real(tuned))).max())
    assert rng == (0.0, hi)
    pooled = np.abs(np.concatenate(real(scores)))
    counts, _ = np.histogram(pooled, bins=100, range=(0.0, hi))
    p = counts / counts.sum()
    assert M.information_complexity(scores, MASK, value_range=rng) == pytest.approx(
        -np.sum(p * np.log(p + 1e-12)), rel=1e-12)
    assert M.information_complexity(scores, MASK, value_range=hi) == M.information_complexity(
        scores, MASK, value_range=rng)


def test_kurtosis_matches_scipy(scores):
    expected = np.mean([scipy.stats.kurtosis(w, fisher=True, bias=True) for w in real(scores)])
    assert M.distribution_kurtosis(scores, MASK) == pytest.approx(expected, rel=1e-10)


def test_diversity_matches_corrcoef(scores):
    corr = np.corrcoef(np.stack(real(scores)))
    n = len(scores)
    pairs = [corr[i, j] for i in range(n) for j in range(i + 1, n)]
    assert M.inter_sample_diversity(scores, MASK) == pytest.approx(1 - np.mean(pairs), rel=1e-12)


def _entropy_oracle(scores: np.ndarray) -> tuple[float, np.ndarray]:
    values, per_node = [], [[] for _ in range(MASK.shape[0])]
    for k in range(scores.shape[0]):
        for u in range(MASK.shape[0]):
            row = np.abs(scores[k, u][MASK[u]])
            if row.size < 2 or row.sum() == 0:
                continue
            h = scipy.stats.entropy(row) / math.log(row.size)
            values.append(h)
            per_node[u].append(h)
    return float(np.mean(values)), np.array([np.mean(v) if v else np.nan for v in per_node])


def test_output_entropy_matches_loop(scores):
    scores = scores.copy()
    scores[0, 2][MASK[2]] = 0.0  # an all-zero row: left out
    mean, per_node = _entropy_oracle(scores)
    assert M.output_edge_entropy(scores, MASK) == pytest.approx(mean, rel=1e-12)
    got = M.output_edge_entropy_per_node(scores, MASK)
    assert got.shape == (MASK.shape[0],)
    np.testing.assert_allclose(got, per_node, rtol=1e-12)
    # the last source (m2) only feeds the logits: single outgoing edge, undefined
    assert MASK[-1].sum() == 1 and np.isnan(got[-1])


def test_relative_change():
    assert M.relative_change(2.0, 3.0) == 0.5
    assert M.relative_change(-2.0, -1.0) == 0.5
    assert M.relative_change(4.0, 3.0) == -0.25


def test_torch_input_matches_numpy(scores):
    t = torch.from_numpy(scores.astype(np.float32))
    tm = torch.from_numpy(MASK)
    s32 = scores.astype(np.float32)
    for f in (M.activation_intensity, M.information_complexity, M.distribution_kurtosis,
              M.inter_sample_diversity, M.output_edge_entropy):
        assert f(t, tm) == f(s32, MASK)


def test_non_edge_cells_are_ignored():
    rng = np.random.default_rng(3)
    clean = heavy_scores(rng, 6, MASK)
    dirty = np.where(MASK, clean, rng.normal(size=clean.shape) * 1e6)
    for f in (M.activation_intensity, M.information_complexity, M.distribution_kurtosis,
              M.inter_sample_diversity, M.output_edge_entropy):
        assert f(clean, MASK) == f(dirty, MASK)
    dirty[0, ~MASK] = np.nan  # NaN outside the graph is never read
    assert M.activation_intensity(dirty, MASK) == M.activation_intensity(clean, MASK)


def test_bin_counts_equals_numpy_histogram_on_edges():
    rng = np.random.default_rng(0)
    for hi, bins in ((1.0, 100), (0.3, 50), (3.7e-4, 200), (1e-3, 7)):
        edges = np.linspace(0, hi, bins + 1)
        vals = np.concatenate([rng.uniform(0, hi, 500), edges, np.nextafter(edges, 0).clip(0, hi),
                               np.nextafter(edges, hi).clip(0, hi)])
        vals = np.stack([vals, vals[::-1]])
        got = M.bin_counts(vals, 0.0, hi, bins)
        for row, g in zip(vals, got):
            np.testing.assert_array_equal(g, np.histogram(row, bins=bins, range=(0.0, hi))[0])
    zeros = np.zeros((1, 10))
    np.testing.assert_array_equal(M.bin_counts(zeros, 0, 0, 4)[0], np.histogram(zeros[0], bins=4, range=(0, 0))[0])


def test_all_zero_scores_have_zero_complexity():
    z = np.zeros((3,) + MASK.shape)
    assert M.information_complexity(z, MASK) == pytest.approx(0.0, abs=1e-11)
    assert M.activation_intensity(z, MASK) == 0.0


# --------------------------------------------------------------------------- properties

finite_scale = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False, allow_infinity=False)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), c=finite_scale, sign=st.sampled_from([1.0, -1.0]))
def test_intensity_scales_linearly(seed, c, sign):
    s = heavy_scores(np.random.default_rng(seed), 4, MASK)
    assert M.activation_intensity(sign * c * s, MASK) == pytest.approx(c * M.activation_intensity(s, MASK),
                                                                       rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(-40, 40), bins=st.integers(1, 300))
def test_complexity_invariant_to_power_of_two_scaling(seed, k, bins):
    s = heavy_scores(np.random.default_rng(seed), 4, MASK)
    assert M.information_complexity(s * 2.0**k, MASK, bins=bins) == M.information_complexity(s, MASK, bins=bins)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), c=finite_scale)
def test_complexity_invariant_to_scaling(seed, c):
    # continuous random values: a value within one ulp of a bin edge has probability ~1e-13
    s = heavy_scores(np.random.default_rng(seed), 4, MASK, kind="laplace")
    assert M.information_complexity(c * s, MASK) == pytest.approx(M.information_complexity(s, MASK), rel=1e-12)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_kurtosis_of_large_gaussian_is_near_zero(seed):
    mask = np.ones((100, 200), dtype=bool)
    g = np.random.default_rng(seed).normal(size=(4, 100, 200))  # 20000 edges: sd of the estimate ~0.017
    assert abs(M.distribution_kurtosis(g, mask)) < 0.15


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 8))
def test_identical_samples_have_zero_diversity(seed, n):
    one = heavy_scores(np.random.default_rng(seed), 1, MASK)
    assert M.inter_sample_diversity(np.repeat(one, n, axis=0), MASK) == pytest.approx(0.0, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(["t", "laplace"]))
def test_output_entropy_in_unit_interval(seed, kind):
    s = heavy_scores(np.random.default_rng(seed), 3, MASK, kind=kind)
    per_node = M.output_edge_entropy_per_node(s, MASK)
    defined = per_node[~np.isnan(per_node)]
    assert defined.size and (defined >= 0).all() and (defined <= 1 + 1e-12).all()
    assert 0 <= M.output_edge_entropy(s, MASK) <= 1 + 1e-12


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_output_entropy_is_one_for_uniform_rows(seed):
    rng = np.random.default_rng(seed)
    n = 3
    level = rng.uniform(0.1, 10, size=(n, MASK.shape[0], 1))
    signs = rng.choice([-1.0, 1.0], size=(n,) + MASK.shape)
    s = np.where(MASK, signs * level, 0.0)
    assert M.output_edge_entropy(s, MASK) == pytest.approx(1.0, abs=1e-12)
    per_node = M.output_edge_entropy_per_node(s, MASK)
    np.testing.assert_allclose(per_node[MASK.sum(axis=1) >= 2], 1.0, atol=1e-12)


# --------------------------------------------------------------------------- bad input

def test_empty_sample_set_is_rejected():
    with pytest.raises(ValueError, match="no samples"):
        M.activation_intensity(np.zeros((0,) + MASK.shape), MASK)


def test_mask_selecting_nothing_is_rejected():
    with pytest.raises(ValueError, match="selects no edge"):
        M.activation_intensity(np.ones((2,) + MASK.shape), np.zeros_like(MASK))


def test_mask_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="edge_mask has shape"):
        M.activation_intensity(np.ones((2, 3, 3)), MASK)


def test_scores_must_be_3d():
    with pytest.raises(ValueError, match=r"3-D \[n_samples, n_src, n_dst\]"):
        M.activation_intensity(np.ones(MASK.shape), MASK)


def test_non_finite_scores_are_reported_with_count_and_location():
    s = heavy_scores(np.random.default_rng(0), 5, MASK)
    src, dst = np.argwhere(MASK)[3]
    s[2, src, dst] = np.nan
    s[4, 0, -1] = np.inf
    s[4, 1, -1] = -np.inf
    with pytest.raises(ValueError) as err:
        M.distribution_kurtosis(s, MASK)
    msg = str(err.value)
    assert "3 non-finite values" in msg and "1 NaN, 2 inf" in msg and "samples [2, 4]" in msg
    assert f"first at sample 2, source {src}, destination {dst}" in msg


def test_constant_samples_are_rejected_where_undefined():
    s = heavy_scores(np.random.default_rng(0), 3, MASK)
    s[1][MASK] = 0.5
    with pytest.raises(ValueError, match=r"kurtosis is undefined .* samples \[1\]"):
        M.distribution_kurtosis(s, MASK)
    with pytest.raises(ValueError, match=r"correlation is undefined .* samples \[1\]"):
        M.inter_sample_diversity(s, MASK)
    with pytest.raises(ValueError, match="at least 2 samples"):
        M.inter_sample_diversity(s[:1], MASK)


def test_complexity_range_errors():
    s = heavy_scores(np.random.default_rng(0), 3, MASK)
    with pytest.raises(ValueError, match="outside the histogram range"):
        M.information_complexity(s, MASK, value_range=(0.0, 1e-9))
    with pytest.raises(ValueError, match="0 <= low <= high"):
        M.information_complexity(s, MASK, value_range=(1.0, 0.5))
    with pytest.raises(ValueError, match="bins must be a positive integer"):
        M.information_complexity(s, MASK, bins=0)


def test_relative_change_errors():
    with pytest.raises(ValueError, match="base = 0"):
        M.relative_change(0.0, 1.0)
    with pytest.raises(ValueError, match="finite"):
        M.relative_change(float("nan"), 1.0)
