"""Paired uncertainty for metric changes: bootstrap intervals, permutation p-values, verdicts (SPEC §6).

Problems are paired — sample k of the base and of the tuned model answer the same problem —
so resampling is over problem indices, applied to both models at once, and the metric is
recomputed on the resampled set (pooled metrics included).

Resampling scheme (recorded so that anyone can reproduce an interval):
``numpy.random.default_rng(seed).integers(0, n, size=(n_resamples, n))``, one row per resample;
the interval is the percentile interval of the resampled relative changes
((1 - confidence)/2 and (1 + confidence)/2 quantiles, ``numpy.quantile`` default "linear" method).

"Recompute the metric on the resampled set" is meant literally: the resampled set is the
stack ``scores[idx]``, duplicates included, and the metric function is applied to it. For
inter-sample diversity this means a sample drawn twice contributes a correlation of 1 with
its copy (pairs are pairs of positions); that shrinks both models' diversity by about a
factor (1 - 1/n) in a resample and leaves the relative change unchanged to first order.

The named metrics are evaluated for all resamples at once from per-sample sufficient statistics,
exactly (up to float rounding) equal to recomputing the metric per resample:
intensity from per-sample sums of |w|; kurtosis and output-edge entropy from per-sample values
(and counts); diversity from the n x n correlation matrix C as (c'Cc - c.diag C)/(n(n-1)) with
c the multiplicities; information complexity from per-sample histogram counts — the histogram
range of a resample is [0, max of the chosen samples' maxima], so resamples are grouped by that
maximum and each group is binned once on its own exact range (few distinct maxima in practice,
at most n, 2n with a shared "pair" range). A callable metric is recomputed per resample (slow).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import metrics as M

__all__ = [
    "BootstrapResult",
    "Verdict",
    "paired_bootstrap",
    "verdict",
    "paired_permutation_test",
    "benjamini_hochberg",
    "complexity_sensitivity",
    "bootstrap_indices",
    "bootstrap_distribution",
]

log = logging.getLogger(__name__)

#: Metric names accepted by the paired tests; "complexity_pair" is information complexity on a
#: range shared by the pair (SPEC §5 range mode "pair"), recomputed per resample.
NAMED_METRICS = M.METRIC_NAMES + ("complexity_pair",)

_FUNCTION_NAMES: dict[Callable[..., float], str] = {
    M.activation_intensity: "intensity",
    M.information_complexity: "complexity",
    M.distribution_kurtosis: "kurtosis",
    M.inter_sample_diversity: "diversity",
    M.output_edge_entropy: "output_entropy",
}

_BLOCK_ELEMENTS = 1 << 22  # resamples are processed in blocks of about this many multiplicities

MetricArg = str | Callable[[Any, Any], float]


@dataclass(frozen=True)
class BootstrapResult:
    """Point estimates on the full paired set and the bootstrap interval of the relative change."""

    base: float
    tuned: float
    rel_change: float
    ci_low: float
    ci_high: float
    n: int
    n_resamples: int
    seed: int
    confidence: float
    metric: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    """pass / fail / inconclusive for one expected direction, with a one-line explanation."""

    status: str
    message: str
    expected: int
    min_effect: float
    min_samples: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- helpers

def bootstrap_indices(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """The resampled problem indices ``[n_resamples, n]`` used by :func:`paired_bootstrap`."""
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _resolve(metric: MetricArg) -> tuple[str | None, Callable[[Any, Any], float] | None, str]:
    """(fast-path name or None, callable or None, label)."""
    if isinstance(metric, str):
        if metric not in NAMED_METRICS:
            raise ValueError(f"unknown metric {metric!r}; use one of {', '.join(NAMED_METRICS)} "
                             "or pass a callable(scores, edge_mask) -> float")
        return metric, None, metric
    if callable(metric):
        name = _FUNCTION_NAMES.get(metric)
        if name is not None:
            return name, None, name
        return None, metric, getattr(metric, "__name__", "metric")
    raise TypeError(f"metric must be a name or a callable(scores, edge_mask) -> float, got {type(metric).__name__}")


def _paired_inputs(base_scores: Any, tuned_scores: Any, edge_mask: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mask = M.check_edge_mask(edge_mask)
    fb = M.edge_values(base_scores, mask, what="base_scores")
    ft = M.edge_values(tuned_scores, mask, what="tuned_scores")
    if fb.shape[0] != ft.shape[0]:
        raise ValueError(f"paired comparison needs the same samples for both models: base has {fb.shape[0]} "
                         f"samples, tuned has {ft.shape[0]}; pass both models' scores on the same problems, "
                         "in the same order (eapbench.selection.PairedSelection)")
    return fb, ft, mask


def _dense(flat: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = np.zeros((flat.shape[0],) + mask.shape)
    out[:, mask] = flat
    return out


def _point(name: str | None, fn: Callable | None, fb: np.ndarray, ft: np.ndarray,
           mask: np.ndarray, bins: int) -> tuple[float, float]:
    db, dt = _dense(fb, mask), _dense(ft, mask)
    if name == "complexity":
        return (M.information_complexity(db, mask, bins=bins), M.information_complexity(dt, mask, bins=bins))
    if name == "complexity_pair":
        rng = M.pair_value_range(db, dt, mask)
        return (M.information_complexity(db, mask, bins=bins, value_range=rng),
                M.information_complexity(dt, mask, bins=bins, value_range=rng))
    f = fn if fn is not None else {v: k for k, v in _FUNCTION_NAMES.items()}[name]
    return float(f(db, mask)), float(f(dt, mask))


class _Pool:
    """Per-sample sufficient statistics of a stack of real-edge vectors ``[m, |E|]``."""

    def __init__(self, flat: np.ndarray, mask: np.ndarray) -> None:
        self.flat = flat
        self.mask = mask
        self._counts: dict[tuple[float, int], np.ndarray] = {}

    @cached_property
    def abs(self) -> np.ndarray:
        return np.abs(self.flat)

    @cached_property
    def abs_sums(self) -> np.ndarray:
        return self.abs.sum(axis=1)

    @cached_property
    def maxima(self) -> np.ndarray:
        return self.abs.max(axis=1)

    @cached_property
    def kurtosis(self) -> np.ndarray:
        return M.sample_kurtosis(self.flat)

    @cached_property
    def corr(self) -> np.ndarray:
        z = M.standardized_rows(self.flat)
        return z @ z.T

    @cached_property
    def entropy_parts(self) -> tuple[np.ndarray, np.ndarray]:
        h, valid = M.output_entropy_terms(self.flat, self.mask)
        return h.sum(axis=1), valid.sum(axis=1).astype(np.float64)

    def counts(self, hi: float, bins: int) -> tuple[np.ndarray, np.ndarray]:
        """(eligible sample indices, their histogram counts on [0, hi]) — samples with max <= hi."""
        key = (hi, bins)
        if key not in self._counts:
            elig = np.nonzero(self.maxima <= hi)[0]
            self._counts[key] = (elig, M.bin_counts(self.abs[elig], 0.0, hi, bins).astype(np.float64))
        return self._counts[key]


def _chosen_max(maxima: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.where(c > 0, maxima[None, :], -np.inf).max(axis=1)


def _complexity_rows(pool: _Pool, c: np.ndarray, hi: np.ndarray, bins: int) -> np.ndarray:
    out = np.empty(c.shape[0])
    for u in np.unique(hi):
        rows = np.nonzero(hi == u)[0]
        elig, counts = pool.counts(float(u), bins)
        out[rows] = M.entropy_from_counts(c[np.ix_(rows, elig)] @ counts)
    return out


def _evaluate_one(name: str, pool: _Pool, c: np.ndarray) -> np.ndarray:
    """The metric for every row of multiplicities ``c [R, m]`` over ``pool``'s samples."""
    size = c.sum(axis=1)
    if name == "intensity":
        return (c @ pool.abs_sums) / (size * pool.flat.shape[1])
    if name == "kurtosis":
        return (c @ pool.kurtosis) / size
    if name == "output_entropy":
        s, k = pool.entropy_parts
        defined = c @ k
        if (defined == 0).any():
            raise ValueError(f"output-edge entropy is undefined in {int((defined == 0).sum())} resamples "
                             "(every chosen sample has only all-zero rows); too few usable samples")
        return (c @ s) / defined
    if name == "diversity":
        corr = pool.corr
        pair_sum = np.einsum("rk,rk->r", c @ corr, c) - c @ np.diag(corr)
        return 1.0 - pair_sum / (size * (size - 1))
    raise AssertionError(name)  # pragma: no cover


