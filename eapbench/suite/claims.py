"""The paper's claims C1–C6 as data, and how a measured interval is judged against them.

What each claim measures and which direction each method class is expected to move it
live in the hand-written ``baselines/expectations.yaml`` (SPEC §1); this module reads it
(:func:`load_claims`), maps a pair's method to its class, and judges a bootstrap interval
(:func:`judge`) or, for C6, a set of pairs (:func:`judge_dpo_exception`). Directional
expectations go through :func:`eapbench.stats.verdict`; the non-directional ones
(``no_increase``, ``unchanged``) are decided here on the same interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import locations as _locations

# The checkout's baselines/expectations.yaml, else the copy shipped in the package (eapbench.suite.locations);
# the suite passes its own checkout's file to load_claims().
EXPECTATIONS_FILE = _locations.hand_written("expectations.yaml")
KINDS = ("increase", "decrease", "no_increase", "unchanged", "none", "exception")
STATUSES = ("pass", "fail", "inconclusive", "not_judged")


@dataclass(frozen=True)
class Claim:
    id: str  # "C1" .. "C6"
    test: str  # test function suffix, e.g. "intensity_increases"
    metric: str | None  # eapbench.stats metric name; None for the cross-pair C6
    title: str
    expect: Mapping[str, str]  # method class -> kind
    band: float = 0.0

    def expectation(self, method_class: str) -> str | None:
        """The expected kind for a method class, or ``None`` if the claim does not apply to it."""
        return self.expect.get(method_class)


@dataclass(frozen=True)
class ClaimSet:
    claims: tuple[Claim, ...]
    method_classes: Mapping[str, str]
    min_effect: float = 0.0
    min_samples: int = 10
    source: str = ""
    known_deviations: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # pair -> claim -> why
    # Attribution setting ("head/EAP", "qkv/EAP-IG"; RunConfig.setting) -> pair -> claim -> why, for settings
    # whose measured contradictions differ from the paper's setting (qkv/EAP, ``known_deviations``).
    known_deviations_under: Mapping[str, Mapping[str, Mapping[str, str]]] = field(default_factory=dict)

    def deviation(self, pair_id: str, claim_id: str, setting: str | None = None) -> str | None:
        """The recorded reason if this pair is known to contradict this claim under ``setting`` (its own
        list where the file has one, else the paper setting's), else None."""
        known = self.known_deviations_under.get(setting, self.known_deviations) if setting else self.known_deviations
        return known.get(pair_id, {}).get(claim_id)

    def __iter__(self):
        return iter(self.claims)

    def get(self, claim_id: str) -> Claim:
        for c in self.claims:
            if c.id == claim_id:
                return c
        raise KeyError(f"no claim {claim_id!r}; known: {[c.id for c in self.claims]}")

    def method_class(self, method: str) -> str:
        try:
            return self.method_classes[method]
        except KeyError:
            raise KeyError(f"method {method!r} has no class in {self.source or 'expectations.yaml'}; "
                           f"known methods: {sorted(self.method_classes)}") from None

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(c.metric for c in self.claims if c.metric)

    def decision_boundaries(self) -> dict[str, tuple[float, ...]]:
        """Metric -> the relative changes where some verdict on it switches (0, ±min_effect, ±band)."""
        out: dict[str, set[float]] = {}
        for c in self.claims:
            if c.metric:
                out.setdefault(c.metric, set()).update({0.0, self.min_effect, -self.min_effect, c.band, -c.band})
        return {m: tuple(sorted(b)) for m, b in out.items()}


@dataclass(frozen=True)
class ClaimVerdict:
    """The outcome of one claim on one (pair, dataset, α): status and a one-line message with numbers."""

    claim: str
    status: str  # pass | fail | inconclusive | not_judged
    message: str
    expectation: str
    details: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict[str, Any]:
        return {"claim": self.claim, "status": self.status, "message": self.message,
                "expectation": self.expectation, "details": self.details}


def load_claims(path: str | Path | None = None) -> ClaimSet:
    """Read the claims and expectations; a malformed file raises naming the entry to fix."""
    import yaml

    p = Path(path) if path is not None else EXPECTATIONS_FILE
    if not p.is_file():
        raise FileNotFoundError(f"claim expectations file {p} is missing; it is hand-written and "
                                "versioned with the repository (git checkout baselines/expectations.yaml)")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{p} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("claims"), dict) \
            or not isinstance(data.get("method_classes"), dict):
        raise ValueError(f"{p}: expected top-level mappings 'claims' and 'method_classes'")
    claims = []
    for cid, c in data["claims"].items():
        if not isinstance(c, dict) or "test" not in c or "expect" not in c:
            raise ValueError(f"{p}: claim {cid} needs 'test' and 'expect'")
        for cls, kind in c["expect"].items():
            if kind not in KINDS:
                raise ValueError(f"{p}: claim {cid} expects {kind!r} for {cls!r}; use one of {KINDS}")
        claims.append(Claim(id=str(cid), test=str(c["test"]), metric=c.get("metric"),
                            title=str(c.get("title", cid)), expect=dict(c["expect"]),
                            band=float(c.get("band", 0.0))))
    ids = {c.id for c in claims}

    def deviations(known: Any, where: str) -> dict[str, dict[str, str]]:
        if not isinstance(known, dict) or any(not isinstance(v, dict) or set(v) - ids for v in known.values()):
            raise ValueError(f"{p}: {where} must map pair id -> claim id ({sorted(ids)}) -> reason")
        return {str(k): {str(c): str(r) for c, r in v.items()} for k, v in known.items()}

    under = data.get("known_deviations_under") or {}
    if not isinstance(under, dict):
        raise ValueError(f"{p}: known_deviations_under must map a setting (e.g. 'qkv/EAP-IG') -> pair id -> "
                         "claim id -> reason")
    return ClaimSet(claims=tuple(claims), method_classes=dict(data["method_classes"]),
                    min_effect=float(data.get("min_effect", 0.0)),
                    min_samples=int(data.get("min_samples", 10)), source=str(p),
                    known_deviations=deviations(data.get("known_deviations") or {}, "known_deviations"),
                    known_deviations_under={str(s): deviations(v or {}, f"known_deviations_under[{s}]")
                                            for s, v in under.items()})


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}%" if math.isfinite(x) else str(x)


