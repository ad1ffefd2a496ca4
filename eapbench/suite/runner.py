"""The suite's session: which cases to measure, each measured once, and their verdicts.

:class:`Runner` is what the suite holds for a whole session. It finds a measurement in the
:class:`~eapbench.suite.store.MeasurementStore` (memory, then disk) or computes it with
:func:`~eapbench.suite.measure.measure_pair` (all of a pair's α on a dataset together, which share
generation and model loading), and judges it with :func:`~eapbench.suite.verdicts.verdict_for`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from .claims import ClaimSet, ClaimVerdict, load_claims
from .measure import measure_pair
from .measurement import Measurement, RunConfig, case_id
from .pairs import PairSpec
from .store import MeasurementStore
from .verdicts import verdict_for

__all__ = ["Measurement", "NotMeasured", "ROBUSTNESS_VARIANTS", "RunConfig", "Runner", "case_id"]

# The attribution settings the robustness table compares (issue 13): the paper's graph and method, per-head
# graphs as MIB scores them, and integrated gradients.
ROBUSTNESS_VARIANTS: dict[str, dict[str, str]] = {
    "qkv/EAP": {"granularity": "qkv", "attribution": "eap"},
    "head/EAP": {"granularity": "head", "attribution": "eap"},
    "qkv/EAP-IG": {"granularity": "qkv", "attribution": "eap-ig"},
}


class NotMeasured(Exception):
    """A verdict asked not to measure needs a case that has no measurement."""


class Runner:
    """Session-wide measurements and verdicts for a set of pairs (see module docstring)."""

    def __init__(self, pairs: Sequence[PairSpec], config: RunConfig = RunConfig(), *,
                 datasets: Sequence[str] | None = None, alphas: Sequence[float] | None = None,
                 claims: ClaimSet | None = None, use_disk_cache: bool = True,
                 cache_root: str | Path | None = None) -> None:
        self.pairs = {p.id: p for p in pairs}
        self.config = config
        self.claims = claims or load_claims()
        self._datasets = tuple(datasets) if datasets else None
        self._alphas = tuple(float(a) for a in alphas) if alphas else None
        self.store = MeasurementStore(config, use_disk=use_disk_cache, root=cache_root)
        self._errors: dict[str, BaseException] = {}
        self._variants: dict[str, Runner] = {}

    # --- the plan --------------------------------------------------------------------------
    def datasets_for(self, pair: PairSpec) -> tuple[str, ...]:
        return self._datasets or pair.datasets

    def alphas_for(self, pair: PairSpec) -> tuple[float, ...]:
        return self._alphas or tuple(float(a) for a in pair.alphas)

    def cases(self, pair: PairSpec) -> list[tuple[str, float]]:
        return [(d, a) for d in self.datasets_for(pair) for a in self.alphas_for(pair)]

    def method_class(self, pair: PairSpec) -> str:
        return self.claims.method_class(pair.method)

    # --- measuring -------------------------------------------------------------------------
    def measure(self, pair: PairSpec | str, dataset: str, alpha: float) -> Measurement:
        """The measurement for one case: from the store, else computed (with all of the pair's α
        on this dataset that the store lacks)."""
        pair = self.pairs[pair] if isinstance(pair, str) else pair
        cid = case_id(pair.id, dataset, alpha)
        if cid in self._errors:
            raise self._errors[cid]
        found = self.store.get(pair, dataset, alpha)
        if found is not None:
            return found
        with self.store.lock(pair, dataset):  # another process (xdist worker) may be measuring it
            found = self.store.get(pair, dataset, alpha)
            if found is not None:
                return found
            alphas = list(self.alphas_for(pair))
            if float(alpha) not in alphas:
                alphas.append(float(alpha))
            todo = [a for a in alphas if a == float(alpha) or self.store.get(pair, dataset, a) is None]
            try:
                for m in measure_pair(pair, dataset, todo, self.config, method_class=self.method_class(pair),
                                      metric_names=self.claims.metrics):
                    self.store.put(pair, m)
            except Exception as exc:  # remembered so that the other tests of this case fail fast
                for a in todo:
                    self._errors[case_id(pair.id, dataset, a)] = exc
                raise
            return self.store.get(pair, dataset, alpha)

    # --- the same cases under other attribution settings (robustness) ---------------------------
    def variant(self, name: str) -> "Runner":
        """This session's runner with the attribution settings of :data:`ROBUSTNESS_VARIANTS` ``name``
        (itself when they are its own); variants share the pairs, claims and caches."""
        cfg = replace(self.config, **ROBUSTNESS_VARIANTS[name])
        if cfg == self.config:
            return self
        if name not in self._variants:
            self._variants[name] = Runner(list(self.pairs.values()), cfg, datasets=self._datasets,
                                          alphas=self._alphas, claims=self.claims, use_disk_cache=self.store.use_disk,
                                          cache_root=self.store._root)
        return self._variants[name]

    def robustness(self, pair: PairSpec | str, dataset: str, alpha: float, *,
                   measure: bool = True) -> dict[str, dict[str, ClaimVerdict]]:
        """Variant name -> claim -> verdict for one case under every :data:`ROBUSTNESS_VARIANTS` setting.
        With ``measure=False`` only variants already measured are included."""
        pair = self.pairs[pair] if isinstance(pair, str) else pair
        cls = self.method_class(pair)
        out: dict[str, dict[str, ClaimVerdict]] = {}
        for name in ROBUSTNESS_VARIANTS:
            runner = self.variant(name)
            if runner is not self and not measure and runner.store.get(pair, dataset, alpha) is None:
                continue
            verdicts = {}
            for c in self.claims:
                if not c.expectation(cls):
                    continue
                try:
                    verdicts[c.id] = runner.verdict(pair, dataset, alpha, c.id, measure=measure)
                except NotMeasured:
                    continue
            out[name] = verdicts
        return out

    # --- verdicts ----------------------------------------------------------------------------
    def _get(self, pair: PairSpec, dataset: str, alpha: float, measure: bool) -> Measurement:
        if measure:
            return self.measure(pair, dataset, alpha)
        found = self.store.get(pair, dataset, alpha)
        if found is None:
            raise NotMeasured(f"{case_id(pair.id, dataset, alpha)} was not measured in this session")
        return found

    def verdict(self, pair: PairSpec | str, dataset: str, alpha: float, claim_id: str, *,
                measure: bool = True) -> ClaimVerdict:
        """The verdict of one claim on one case (C6 measures the online pairs of this session too).

        With ``measure=False`` nothing new is measured: a case (or, for C6, an online pair) that has
        no measurement yet raises :class:`NotMeasured`."""
        pair = self.pairs[pair] if isinstance(pair, str) else pair
        m = self._get(pair, dataset, alpha, measure)
        cls = self.method_class(pair)
        online = {}
        if self.claims.get(claim_id).expectation(cls) == "exception":
            for other in self.pairs.values():
                if other.id == pair.id or self.method_class(other) != "online":
                    continue
                if (dataset, float(alpha)) not in [(d, float(a)) for d, a in self.cases(other)]:
                    continue
                om = self._get(other, dataset, alpha, measure)
                if "intensity" in om.metrics:
                    online[other.id] = om.metrics
        return verdict_for(self.claims, claim_id, cls, m, online)

    def verdicts(self, pair: PairSpec | str, dataset: str, alpha: float) -> dict[str, ClaimVerdict]:
        pair = self.pairs[pair] if isinstance(pair, str) else pair
        cls = self.method_class(pair)
        return {c.id: self.verdict(pair, dataset, alpha, c.id) for c in self.claims if c.expectation(cls)}

    def expected_cases(self) -> list[str]:
        """Every case id of this session's plan: each pair × its datasets × its α."""
        return [case_id(p.id, d, a) for p in self.pairs.values() for d, a in self.cases(p)]

    def errors(self) -> dict[str, str]:
        """Case id -> the error that stopped its measurement, for reports."""
        return {cid: f"{type(e).__name__}: {e}" for cid, e in self._errors.items()}

    def measured(self) -> list[Measurement]:
        return self.store.all()

    def results(self, *, measure: bool = True) -> list[dict[str, Any]]:
        """Every measurement made this session with its verdicts, for reports.

        With ``measure=False`` (a suite's end, possibly interrupted) nothing new is measured: a C6
        verdict whose online pairs were not measured is left out, named in ``verdicts_unavailable``."""
        out = []
        for m in sorted(self.store.all(), key=lambda m: m.id):
            d = m.to_dict()
            pair = self.pairs.get(m.pair)
            try:
                if pair is None:  # a measurement of a pair outside this runner: no verdicts
                    raise KeyError(f"pair {m.pair!r} is not in this session")
                cls = self.method_class(pair)
                d["verdicts"], missing = {}, {}
                for c in self.claims:
                    if not c.expectation(cls):
                        continue
                    try:
                        v = self.verdict(pair, m.dataset, m.alpha, c.id, measure=measure)
                    except NotMeasured as exc:
                        missing[c.id] = str(exc)
                        continue
                    d["verdicts"][c.id] = {**v.to_dict(),
                                           "known_deviation": self.claims.deviation(m.pair, c.id, self.config.setting)}
                if missing:
                    d["verdicts_unavailable"] = missing
                if self._variants:  # --robustness: the verdicts under the other attribution settings
                    d["robustness"] = {name: {cid: v.to_dict() for cid, v in vs.items()}
                                       for name, vs in self.robustness(pair, m.dataset, m.alpha, measure=False).items()}
            except Exception as exc:  # a failing comparator must not hide the rest of the report
                d["verdicts"] = {}
                d["verdict_error"] = f"{type(exc).__name__}: {exc}"
            out.append(d)
        return out
