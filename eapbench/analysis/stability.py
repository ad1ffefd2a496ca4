"""Stability of top-k edge sets across bootstrap resamples of the samples (SPEC §11; Méloux et al.,
arXiv 2510.00845).

Given per-sample real-edge scores ``[n, |E|]`` (``EdgeScores.edge_vectors()``), the circuit at fraction q
is the set of the k = max(1, ⌊q · |E|⌋) edges with the largest |mean score| (or signed mean with
``absolute=False``); ties go to the earlier edge (a stable sort in the graph's row-major edge order).
For B resamples of the sample indices — ``bootstrap_indices(n, B, seed)``, the same draws as
:func:`eapbench.analysis.stats.paired_bootstrap` — the resample's circuit is compared with the
full-sample circuit by Jaccard overlap |A ∩ B| / |A ∪ B|; reported are its mean and percentile
interval, and the mean Jaccard over all pairs of distinct resamples (how much two independent
resamples agree, without privileging the full-sample set).

Ranking is by the resample *sum* of scores, equivalent to the mean (n is fixed) and exact for
integer-valued scores.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from .stats import bootstrap_indices

__all__ = ["DEFAULT_FRACTIONS", "StabilityResult", "jaccard", "k_for", "top_k_sets", "topk_stability"]

log = logging.getLogger(__name__)

DEFAULT_FRACTIONS: tuple[float, ...] = (0.01, 0.05, 0.10)
_BLOCK = 256  # resamples ranked at once


@dataclass(frozen=True)
class StabilityResult:
    """Jaccard overlap of top-k edge sets: resample vs full sample (mean, interval) and resample vs resample."""

    fractions: tuple[float, ...]
    ks: tuple[int, ...]
    jaccard_mean: tuple[float, ...]
    jaccard_low: tuple[float, ...]
    jaccard_high: tuple[float, ...]
    pairwise_mean: tuple[float, ...]
    n_samples: int
    n_edges: int
    n_resamples: int
    seed: int
    confidence: float
    absolute: bool

    @property
    def per_k(self) -> list[dict[str, Any]]:
        """One row per fraction: fraction, percent, k, jaccard_mean / low / high, pairwise_mean."""
        return [dict(fraction=f, percent=100 * f, k=k, jaccard_mean=m, jaccard_low=lo, jaccard_high=hi,
                     pairwise_mean=p)
                for f, k, m, lo, hi, p in zip(self.fractions, self.ks, self.jaccard_mean, self.jaccard_low,
                                              self.jaccard_high, self.pairwise_mean)]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "per_k": self.per_k}


def _vectors(edge_vectors: Any) -> np.ndarray:
    if hasattr(edge_vectors, "edge_vectors"):  # EdgeScores, without importing the engine
        edge_vectors = edge_vectors.edge_vectors()
    if hasattr(edge_vectors, "detach"):
        edge_vectors = edge_vectors.detach().cpu().double().numpy()
    x = np.asarray(edge_vectors, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"edge_vectors must be [n_samples, n_edges] with both >= 1, got shape {x.shape}; "
                         "pass EdgeScores.edge_vectors()")
    if not np.isfinite(x).all():
        raise ValueError("edge_vectors contain NaN/inf")
    return x


def k_for(fraction: float, n_edges: int) -> int:
    """max(1, ⌊fraction · n_edges⌋), guarded against float round-down."""
    return max(1, min(n_edges, int(np.floor(fraction * n_edges + 1e-9))))


def top_k_sets(totals: np.ndarray, k: int, absolute: bool = True) -> np.ndarray:
    """Bool [R, |E|]: the k largest of each row of ``totals`` [R, |E|] (|.| if ``absolute``), ties to the
    earlier edge."""
    key = -np.abs(totals) if absolute else -totals
    order = np.argsort(key, axis=1, kind="stable")[:, :k]
    out = np.zeros(totals.shape, dtype=bool)
    np.put_along_axis(out, order, True, axis=1)
    return out


def jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Jaccard |a ∩ b| / |a ∪ b| of bool arrays (1 for two empty sets)."""
    inter = (a & b).sum(-1)
    union = (a | b).sum(-1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def _pairwise_mean(sets: np.ndarray, k: int) -> float:
    """Mean Jaccard over pairs of distinct rows; every row holds exactly k edges, so union = 2k − intersection."""
    z = sets.astype(np.float64)
    r = z.shape[0]
    total = 0.0
    for s in range(0, r, _BLOCK):
        inter = z[s:s + _BLOCK] @ z.T
        total += float((inter / (2 * k - inter)).sum())
    return (total - r) / (r * (r - 1))  # the diagonal contributes r ones


def topk_stability(edge_vectors: Any, fractions: Sequence[float] = DEFAULT_FRACTIONS, *, n_resamples: int = 1000,
                   seed: int = 0, confidence: float = 0.95, absolute: bool = True,
                   progress: bool = True) -> StabilityResult:
    """Top-k edge-set stability of ``edge_vectors`` [n, |E|] under ``n_resamples`` bootstrap resamples.

    Deterministic for a seed. The pairwise mean averages over the B(B−1)/2 pairs of distinct resamples.
    """
    x = _vectors(edge_vectors)
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 2:
        raise ValueError(f"n_resamples must be an integer >= 2, got {n_resamples!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    fractions = tuple(float(f) for f in fractions)
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise ValueError(f"fractions must lie in (0, 1], got {fractions}")
    t0 = time.perf_counter()
    n, n_edges = x.shape
    ks = tuple(k_for(f, n_edges) for f in fractions)
    idx = bootstrap_indices(n, int(n_resamples), int(seed))
    full_total = np.ones(n) @ x
    full_sets = [top_k_sets(full_total[None, :], k, absolute)[0] for k in ks]
    sets = [np.zeros((n_resamples, n_edges), dtype=bool) for _ in ks]
    rows = np.arange(_BLOCK)
    for s in tqdm(range(0, n_resamples, _BLOCK), desc="top-k stability", disable=not progress, leave=False):
        block = idx[s:s + _BLOCK]
        counts = np.zeros((block.shape[0], n))
        np.add.at(counts, (rows[:block.shape[0], None], block), 1.0)
        totals = counts @ x
        for i, k in enumerate(ks):
            sets[i][s:s + block.shape[0]] = top_k_sets(totals, k, absolute)
    alpha = (1.0 - confidence) / 2.0
    j_mean, j_lo, j_hi, pair = [], [], [], []
    for i, k in enumerate(ks):
        j = jaccard(sets[i], full_sets[i][None, :])
        lo, hi = np.quantile(j, [alpha, 1.0 - alpha])
        j_mean.append(float(j.mean()))
        j_lo.append(float(lo))
        j_hi.append(float(hi))
        pair.append(_pairwise_mean(sets[i], k))
    log.info("top-k stability: n=%d, %d edges, %d resamples, seed %d, k=%s: Jaccard %s (%.2fs)", n, n_edges,
             n_resamples, seed, ks, [round(v, 3) for v in j_mean], time.perf_counter() - t0)
    return StabilityResult(fractions=fractions, ks=ks, jaccard_mean=tuple(j_mean), jaccard_low=tuple(j_lo),
                           jaccard_high=tuple(j_hi), pairwise_mean=tuple(pair), n_samples=n, n_edges=n_edges,
                           n_resamples=int(n_resamples), seed=int(seed), confidence=float(confidence),
                           absolute=absolute)
