"""Distribution statistics of EAP edge scores over a graph's real edges (SPEC §5).

Every metric takes per-sample scores ``[n, n_src, n_dst]`` (torch tensor or numpy array) and
the graph's boolean ``edge_mask [n_src, n_dst]``. Cells outside the mask are structural zeros:
they are never read, whatever they contain. Computation is in float64 numpy.

The paper published no metric code; these definitions are eapbench's own. With per-sample
real-edge vectors w_k (k = 1..n, |E| edges each):

- :func:`activation_intensity`: mean over k and e of |w_k,e|.
- :func:`information_complexity`: pool every |w_k,e|, histogram with ``bins`` equal-width
  bins over [0, max] (the model's own max, or a shared range), p_b = count_b / total,
  IC = -sum_b p_b ln(p_b + 1e-12). Binning is exactly ``numpy.histogram``'s.
- :func:`distribution_kurtosis`: mean over k of the Fisher (excess) kurtosis of the signed
  w_k, biased estimator (``scipy.stats.kurtosis`` defaults).
- :func:`inter_sample_diversity`: 1 - mean over k < k' of Pearson corr(w_k, w_k').
- :func:`output_edge_entropy`: per source u and sample k, p = |W_k[u, .]| / sum |W_k[u, .]| over
  u's real outgoing edges, H = -sum p ln p / ln(out-degree(u)) in [0, 1]; sources with a
  single outgoing edge and all-zero rows are left out; the mean over the remaining (u, k).
  :func:`output_edge_entropy_per_node` gives the per-source means for plots.
- :func:`relative_change`: (tuned - base) / |base|.

The lower-level pieces (:func:`edge_values`, :func:`bin_counts`, :func:`entropy_from_counts`,
:func:`sample_kurtosis`, :func:`standardized_rows`, :func:`output_entropy_terms`) are public so
that :mod:`eapbench.stats` can build exact vectorised bootstraps from per-sample statistics.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "activation_intensity",
    "information_complexity",
    "distribution_kurtosis",
    "inter_sample_diversity",
    "output_edge_entropy",
    "output_edge_entropy_per_node",
    "relative_change",
    "pair_value_range",
    "METRIC_NAMES",
]

#: Names accepted by :func:`eapbench.stats.paired_bootstrap` for the metrics above.
METRIC_NAMES = ("intensity", "complexity", "kurtosis", "diversity", "output_entropy")

ENTROPY_EPS = 1e-12  # the epsilon inside ln(p + eps) of information complexity (SPEC §5)
DEFAULT_BINS = 100


# --------------------------------------------------------------------------- input handling

def _to_numpy(x: Any, what: str) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch tensor, without importing torch
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        x = x.numpy()
    try:
        return np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise TypeError(f"{what}: expected a torch tensor or numpy array, got {type(x).__name__}") from exc


def check_edge_mask(edge_mask: Any, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """The edge mask as a bool numpy array, validated (2-D, selects at least one edge)."""
    mask = _to_numpy(edge_mask, "edge_mask")
    if mask.ndim != 2:
        raise ValueError(f"edge_mask must be 2-D [n_src, n_dst], got shape {tuple(mask.shape)}; "
                         "pass the graph's .edge_mask")
    if mask.dtype != bool:
        if not np.isin(mask, (0, 1)).all():
            raise ValueError(f"edge_mask must be boolean (or 0/1), got dtype {mask.dtype} with other values")
        mask = mask.astype(bool)
    if shape is not None and tuple(mask.shape) != tuple(shape):
        raise ValueError(f"edge_mask has shape {tuple(mask.shape)} but scores are [n, {shape[0]}, {shape[1]}]; "
                         "use the mask of the graph the scores were computed on")
    if not mask.any():
        raise ValueError("edge_mask selects no edge (all False); pass the graph's .edge_mask")
    return mask


def edge_values(scores: Any, edge_mask: Any, *, what: str = "scores") -> np.ndarray:
    """Validated real-edge scores as float64 ``[n, |E|]`` (edges in row-major mask order).

    Raises ``ValueError`` for a wrong shape, an empty sample set, a mask that selects no edge,
    or non-finite values at real edges (with their count and the first location).
    """
    arr = _to_numpy(scores, what)
    if arr.ndim != 3:
        raise ValueError(f"{what} must be 3-D [n_samples, n_src, n_dst], got shape {tuple(arr.shape)}; "
                         "for a single sample use scores[None]")
    if arr.shape[0] == 0:
        raise ValueError(f"{what} holds no samples (shape {tuple(arr.shape)}); "
                         "every metric needs at least one sample — check the paired selection counts")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise TypeError(f"{what} must be real-valued numbers, got dtype {arr.dtype}")
    mask = check_edge_mask(edge_mask, arr.shape[1:])
    flat = arr[:, mask].astype(np.float64, copy=False)
    bad = ~np.isfinite(flat)
    if bad.any():
        n_nan = int(np.isnan(flat).sum())
        n_inf = int(bad.sum()) - n_nan
        samples = np.unique(np.nonzero(bad)[0])
        k, e = (int(i) for i in np.argwhere(bad)[0])
        src, dst = (int(i) for i in np.argwhere(mask)[e])
        raise ValueError(
            f"{what} contain {int(bad.sum())} non-finite values at real edges ({n_nan} NaN, {n_inf} inf) "
            f"in {samples.size} of {arr.shape[0]} samples (e.g. samples {samples[:5].tolist()}); first at "
            f"sample {k}, source {src}, destination {dst}. Recompute those samples' scores (fp32 accumulation, "
            "no overflow) or drop them from both models of the pair")
    return flat


# --------------------------------------------------------------------------- building blocks

def bin_counts(values: np.ndarray, lo: float, hi: float, bins: int) -> np.ndarray:
    """Per-row histogram counts ``[m, bins]`` of a 2-D array over [lo, hi], equal-width bins.

    Bin assignment is identical to ``numpy.histogram(row, bins, range=(lo, hi))`` (including
    its edge corrections and the closed last bin, and its widening of an empty range
    lo == hi to [lo - 0.5, hi + 0.5]); values outside the range are an error here instead
    of being dropped.
    """
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))
    if bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins}")
    lo, hi = float(lo), float(hi)
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    outside = (values < lo) | (values > hi)
    if outside.any():
        raise ValueError(f"{int(outside.sum())} values lie outside the histogram range [{lo}, {hi}] "
                         f"(min {values.min()}, max {values.max()}); widen value_range to cover both models")
    edges = np.linspace(lo, hi, bins + 1, endpoint=True)
    idx = ((values - lo) / (hi - lo) * bins).astype(np.intp)
    idx[idx == bins] -= 1
    idx[values < edges[idx]] -= 1
    idx[(values >= edges[idx + 1]) & (idx != bins - 1)] += 1
    m = values.shape[0]
    offsets = (np.arange(m, dtype=np.intp) * bins)[:, None]
    return np.bincount((idx + offsets).ravel(), minlength=m * bins).reshape(m, bins)


def entropy_from_counts(counts: np.ndarray) -> np.ndarray:
    """-sum p ln(p + eps) along the last axis, p = counts / row total (the IC formula)."""
    counts = np.asarray(counts, dtype=np.float64)
    p = counts / counts.sum(axis=-1, keepdims=True)
    return -(p * np.log(p + ENTROPY_EPS)).sum(axis=-1)


def sample_kurtosis(flat: np.ndarray) -> np.ndarray:
    """Fisher kurtosis (biased, like ``scipy.stats.kurtosis``) of each row of ``[n, |E|]``."""
    d = flat - flat.mean(axis=1, keepdims=True)
    d2 = d * d
    m2 = d2.mean(axis=1)
    m4 = (d2 * d2).mean(axis=1)
    const = np.nonzero(m2 == 0)[0]
    if const.size:
        raise ValueError(f"kurtosis is undefined for samples whose real-edge scores are all equal: "
                         f"samples {const[:10].tolist()} ({const.size} in all); drop them from both models")
    return m4 / (m2 * m2) - 3.0


def standardized_rows(flat: np.ndarray) -> np.ndarray:
    """Rows centred and scaled to unit norm, so that ``Z @ Z.T`` is the Pearson correlation matrix."""
    d = flat - flat.mean(axis=1, keepdims=True)
    norm = np.sqrt((d * d).sum(axis=1))
    const = np.nonzero(norm == 0)[0]
    if const.size:
        raise ValueError(f"correlation is undefined for samples whose real-edge scores are all equal: "
                         f"samples {const[:10].tolist()} ({const.size} in all); drop them from both models")
    return d / norm[:, None]


def output_entropy_terms(flat: np.ndarray, edge_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalised output-edge entropy per (sample, source) and where it is defined.

    Returns ``(H [n, n_src], valid [n, n_src])``; H is 0 where not valid. A (k, u) is valid when
    source u has at least two real outgoing edges and sample k's row u is not all zeros.
    """
    n = flat.shape[0]
    mask = np.asarray(edge_mask, dtype=bool)
    dense = np.zeros((n,) + mask.shape)
    dense[:, mask] = np.abs(flat)
    degree = mask.sum(axis=1)
    total = dense.sum(axis=2)
    valid = (degree >= 2)[None, :] & (total > 0)
    p = dense / np.where(total > 0, total, 1.0)[:, :, None]
    plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    log_deg = np.log(np.where(degree >= 2, degree, 2)).astype(np.float64)
    h = np.where(valid, -plogp.sum(axis=2) / log_deg[None, :], 0.0)
    return h, valid