def describe(result: Mapping[str, Any]) -> str:
    """``base -> tuned (rel [lo, hi], n=...)`` from a bootstrap result dict."""
    return (f"{result['base']:.4g} -> {result['tuned']:.4g} ({_pct(result['rel_change'])}, "
            f"{100 * result.get('confidence', 0.95):.0f}% CI [{_pct(result['ci_low'])}, "
            f"{_pct(result['ci_high'])}], n={result['n']})")


def judge(claim: Claim, kind: str, result: Any, *, min_effect: float = 0.0,
          min_samples: int = 10) -> ClaimVerdict:
    """Judge one bootstrap result (``eapbench.stats.BootstrapResult`` or its dict) against ``kind``."""
    r = result.to_dict() if hasattr(result, "to_dict") else dict(result)
    head = f"{claim.id} {claim.title} [{kind}]: {describe(r)}"
    if kind in ("increase", "decrease"):
        from ..analysis import stats

        res = result if hasattr(result, "ci_low") else stats.BootstrapResult(**r)
        v = stats.verdict(res, +1 if kind == "increase" else -1, min_effect=min_effect,
                          min_samples=min_samples)
        return ClaimVerdict(claim.id, v.status, f"{claim.id} {claim.title} {r['base']:.4g} -> {r['tuned']:.4g}: "
                            f"{v.message}", kind, {"result": r})
    lo, hi, n = r["ci_low"], r["ci_high"], r["n"]
    if kind == "none":
        return ClaimVerdict(claim.id, "not_judged", f"{head} — the paper states no direction for this class",
                            kind, {"result": r})
    if n < min_samples or not (math.isfinite(lo) and math.isfinite(hi)):
        return ClaimVerdict(claim.id, "inconclusive",
                            f"{head} — inconclusive: {n} samples (< {min_samples}) or undefined interval",
                            kind, {"result": r})
    b = claim.band
    if kind == "no_increase":
        status = "fail" if lo > b else "pass"
        why = (f"interval lies above {_pct(b)}: a consistent increase" if status == "fail"
               else f"interval reaches {_pct(lo)} <= {_pct(b)}: no consistent increase")
    elif kind == "unchanged":
        if -b <= lo and hi <= b:
            status, why = "pass", f"interval inside the ±{100 * b:.0f}% band"
        elif hi < -b or lo > b:
            status, why = "fail", f"interval outside the ±{100 * b:.0f}% band"
        else:
            status, why = "inconclusive", f"interval overlaps the edge of the ±{100 * b:.0f}% band"
    else:
        raise ValueError(f"claim {claim.id}: judge() cannot decide kind {kind!r}; use one of "
                         "increase, decrease, no_increase, unchanged, none")
    return ClaimVerdict(claim.id, status, f"{head} — {status}: {why}", kind, {"result": r})


