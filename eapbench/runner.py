"""The measurement behind every claim: one (pair, dataset, α) → selection, edge scores, metrics, intervals.

:class:`Runner` is what the suite holds for a whole session: for each pair and dataset it
runs :func:`eapbench.pipeline.prepare_pair` once (all α together), loads each model once,
scores both models' inputs with :func:`eapbench.attribution.score_inputs`, and computes every
claim metric's paired bootstrap (:func:`eapbench.stats.paired_bootstrap`). The result, a
:class:`Measurement`, is kept in memory and on disk (keyed by the models, the options and the
code that computes it), so all claim tests, the baseline checks, the report and a later run
share it. Verdicts (:mod:`eapbench.claims`) are derived from measurements, never stored in them.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .cache import atomic_write_text, cache_dir, file_sha256, stable_hash
from .claims import ClaimSet, ClaimVerdict, judge, judge_dpo_exception, load_claims
from .pairs import PairSpec

log = logging.getLogger(__name__)

MEASUREMENT_VERSION = 1
# Modules whose source is part of the cache key: change one and cached measurements are recomputed.
_CODE_MODULES = ("architectures", "attribution", "data", "generate", "grading", "graph", "metrics",
                 "pipeline", "prompts", "selection", "stats", "synthetic", "runner", "models", "records")


@dataclass(frozen=True)
class RunConfig:
    """Everything besides the pair, dataset and α that changes a measurement."""

    n_samples: int = 100
    seed: int = 42  # sampling of the N problems (SPEC §4)
    beta: float = 0.5
    gamma: float = 1.5
    delta: float = 0.5
    granularity: str = "qkv"
    device: str = "cpu"
    dtype: str | None = None  # None: each pair's own dtype
    n_resamples: int = 9999
    bootstrap_seed: int = 0
    confidence: float = 0.95
    bins: int = 100
    batch_size: int = 8  # attribution batch
    gen_batch_size: int | None = None  # generation batch (None: each pair's own)
    limit: int | None = None  # at most this many dataset problems (None: each pair's own, else all)
    data_dir: str | None = None
    threads: int | None = 1  # torch CPU threads while measuring (None: leave torch's setting); recorded
    progress: bool = True

    def dtype_for(self, pair: PairSpec) -> str:
        return self.dtype or pair.dtype

    def limit_for(self, pair: PairSpec) -> int | None:
        return self.limit if self.limit is not None else pair.limit

    def gen_batch_for(self, pair: PairSpec) -> int:
        return self.gen_batch_size or pair.gen_batch_size

    def key_dict(self, pair: PairSpec) -> dict[str, Any]:
        d = asdict(self)
        d.pop("progress")
        d.update(dtype=self.dtype_for(pair), limit=self.limit_for(pair), gen_batch_size=self.gen_batch_for(pair))
        return d


@dataclass(frozen=True)
class Measurement:
    """One (pair, dataset, α): metric intervals, selection counts, config, provenance and figure data."""

    pair: str
    method: str
    method_class: str
    family: str
    group: str
    dataset: str
    alpha: float
    metrics: dict[str, dict[str, Any]]  # metric -> BootstrapResult.to_dict()
    selection: dict[str, Any]  # SelectionReport.to_dict()
    counts: dict[str, int]
    config: dict[str, Any]
    provenance: dict[str, Any]
    figures: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def id(self) -> str:
        return case_id(self.pair, self.dataset, self.alpha)

    @property
    def n(self) -> int:
        return min((int(r["n"]) for r in self.metrics.values()), default=0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Measurement":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def case_id(pair_id: str, dataset: str, alpha: float) -> str:
    return f"{pair_id}-{dataset}-a{alpha:g}"


@functools.lru_cache(maxsize=1)
def _code_fingerprint() -> str:
    """Hash of the computing modules' source, taken once per process (the code this process runs)."""
    here = Path(__file__).resolve().parent
    return stable_hash({mod: file_sha256(here / f"{mod}.py") for mod in _CODE_MODULES
                        if (here / f"{mod}.py").is_file()})