def _evaluate(name: str, bins: int, pool_b: _Pool, cb: np.ndarray,
              pool_t: _Pool, ct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if name in ("complexity", "complexity_pair"):
        hb, ht = _chosen_max(pool_b.maxima, cb), _chosen_max(pool_t.maxima, ct)
        if name == "complexity_pair":
            hb = ht = np.maximum(hb, ht)
        return _complexity_rows(pool_b, cb, hb, bins), _complexity_rows(pool_t, ct, ht, bins)
    return _evaluate_one(name, pool_b, cb), _evaluate_one(name, pool_t, ct)


def _multiplicities(idx: np.ndarray, n: int) -> np.ndarray:
    r = idx.shape[0]
    flat = (idx + (np.arange(r, dtype=idx.dtype) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=r * n).reshape(r, n).astype(np.float64)


def _blocks(total: int, width: int, progress: bool, desc: str):
    step = max(1, _BLOCK_ELEMENTS // max(width, 1))
    starts = range(0, total, step)
    for start in tqdm(starts, desc=desc, disable=not progress or len(starts) < 2, leave=False):
        yield start, min(start + step, total)


def _resampled_values(name: str | None, fn: Callable | None, label: str, fb: np.ndarray, ft: np.ndarray,
                      mask: np.ndarray, n_resamples: int, seed: int, bins: int,
                      progress: bool) -> tuple[np.ndarray, np.ndarray]:
    n = fb.shape[0]
    idx = bootstrap_indices(n, n_resamples, seed)
    vb, vt = np.empty(n_resamples), np.empty(n_resamples)
    if name is not None:
        pool_b, pool_t = _Pool(fb, mask), _Pool(ft, mask)
        for s, e in _blocks(n_resamples, n, progress, f"bootstrap {label}"):
            c = _multiplicities(idx[s:e], n)
            vb[s:e], vt[s:e] = _evaluate(name, bins, pool_b, c, pool_t, c)
    else:
        db, dt = _dense(fb, mask), _dense(ft, mask)
        for r in tqdm(range(n_resamples), desc=f"bootstrap {label}", disable=not progress, leave=False):
            vb[r], vt[r] = fn(db[idx[r]], mask), fn(dt[idx[r]], mask)
    return vb, vt


# --------------------------------------------------------------------------- public API

def bootstrap_distribution(metric: MetricArg, base_scores: Any, tuned_scores: Any, edge_mask: Any, *,
                           n_resamples: int = 9999, seed: int = 0, bins: int = M.DEFAULT_BINS,
                           progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The metric of each model on every resample, ``(base [n_resamples], tuned [n_resamples])``.

    Resample r is ``bootstrap_indices(n, n_resamples, seed)[r]``; this is what
    :func:`paired_bootstrap` summarises (useful for plots and for checking exactness).
    """
    n_resamples = _check_int(n_resamples, "n_resamples", 1)
    seed = _check_int(seed, "seed", 0)
    bins = _check_int(bins, "bins", 1)
    name, fn, label = _resolve(metric)
    fb, ft, mask = _paired_inputs(base_scores, tuned_scores, edge_mask)
    return _resampled_values(name, fn, label, fb, ft, mask, n_resamples, seed, bins, progress)



def paired_bootstrap(metric: MetricArg, base_scores: Any, tuned_scores: Any, edge_mask: Any, *,
                     n_resamples: int = 9999, seed: int = 0, confidence: float = 0.95,
                     bins: int = M.DEFAULT_BINS, progress: bool = True) -> BootstrapResult:
    """Paired bootstrap interval of the relative change (tuned - base) / |base| of a metric.

    ``metric`` is a name (``intensity``, ``complexity``, ``complexity_pair``, ``kurtosis``,
    ``diversity``, ``output_entropy``; vectorised and exact) or any ``callable(scores, edge_mask)
    -> float`` (recomputed on each resample, given float64 numpy arrays). ``bins`` applies to
    the complexity metrics. Deterministic: the same inputs and seed give bit-identical results.
    """
    n_resamples = _check_int(n_resamples, "n_resamples", 1)
    seed = _check_int(seed, "seed", 0)
    bins = _check_int(bins, "bins", 1)
    if not (isinstance(confidence, (float, int)) and 0 < confidence < 1):
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    name, fn, label = _resolve(metric)
    fb, ft, mask = _paired_inputs(base_scores, tuned_scores, edge_mask)
    n = fb.shape[0]
    t0 = time.perf_counter()
    base_val, tuned_val = _point(name, fn, fb, ft, mask, bins)
    rel = M.relative_change(base_val, tuned_val)
    vb, vt = _resampled_values(name, fn, label, fb, ft, mask, n_resamples, seed, bins, progress)
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = (vt - vb) / np.abs(vb)
    bad = ~np.isfinite(boot)
    if bad.any():
        raise ValueError(f"{label}: relative change is not finite in {int(bad.sum())} of {n_resamples} resamples "
                         f"(base metric 0 or undefined there, e.g. resample {int(np.argmax(bad))}); "
                         "the metric is degenerate on these samples — use more samples or another metric")
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(boot, [alpha, 1.0 - alpha])
    log.info("paired bootstrap %s: n=%d, %d resamples, seed %d, %.2fs", label, n, n_resamples, seed,
             time.perf_counter() - t0)
    return BootstrapResult(base=base_val, tuned=tuned_val, rel_change=rel, ci_low=float(lo), ci_high=float(hi),
                           n=n, n_resamples=n_resamples, seed=seed, confidence=float(confidence), metric=label)


def paired_permutation_test(metric: MetricArg, base_scores: Any, tuned_scores: Any, edge_mask: Any, *,
                            n_permutations: int = 9999, seed: int = 0, bins: int = M.DEFAULT_BINS,
                            progress: bool = True) -> float:
    """Two-sided p-value of "tuned and base are exchangeable within each problem".

    Each permutation swaps the two models' samples of each problem with probability 1/2
    (``default_rng(seed).integers(0, 2, (n_permutations, n))``), recomputes the metric for both
    permuted sets and compares |tuned - base| with the observed one:
    p = (1 + #{|T*| >= |T_obs|}) / (1 + n_permutations), with a 1e-9 relative tolerance for ties.
    """
    n_permutations = _check_int(n_permutations, "n_permutations", 1)
    seed = _check_int(seed, "seed", 0)
    bins = _check_int(bins, "bins", 1)
    name, fn, label = _resolve(metric)
    fb, ft, mask = _paired_inputs(base_scores, tuned_scores, edge_mask)
    n = fb.shape[0]
    base_val, tuned_val = _point(name, fn, fb, ft, mask, bins)
    observed = abs(tuned_val - base_val)
    swap = np.random.default_rng(seed).integers(0, 2, size=(n_permutations, n)).astype(bool)
    diff = np.empty(n_permutations)
    if name is not None:
        pool = _Pool(np.concatenate([fb, ft]), mask)
        for s, e in _blocks(n_permutations, 2 * n, progress, f"permutation {label}"):
            sw = swap[s:e].astype(np.float64)
            cb = np.hstack([1.0 - sw, sw])
            ct = np.hstack([sw, 1.0 - sw])
            vb, vt = _evaluate(name, bins, pool, cb, pool, ct)
            diff[s:e] = vt - vb
    else:
        db, dt = _dense(fb, mask), _dense(ft, mask)
        for r in tqdm(range(n_permutations), desc=f"permutation {label}", disable=not progress, leave=False):
            sw = swap[r][:, None, None]
            diff[r] = fn(np.where(sw, db, dt), mask) - fn(np.where(sw, dt, db), mask)
    if not np.isfinite(diff).all():
        raise ValueError(f"{label}: the metric is not finite in {int((~np.isfinite(diff)).sum())} permutations")
    extreme = np.abs(diff) >= observed * (1.0 - 1e-9)
    return float((1 + extreme.sum()) / (1 + n_permutations))


def verdict(result: BootstrapResult, expected: int, *, min_effect: float = 0.0, min_samples: int = 10,
            p_value: float | None = None) -> Verdict:
    """Decide a claim from a bootstrap interval of the relative change (SPEC §6).

    With threshold t = expected * min_effect: ``pass`` when the interval lies entirely on the
    expected side of t, ``fail`` when entirely on the other side, ``inconclusive`` otherwise or
    when fewer than ``min_samples`` samples back it. ``p_value`` (e.g. BH-adjusted) is only reported.
    """
    if isinstance(expected, bool) or expected not in (1, -1):
        raise ValueError(f"expected must be +1 (increase) or -1 (decrease), got {expected!r}")
    if not (np.isfinite(min_effect) and min_effect >= 0):
        raise ValueError(f"min_effect must be a finite relative change >= 0 (e.g. 0.05 for 5%), got {min_effect!r}")
    min_samples = _check_int(min_samples, "min_samples", 1)
    label = result.metric or "metric"
    line = f"{label} {result.rel_change:+.1%} [{result.ci_low:+.1%}, {result.ci_high:+.1%}], n={result.n}"
    if p_value is not None:
        line += f", p={p_value:.3g}"
    thr = expected * float(min_effect)
    thr_text = "0" if min_effect == 0 else f"{thr:+.1%}"
    want = "increase" if expected > 0 else "decrease"
    good, bad = ("above", "below") if expected > 0 else ("below", "above")
    if result.n < min_samples:
        status, why = "inconclusive", f"only {result.n} samples, fewer than the {min_samples} required"
    elif (result.ci_low > thr) if expected > 0 else (result.ci_high < thr):
        status, why = "pass", f"interval entirely {good} {thr_text}"
    elif (result.ci_high < thr) if expected > 0 else (result.ci_low > thr):
        status, why = "fail", f"interval entirely {bad} {thr_text}"
    else:
        status, why = "inconclusive", f"interval contains {thr_text}"
    return Verdict(status=status, message=f"{line}: {status} (expected {want}; {why})",
                   expected=int(expected), min_effect=float(min_effect), min_samples=min_samples)


def benjamini_hochberg(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q-values), same shape as the input."""
    p = np.asarray(pvalues, dtype=np.float64)
    flat = p.ravel()
    if flat.size == 0:
        return p.copy()
    if not np.isfinite(flat).all() or (flat < 0).any() or (flat > 1).any():
        bad = np.nonzero(~(np.isfinite(flat) & (flat >= 0) & (flat <= 1)))[0]
        raise ValueError(f"p-values must lie in [0, 1]; {bad.size} do not (first at index {int(bad[0])}: "
                         f"{flat[bad[0]]!r})")
    m = flat.size
    order = np.argsort(flat, kind="stable")
    scaled = flat[order] * (m / np.arange(1, m + 1))  # m/i >= 1 exactly, so q >= p even after rounding
    q = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(q, 1.0)
    return out.reshape(p.shape)


def complexity_sensitivity(base_scores: Any, tuned_scores: Any, edge_mask: Any,
                           bins: Sequence[int] = (50, 100, 200), *, n_resamples: int = 9999,
                           seed: int = 0, confidence: float = 0.95, progress: bool = False) -> pd.DataFrame:
    """Information complexity for each bin count and both range modes ("model", "pair").

    One row per (bins, range): base, tuned, rel_change and, when ``n_resamples > 0``, the paired
    bootstrap interval (ci_low, ci_high) with the same seed for every row.
    """
    rows = []
    for b in bins:
        b = _check_int(b, "bins", 1)
        for mode, name in (("model", "complexity"), ("pair", "complexity_pair")):
            if n_resamples:
                r = paired_bootstrap(name, base_scores, tuned_scores, edge_mask, n_resamples=n_resamples,
                                     seed=seed, confidence=confidence, bins=b, progress=progress)
                rows.append(dict(bins=b, range=mode, base=r.base, tuned=r.tuned, rel_change=r.rel_change,
                                 ci_low=r.ci_low, ci_high=r.ci_high, n=r.n, n_resamples=n_resamples, seed=seed))
            else:
                fb, ft, mask = _paired_inputs(base_scores, tuned_scores, edge_mask)
                vb, vt = _point(name, None, fb, ft, mask, b)
                rows.append(dict(bins=b, range=mode, base=vb, tuned=vt, rel_change=M.relative_change(vb, vt),
                                 n=fb.shape[0]))
    return pd.DataFrame(rows)
