"""Judging a measurement: the verdict of one claim on one case, from stored metric intervals.

Verdicts are derived, never stored: a measurement holds intervals; :func:`verdict_for` applies
the claim's expectation for the pair's method class (:mod:`eapbench.suite.claims`).
"""

from __future__ import annotations

from typing import Any, Mapping

from .claims import ClaimSet, ClaimVerdict, judge, judge_dpo_exception
from .measurement import Measurement

EXCEPTION_METRICS = ("intensity", "complexity", "kurtosis")


def verdict_for(claims: ClaimSet, claim_id: str, method_class: str, m: Measurement,
                online: Mapping[str, Mapping[str, Any]] | None = None) -> ClaimVerdict:
    """The verdict of ``claim_id`` on ``m``; ``online`` holds the same case's metrics of the
    session's online pairs (what the DPO exception is judged against)."""
    claim = claims.get(claim_id)
    kind = claim.expectation(method_class)
    if kind is None:
        raise ValueError(f"claim {claim_id} does not apply to {m.pair} (method class {method_class!r})")
    if not m.metrics and "empty_selection" in m.extra:
        counts = ", ".join(f"{k} {v}" for k, v in m.counts.items())
        return ClaimVerdict(claim_id, "inconclusive", f"{claim_id}: no problems survived selection ({counts})", kind)
    missing = [k for k in ([claim.metric] if kind != "exception" else list(EXCEPTION_METRICS)) if k not in m.metrics]
    if missing:
        errs = m.extra.get("metric_errors", {})
        return ClaimVerdict(claim_id, "inconclusive", f"{claim_id}: metric {', '.join(missing)} undefined on "
                            f"this case: {'; '.join(errs.get(k, 'not measured') for k in missing)}", kind)
    if kind == "exception":
        return judge_dpo_exception(claims, m.metrics, dict(online or {}))
    return judge(claim, kind, m.metrics[claim.metric], min_effect=claims.min_effect, min_samples=claims.min_samples)