def judge_dpo_exception(claims: ClaimSet, offline: Mapping[str, Any],
                        online: Mapping[str, Mapping[str, Any]]) -> ClaimVerdict:
    """C6 for one offline pair at one (dataset, α).

    ``offline`` maps metric name -> bootstrap result dict for the offline pair; ``online`` maps
    online pair id -> such a mapping, for the online-RL pairs measured on the same dataset and α.
    Pass: C1 and C2 do not both pass as increases, C3 passes as a decrease, and the offline C1
    interval lies entirely below every online pair's C1 interval. Fail: the C1+C2 signature
    is present, C3 fails, or the offline C1 interval lies entirely above an online one.
    """
    c1, c2, c3 = claims.get("C1"), claims.get("C2"), claims.get("C3")
    kw = dict(min_effect=claims.min_effect, min_samples=claims.min_samples)
    v1 = judge(c1, "increase", offline[c1.metric], **kw)
    v2 = judge(c2, "increase", offline[c2.metric], **kw)
    v3 = judge(c3, "decrease", offline[c3.metric], **kw)
    signature = v1.status == "pass" and v2.status == "pass"
    parts = [f"C1+C2 signature {'PRESENT' if signature else 'absent'} (C1 {v1.status}, C2 {v2.status})",
             f"C3 {v3.status}"]
    mine = offline[c1.metric]
    below, above, overlap = [], [], []
    for pid, res in sorted(online.items()):
        o = res[c1.metric]
        if mine["ci_high"] < o["ci_low"]:
            below.append(pid)
        elif mine["ci_low"] > o["ci_high"]:
            above.append(pid)
        else:
            overlap.append(pid)
        parts.append(f"C1 vs {pid}: [{_pct(mine['ci_low'])}, {_pct(mine['ci_high'])}] vs "
                     f"[{_pct(o['ci_low'])}, {_pct(o['ci_high'])}]")
    if signature or v3.status == "fail" or above:
        status = "fail"
    elif not online:
        status = "inconclusive"
        parts.append("no online-RL pair measured on this dataset and alpha (add one, e.g. --pairs mini)")
    elif v3.status == "pass" and not overlap and len(below) == len(online):
        status = "pass"
    else:
        status = "inconclusive"
    details = {"c1": v1.to_dict(), "c2": v2.to_dict(), "c3": v3.to_dict(),
               "below": below, "above": above, "overlap": overlap}
    return ClaimVerdict("C6", status, f"C6 DPO exception: {status}: " + "; ".join(parts), "exception", details)
