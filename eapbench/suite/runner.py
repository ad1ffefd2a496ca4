"""The suite's session: which cases to measure, each measured once, and their verdicts.

:class:`Runner` is what the suite holds for a whole session. It finds a measurement in the
:class:`~eapbench.suite.store.MeasurementStore` (memory, then disk) or computes it with
:func:`~eapbench.suite.measure.measure_pair` (all of a pair's α on a dataset together, which share
generation and model loading), and judges it with :func:`~eapbench.suite.verdicts.verdict_for`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .claims import ClaimSet, ClaimVerdict, load_claims
from .measure import measure_pair
from .measurement import Measurement, RunConfig, case_id
from .pairs import PairSpec
from .store import MeasurementStore
from .verdicts import verdict_for

__all__ = ["Measurement", "RunConfig", "Runner", "case_id"]


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

    # --- verdicts ----------------------------------------------------------------------------
    def verdict(self, pair: PairSpec | str, dataset: str, alpha: float, claim_id: str) -> ClaimVerdict:
        """The verdict of one claim on one case (C6 measures the online pairs of this session too)."""
        pair = self.pairs[pair] if isinstance(pair, str) else pair
        m = self.measure(pair, dataset, alpha)
        cls = self.method_class(pair)
        online = {}
        if self.claims.get(claim_id).expectation(cls) == "exception":
            for other in self.pairs.values():
                if other.id == pair.id or self.method_class(other) != "online":
                    continue
                if (dataset, float(alpha)) not in [(d, float(a)) for d, a in self.cases(other)]:
                    continue
                om = self.measure(other, dataset, alpha)
                if "intensity" in om.metrics:
                    online[other.id] = om.metrics
        return verdict_for(self.claims, claim_id, cls, m, online)

    def verdicts(self, pair: PairSpec | str, dataset: str, alpha: float) -> dict[str, ClaimVerdict]:
        pair = self.pairs[pair] if isinstance(pair, str) else pair
        cls = self.method_class(pair)
        return {c.id: self.verdict(pair, dataset, alpha, c.id) for c in self.claims if c.expectation(cls)}

    def measured(self) -> list[Measurement]:
        return self.store.all()

    def results(self) -> list[dict[str, Any]]:
        """Every measurement made this session with its verdicts, for reports."""
        out = []
        for m in sorted(self.store.all(), key=lambda m: m.id):
            d = m.to_dict()
            try:
                d["verdicts"] = {k: {**v.to_dict(), "known_deviation": self.claims.deviation(m.pair, k)}
                                 for k, v in self.verdicts(m.pair, m.dataset, m.alpha).items()}
            except Exception as exc:  # a failing comparator must not hide the rest of the report
                d["verdicts"] = {}
                d["verdict_error"] = f"{type(exc).__name__}: {exc}"
            out.append(d)
        return out
