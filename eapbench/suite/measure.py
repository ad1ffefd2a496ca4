"""Computing one pair's measurements on one dataset: selection, edge scores, metric intervals.

:func:`measure_pair` runs :func:`eapbench.pipeline.paired.prepare_pair` once for all α, loads each
model once, scores both models' inputs with :func:`eapbench.engine.attribution.score_inputs`, and
bootstraps every claim metric (:func:`eapbench.analysis.stats.paired_bootstrap`).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from .measurement import Measurement, RunConfig, counts_of, plain
from .pairs import PairSpec, model_provenance

log = logging.getLogger(__name__)


def measure_pair(pair: PairSpec, dataset: str, alphas: Sequence[float], config: RunConfig, *,
                 method_class: str, metric_names: Sequence[str]) -> list[Measurement]:
    """One :class:`Measurement` per α (torch's thread count set to ``config.threads`` meanwhile)."""
    import torch

    before = torch.get_num_threads()
    if config.threads:
        # One thread is both steadier on a shared 2-core machine (2 threads there ran generation
        # 30x slower under load) and reproducible: the thread count changes float sums.
        torch.set_num_threads(config.threads)
    try:
        return _measure(pair, dataset, alphas, config, method_class, metric_names)
    finally:
        torch.set_num_threads(before)


def select_inputs(pair: PairSpec, dataset: str, alphas: Sequence[float], cfg: RunConfig):
    """The pair's paired attribution inputs per α (:func:`eapbench.pipeline.paired.prepare_pair` with
    this run's settings); raises :class:`~eapbench.pipeline.selection.EmptySelectionError`."""
    from ..pipeline import paired

    r = pair.resolved()
    return paired.prepare_pair(
        r.base, r.tuned, dataset, list(alphas), n_samples=cfg.n_samples, seed=cfg.seed,
        beta=cfg.beta, gamma=cfg.gamma, delta=cfg.delta, limit=cfg.limit_for(pair), device=cfg.device,
        dtype=cfg.dtype_for(pair), batch_size=cfg.gen_batch_for(pair),
        allow_tokenizer_mismatch=pair.allow_tokenizer_mismatch, cache=True, data_dir=cfg.data_dir,
        progress=cfg.progress, device_map=cfg.device_map, max_memory=cfg.max_memory, backend=cfg.backend,
        gen_token_budget=cfg.gen_token_budget)


def score_pair(pair: PairSpec, selections: Mapping[float, Any], alphas: Sequence[float], cfg: RunConfig
               ) -> tuple[dict[tuple[str, float], Any], dict[tuple[str, float], dict], dict[str, float], list[Path]]:
    """Both models' edge scores on their inputs at every α, each model loaded once:
    ``(scores, plans, seconds, resume_dirs)`` keyed by ``(side, α)`` (scores None for no inputs).
    Finished batches are saved under ``resume_dirs`` as they finish, so an interrupted run resumes;
    the caller deletes them once the scores are kept."""
    import torch

    from ..engine.attribution import score_inputs
    from ..engine.graph import ResidualGraph
    from ..models import load_model

    dtype = cfg.dtype_for(pair)
    r = pair.resolved()
    scores: dict[tuple[str, float], Any] = {}
    plans: dict[tuple[str, float], dict] = {}  # how each side's samples were batched (memory planning)
    seconds: dict[str, float] = {}
    resume_dirs: list[Path] = []
    budget = cfg.memory_budget or ("auto" if cfg.device.startswith("cuda") else None)
    for side, spec in (("base", r.base), ("tuned", r.tuned)):
        t1 = time.perf_counter()
        model, tok = load_model(spec.path, dtype=dtype, device=cfg.device, gguf_file=spec.gguf_file,
                                revision=spec.revision, device_map=cfg.device_map, max_memory=cfg.max_memory)
        graph = ResidualGraph.from_model(model, granularity=cfg.granularity)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        for a in alphas:
            inputs = getattr(selections[a], side)
            if len(inputs) == 0:
                scores[(side, a)] = None
                continue
            resume = resume_dir(spec, inputs, graph, dtype, cfg)
            resume_dirs.append(resume)
            scores[(side, a)] = score_inputs(model, inputs, pad_token_id=pad, graph=graph,
                                             batch_size=cfg.batch_size, progress=cfg.progress,
                                             resume_dir=resume, cache_key=resume.name, memory_budget=budget,
                                             checkpointing="auto" if budget else False)
            plans[(side, a)] = scores[(side, a)].meta["plan"]
        del model
        if cfg.device.startswith("cuda"):
            torch.cuda.empty_cache()
        seconds[side] = time.perf_counter() - t1
    return scores, plans, seconds, resume_dirs


def _measure(pair: PairSpec, dataset: str, alphas: Sequence[float], cfg: RunConfig, method_class: str,
             metric_names: Sequence[str]) -> list[Measurement]:
    from ..pipeline.selection import EmptySelectionError
    from .baselines import provenance

    dtype = cfg.dtype_for(pair)
    log.info("measuring %s on %s at alpha %s (%s, %s)", pair.id, dataset, list(alphas), cfg.device, dtype)

    def measurement(a: float, report: dict, prov: dict, metrics: dict, figures: dict | None = None,
                    extra: dict | None = None) -> Measurement:
        return Measurement(
            pair=pair.id, method=pair.method, method_class=method_class, family=pair.family, group=pair.group,
            dataset=dataset, alpha=float(a), metrics=metrics, selection=report, counts=counts_of(report),
            config={**cfg.key_dict(pair), "dataset": dataset, "alpha": float(a)}, provenance=prov,
            figures=figures or {}, extra=extra or {})

    t0 = time.perf_counter()
    try:
        selections = select_inputs(pair, dataset, alphas, cfg)
    except EmptySelectionError as exc:  # a real outcome (e.g. no problem both models solve): reported
        log.warning("%s on %s: %s", pair.id, dataset, exc)
        report = exc.report.to_dict()
        return [measurement(a, report, provenance(cfg.device, dtype), {}, extra={"empty_selection": str(exc)})
                for a in alphas]
    t_prepare = time.perf_counter() - t0
    scores, plans, t_attr, resume_dirs = score_pair(pair, selections, alphas, cfg)

    out = []
    for a in alphas:
        t2 = time.perf_counter()
        metrics, figures, extra = bootstrap_metrics(scores[("base", a)], scores[("tuned", a)], cfg, metric_names)
        t_stats = time.perf_counter() - t2
        prov = provenance(cfg.device, dtype,
                          models={s: model_provenance(m) for s, m in (("base", pair.base), ("tuned", pair.tuned))},
                          placement={"device_map": cfg.device_map, "max_memory": cfg.max_memory},
                          generation=generation_stats(selections[a].report.extra),
                          attribution_plan={side: plans.get((side, a)) for side in ("base", "tuned")},
                          seconds={"prepare_all_alphas": round(t_prepare, 2),
                                   "attribution_all_alphas": {k: round(v, 2) for k, v in t_attr.items()},
                                   "bootstrap": round(t_stats, 2)})
        out.append(measurement(a, selections[a].report.to_dict(), prov, metrics, figures, extra))
    # Every score is in the measurements now (the caller stores them): the partial files go.
    for folder in resume_dirs:
        shutil.rmtree(folder, ignore_errors=True)
    return out


GENERATION_STATS = ("backend", "backends", "n_generated", "n_cached", "n_new_tokens", "seconds", "load_seconds",
                    "tokens_per_s", "batch_size", "token_budget")


def generation_stats(report_extra: dict) -> dict:
    """Per side, how its answers were generated in this run: backend (and which backend made the cached
    ones), tokens decoded (cached answers count 0), decoding seconds, tokens/s, batching."""
    gen = report_extra.get("generation") or {}
    return {side: {k: v.get(k) for k in GENERATION_STATS} for side, v in gen.items() if isinstance(v, dict)}


def resume_dir(spec, inputs, graph, dtype: str, cfg: RunConfig) -> Path:
    """Where one model's attribution batches on one set of inputs are saved while it runs:
    ``$EAPBENCH_CACHE/attribution/<key>``, the key made of the model's fingerprint (the suite's
    :func:`~eapbench.suite.store.model_fingerprint`: file hashes, or sizes and times for big
    folders, or hub id and revision), the inputs (token ids, prompt lengths, t_cut), the graph
    (granularity, node names), dtype, device and attribution batch size."""
    from ..cache import cache_dir, stable_hash
    from .store import model_fingerprint

    prune_stale_resume_dirs()
    key = stable_hash({"model": model_fingerprint(spec.path, spec.revision, spec.gguf_file),
                       "input_ids": [list(r) for r in inputs.input_ids],
                       "prompt_lengths": list(inputs.prompt_lengths), "t_cut": inputs.t_cut,
                       "granularity": graph.granularity, "sources": list(graph.sources),
                       "destinations": list(graph.destinations), "dtype": str(dtype), "device": cfg.device,
                       "batch_size": cfg.batch_size}, 24)
    return cache_dir("attribution", key)


RESUME_MAX_AGE_DAYS = 30


def prune_stale_resume_dirs(max_age_days: float = RESUME_MAX_AGE_DAYS) -> list[Path]:
    """Delete the attribution resume folders of runs abandoned long ago (untouched for
    ``max_age_days``): a resumed run touches its folder, a finished one deletes it."""
    from ..cache import cache_dir

    cutoff = time.time() - max_age_days * 86400
    gone = []
    for folder in cache_dir("attribution").iterdir():
        try:
            newest = max([folder.stat().st_mtime, *(f.stat().st_mtime for f in folder.iterdir())])
        except OSError:
            continue
        if newest < cutoff:
            shutil.rmtree(folder, ignore_errors=True)
            gone.append(folder)
    if gone:
        log.info("deleted %d attribution resume folders untouched for %g days", len(gone), max_age_days)
    return gone


def bootstrap_metrics(base, tuned, cfg: RunConfig, metric_names: Sequence[str]) -> tuple[dict, dict, dict]:
    """Bootstrap every claim metric; figure data (mean |W| per edge, entropy per node)."""
    import numpy as np

    from ..analysis import metrics as M
    from ..analysis import stats

    if base is None or tuned is None:
        return {}, {}, {"empty": True}
    mask = base.graph.edge_mask
    bs, ts = base.scores, tuned.scores
    out, errors = {}, {}
    for name in metric_names:
        try:
            res = stats.paired_bootstrap(name, bs, ts, mask, n_resamples=cfg.n_resamples,
                                         seed=cfg.bootstrap_seed, confidence=cfg.confidence,
                                         bins=cfg.bins, progress=False)
        except ValueError as exc:  # degenerate metric on these samples: reported, not hidden
            errors[name] = str(exc)
            log.warning("metric %s undefined: %s", name, exc)
            continue
        out[name] = plain(res.to_dict())
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
        extra["complexity_sensitivity"] = plain(df.to_dict(orient="records"))
    except ValueError as exc:
        extra["complexity_sensitivity_error"] = str(exc)
    return out, figures, extra