def model_fingerprint(path: str, revision: str | None = None, gguf_file: str | None = None,
                      max_hash_bytes: int = 256 << 20) -> dict[str, Any]:
    """Identity of a model for cache keys: file hashes for small local folders, sizes and
    modification times for big ones, the hub id and revision otherwise."""
    p = Path(path)
    if not p.exists():
        return {"hub": path, "revision": revision, "gguf_file": gguf_file}
    files = sorted(f for f in (p.rglob("*") if p.is_dir() else [p]) if f.is_file())
    total = sum(f.stat().st_size for f in files)
    if total <= max_hash_bytes:
        return {"files": {str(f.relative_to(p) if p.is_dir() else f.name): file_sha256(f) for f in files}}
    return {"files": {str(f.relative_to(p) if p.is_dir() else f.name): [f.stat().st_size, f.stat().st_mtime_ns]
                      for f in files}}


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
        self.use_disk_cache = use_disk_cache
        self._cache_root = Path(cache_root) if cache_root else None
        self._memo: dict[str, Measurement] = {}
        self._errors: dict[str, BaseException] = {}
        self._code = None

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
    def _disk_path(self, pair: PairSpec, dataset: str, alpha: float) -> Path:
        if self._code is None:
            self._code = _code_fingerprint()
        r = pair.resolved()
        key = stable_hash({
            "v": MEASUREMENT_VERSION, "code": self._code, "dataset": dataset, "alpha": float(alpha),
            "config": self.config.key_dict(pair), "method": pair.method,
            "allow_tokenizer_mismatch": pair.allow_tokenizer_mismatch,
            "models": [{**asdict(m), "fingerprint": model_fingerprint(m.path, m.revision, m.gguf_file)}
                       for m in r.models]}, length=24)
        root = self._cache_root or cache_dir("suite")
        return Path(root) / pair.id / f"{dataset}-a{alpha:g}-{key}.json"

    def measure(self, pair: PairSpec | str, dataset: str, alpha: float) -> Measurement:
        """The measurement for one case: from memory, else from disk, else computed (with all
        of the pair's α on this dataset, which share generation and model loading)."""
        pair = self.pairs[pair] if isinstance(pair, str) else pair
        cid = case_id(pair.id, dataset, alpha)
        if cid in self._memo:
            return self._memo[cid]
        if cid in self._errors:
            raise self._errors[cid]
        alphas = [a for a in self.alphas_for(pair)]
        if float(alpha) not in alphas:
            alphas.append(float(alpha))
        todo = []
        for a in alphas:
            c = case_id(pair.id, dataset, a)
            if c in self._memo:
                continue
            path = self._disk_path(pair, dataset, a) if self.use_disk_cache else None
            if path is not None and path.is_file():
                try:
                    self._memo[c] = Measurement.from_dict(json.loads(path.read_text()))
                    log.info("measurement %s loaded from %s", c, path)
                    continue
                except (json.JSONDecodeError, TypeError, KeyError) as exc:
                    log.warning("ignoring unreadable cached measurement %s: %s", path, exc)
            todo.append(a)
        if todo:
            try:
                for m in self._compute(pair, dataset, todo):
                    self._memo[m.id] = m
                    if self.use_disk_cache:
                        atomic_write_text(self._disk_path(pair, dataset, m.alpha),
                                          json.dumps(m.to_dict(), default=_json_default) + "\n")
            except Exception as exc:  # remembered so that the other tests of this case fail fast
                for a in todo:
                    self._errors[case_id(pair.id, dataset, a)] = exc
                raise
        return self._memo[cid]

    def _compute(self, pair: PairSpec, dataset: str, alphas: Sequence[float]) -> list[Measurement]:
        import torch

        before = torch.get_num_threads()
        if self.config.threads:
            # One thread is both steadier on a shared 2-core machine (2 threads there ran generation
            # 30x slower under load) and reproducible: the thread count changes float sums.
            torch.set_num_threads(self.config.threads)
        try:
            return self._compute_inner(pair, dataset, alphas)
        finally:
            torch.set_num_threads(before)

    def _compute_inner(self, pair: PairSpec, dataset: str, alphas: Sequence[float]) -> list[Measurement]:
        import torch

        from . import pipeline
        from .attribution import score_inputs
        from .baselines import provenance
        from .graph import ResidualGraph
        from .models import load_model

        cfg = self.config
        dtype = cfg.dtype_for(pair)
        r = pair.resolved()
        log.info("measuring %s on %s at alpha %s (%s, %s)", pair.id, dataset, list(alphas), cfg.device, dtype)
        from .selection import EmptySelectionError

        t0 = time.perf_counter()
        try:
            selections = pipeline.prepare_pair(
                r.base, r.tuned, dataset, list(alphas), n_samples=cfg.n_samples, seed=cfg.seed,
                beta=cfg.beta, gamma=cfg.gamma, delta=cfg.delta, limit=cfg.limit_for(pair), device=cfg.device,
                dtype=dtype, batch_size=cfg.gen_batch_for(pair), allow_tokenizer_mismatch=pair.allow_tokenizer_mismatch,
                cache=True, data_dir=cfg.data_dir, progress=cfg.progress)
        except EmptySelectionError as exc:  # a real outcome (e.g. no problem both models solve): reported
            log.warning("%s on %s: %s", pair.id, dataset, exc)
            report = exc.report.to_dict()
            return [Measurement(
                pair=pair.id, method=pair.method, method_class=self.method_class(pair), family=pair.family,
                group=pair.group, dataset=dataset, alpha=float(a), metrics={}, selection=report,
                counts=_counts(report), config={**cfg.key_dict(pair), "dataset": dataset, "alpha": float(a)},
                provenance=provenance(cfg.device, dtype), extra={"empty_selection": str(exc)}) for a in alphas]
        t_prepare = time.perf_counter() - t0

        scores: dict[tuple[str, float], Any] = {}
        t_attr = {}
        for side, spec in (("base", r.base), ("tuned", r.tuned)):
            t1 = time.perf_counter()
            model, tok = load_model(spec.path, dtype=dtype, device=cfg.device, gguf_file=spec.gguf_file,
                                    revision=spec.revision)
            graph = ResidualGraph.from_model(model, granularity=cfg.granularity)
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            for a in alphas:
                inputs = getattr(selections[a], side)
                if len(inputs) == 0:
                    scores[(side, a)] = None
                    continue
                scores[(side, a)] = score_inputs(model, inputs, pad_token_id=pad, graph=graph,
                                                 batch_size=cfg.batch_size, progress=cfg.progress)
            del model
            if cfg.device.startswith("cuda"):
                torch.cuda.empty_cache()
            t_attr[side] = time.perf_counter() - t1

        out = []
        for a in alphas:
            sel = selections[a]
            report = sel.report.to_dict()
            t2 = time.perf_counter()
            metrics, figures, extra = self._metrics(scores[("base", a)], scores[("tuned", a)])
            t_stats = time.perf_counter() - t2
            prov = provenance(cfg.device, dtype,
                              models={s: {"path": m.path, "revision": m.revision, "name": m.name,
                                          "template": m.template}
                                      for s, m in (("base", r.base), ("tuned", r.tuned))},
                              seconds={"prepare_all_alphas": round(t_prepare, 2),
                                       "attribution_all_alphas": {k: round(v, 2) for k, v in t_attr.items()},
                                       "bootstrap": round(t_stats, 2)})
            out.append(Measurement(
                pair=pair.id, method=pair.method, method_class=self.method_class(pair), family=pair.family,
                group=pair.group, dataset=dataset, alpha=float(a), metrics=metrics, selection=report,
                counts=_counts(report), config={**cfg.key_dict(pair), "dataset": dataset, "alpha": float(a)},
                provenance=prov, figures=figures, extra=extra))
        return out

    def _metrics(self, base, tuned) -> tuple[dict, dict, dict]:
        """Bootstrap every claim metric; figure data (mean |W| per edge, entropy per node)."""
        import numpy as np

        from . import metrics as M
        from . import stats

        cfg = self.config
        if base is None or tuned is None:
            return {}, {}, {"empty": True}
        mask = base.graph.edge_mask
        bs, ts = base.scores, tuned.scores
        out, errors = {}, {}
        for name in self.claims.metrics:
            try:
                res = stats.paired_bootstrap(name, bs, ts, mask, n_resamples=cfg.n_resamples,
                                             seed=cfg.bootstrap_seed, confidence=cfg.confidence,
                                             bins=cfg.bins, progress=False)
            except ValueError as exc:  # degenerate metric on these samples: reported, not hidden
                errors[name] = str(exc)
                log.warning("metric %s undefined: %s", name, exc)
                continue
            out[name] = _plain(res.to_dict())
        g = base.graph
        m_np = mask.cpu().numpy().astype(bool)
        figures = {
            "sources": list(g.sources), "destinations": list(g.destinations), "edge_mask": m_np.tolist(),
            "mean_abs_base": np.where(m_np, bs.abs().mean(0).cpu().numpy(), 0.0).tolist(),
            "mean_abs_tuned": np.where(m_np, ts.abs().mean(0).cpu().numpy(), 0.0).tolist(),
            "entropy_per_node_base": np.nan_to_num(M.output_edge_entropy_per_node(bs, mask), nan=0.0).tolist(),
            "entropy_per_node_tuned": np.nan_to_num(M.output_edge_entropy_per_node(ts, mask), nan=0.0).tolist(),
            "n": int(bs.shape[0]),
        }
        extra: dict[str, Any] = {"metric_errors": errors} if errors else {}
        try:
            df = stats.complexity_sensitivity(bs, ts, mask, n_resamples=cfg.n_resamples, seed=cfg.bootstrap_seed,
                                              confidence=cfg.confidence)
            extra["complexity_sensitivity"] = _plain(df.to_dict(orient="records"))
        except ValueError as exc:
            extra["complexity_sensitivity_error"] = str(exc)
        return out, figures, extra

    # --- verdicts ----------------------------------------------------------------------------
    def verdict(self, pair: PairSpec | str, dataset: str, alpha: float, claim_id: str) -> ClaimVerdict:
        """The verdict of one claim on one case (C6 measures the online pairs of this session too)."""
        pair = self.pairs[pair] if isinstance(pair, str) else pair
        m = self.measure(pair, dataset, alpha)
        claim = self.claims.get(claim_id)
        kind = claim.expectation(self.method_class(pair))
        if kind is None:
            raise ValueError(f"claim {claim_id} does not apply to {pair.id} (method class "
                             f"{self.method_class(pair)!r})")
        if not m.metrics and "empty_selection" in m.extra:
            return ClaimVerdict(claim_id, "inconclusive",
                                f"{claim_id}: no problems survived selection ({_fmt_counts(m.counts)})", kind)
        missing = [k for k in ([claim.metric] if kind != "exception" else ["intensity", "complexity", "kurtosis"])
                   if k not in m.metrics]
        if missing:
            errs = m.extra.get("metric_errors", {})
            return ClaimVerdict(claim_id, "inconclusive", f"{claim_id}: metric {', '.join(missing)} undefined on "
                                f"this case: {'; '.join(errs.get(k, 'not measured') for k in missing)}", kind)
        if kind == "exception":
            online = {}
            for other in self.pairs.values():
                if other.id == pair.id or self.method_class(other) != "online":
                    continue
                if (dataset, float(alpha)) not in [(d, float(a)) for d, a in self.cases(other)]:
                    continue
                om = self.measure(other, dataset, alpha)
                if "intensity" in om.metrics:
                    online[other.id] = om.metrics
            return judge_dpo_exception(self.claims, m.metrics, online)
        return judge(claim, kind, m.metrics[claim.metric], min_effect=self.claims.min_effect,
                     min_samples=self.claims.min_samples)

    def verdicts(self, pair: PairSpec | str, dataset: str, alpha: float) -> dict[str, ClaimVerdict]:
        pair = self.pairs[pair] if isinstance(pair, str) else pair
        cls = self.method_class(pair)
        return {c.id: self.verdict(pair, dataset, alpha, c.id) for c in self.claims if c.expectation(cls)}

    def measured(self) -> list[Measurement]:
        return list(self._memo.values())

    def results(self) -> list[dict[str, Any]]:
        """Every measurement made this session with its verdicts, for reports."""
        out = []
        for m in sorted(self._memo.values(), key=lambda m: m.id):
            d = m.to_dict()
            try:
                d["verdicts"] = {k: {**v.to_dict(), "known_deviation": self.claims.deviation(m.pair, k)}
                                 for k, v in self.verdicts(m.pair, m.dataset, m.alpha).items()}
            except Exception as exc:  # a failing comparator must not hide the rest of the report
                d["verdicts"] = {}
                d["verdict_error"] = f"{type(exc).__name__}: {exc}"
            out.append(d)
        return out


def _counts(report: Mapping[str, Any]) -> dict[str, int]:
    counts = report.get("counts")
    if isinstance(counts, Mapping):
        return {str(k): int(v) for k, v in counts.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {str(k): int(v) for k, v in report.items() if isinstance(v, int) and not isinstance(v, bool)}


def _fmt_counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def _plain(obj: Any) -> Any:
    """JSON-safe copy (numpy scalars → Python numbers)."""
    return json.loads(json.dumps(obj, default=_json_default))


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (tuple, set)):
        return list(o)
    return str(o)