# --------------------------------------------------------------------------- the metrics

def activation_intensity(scores: Any, edge_mask: Any) -> float:
    """Mean absolute real-edge score over all samples and edges."""
    return float(np.abs(edge_values(scores, edge_mask)).mean())


def _check_range(value_range: Any) -> tuple[float, float]:
    if np.isscalar(value_range):
        lo, hi = 0.0, float(value_range)
    else:
        try:
            lo, hi = (float(v) for v in value_range)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"value_range must be None, a maximum, or (low, high); got {value_range!r}") from exc
    if not (np.isfinite(lo) and np.isfinite(hi) and 0 <= lo <= hi):
        raise ValueError(f"value_range must satisfy 0 <= low <= high (finite), got ({lo}, {hi})")
    return lo, hi


def information_complexity(scores: Any, edge_mask: Any, bins: int = DEFAULT_BINS,
                           value_range: Any = None) -> float:
    """Shannon entropy (nats) of the pooled |score| histogram.

    ``value_range=None`` bins over [0, max |score|] of these scores (range mode "model");
    pass ``pair_value_range(base, tuned, mask)`` (or any ``(low, high)`` / ``high``) to bin a
    pair on a shared range (mode "pair"). Scores outside the range are an error.
    """
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    a = np.abs(edge_values(scores, edge_mask)).ravel()
    lo, hi = (0.0, float(a.max())) if value_range is None else _check_range(value_range)
    return float(entropy_from_counts(bin_counts(a[None, :], lo, hi, int(bins)))[0])


def pair_value_range(base_scores: Any, tuned_scores: Any, edge_mask: Any) -> tuple[float, float]:
    """The shared histogram range (0, max |score| over both models) of range mode "pair"."""
    hb = np.abs(edge_values(base_scores, edge_mask, what="base_scores")).max()
    ht = np.abs(edge_values(tuned_scores, edge_mask, what="tuned_scores")).max()
    return 0.0, float(max(hb, ht))


def distribution_kurtosis(scores: Any, edge_mask: Any) -> float:
    """Mean over samples of the excess kurtosis of each sample's signed real-edge scores."""
    return float(sample_kurtosis(edge_values(scores, edge_mask)).mean())


def inter_sample_diversity(scores: Any, edge_mask: Any) -> float:
    """1 - mean Pearson correlation over all pairs of distinct samples (needs n >= 2).

    Pairs are pairs of positions: a sample passed twice (as in a bootstrap resample)
    contributes a correlation of 1 with its copy.
    """
    flat = edge_values(scores, edge_mask)
    n = flat.shape[0]
    if n < 2:
        raise ValueError(f"inter-sample diversity needs at least 2 samples, got {n}")
    z = standardized_rows(flat)
    corr = z @ z.T
    iu = np.triu_indices(n, k=1)
    return float(1.0 - corr[iu].mean())


def output_edge_entropy_per_node(scores: Any, edge_mask: Any) -> np.ndarray:
    """Mean normalised output-edge entropy per source node, ``[n_src]``.

    NaN for sources where it is undefined in every sample (a single outgoing edge, or rows
    of all zeros); otherwise the mean over the samples where it is defined.
    """
    mask = check_edge_mask(edge_mask)
    h, valid = output_entropy_terms(edge_values(scores, mask), mask)
    count = valid.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, h.sum(axis=0) / np.maximum(count, 1), np.nan)


def output_edge_entropy(scores: Any, edge_mask: Any) -> float:
    """Mean normalised output-edge entropy over every (sample, source) where it is defined."""
    mask = check_edge_mask(edge_mask)
    h, valid = output_entropy_terms(edge_values(scores, mask), mask)
    if not valid.any():
        raise ValueError("output-edge entropy is undefined everywhere: no source has two or more real "
                         "outgoing edges with a non-zero score row; check the edge mask and the scores")
    return float(h.sum() / valid.sum())


def relative_change(base: float, tuned: float) -> float:
    """(tuned - base) / |base|; an error when base is 0 or either value is not finite."""
    base, tuned = float(base), float(tuned)
    if not (np.isfinite(base) and np.isfinite(tuned)):
        raise ValueError(f"relative change needs finite values, got base={base}, tuned={tuned}")
    if base == 0.0:
        raise ValueError(f"relative change is undefined for base = 0 (tuned = {tuned}); "
                         "report the absolute values instead")
    return (tuned - base) / abs(base)
