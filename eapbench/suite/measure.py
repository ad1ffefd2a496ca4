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


def attribution_kwargs(cfg: RunConfig) -> dict[str, Any]:
    """The attribution method's arguments to :func:`~eapbench.engine.attribution.score_inputs`."""
    return {"method": cfg.attribution, "steps": cfg.ig_steps} if cfg.attribution != "eap" else {}


def score_pair(pair: PairSpec, selections: Mapping[float, Any], alphas: Sequence[float], cfg: RunConfig
               ) -> tuple[dict[tuple[str, float], Any], dict[tuple[str, float], dict], dict[str, float], list[Path]]:
    """Both models' edge scores on their inputs at every α, each model loaded once:
    ``(scores, plans, seconds, resume_dirs)`` keyed by ``(side, α)`` (scores None for no inputs); with
    ``cfg.faithfulness`` each score's faithfulness curve rides in its ``meta["faithfulness"]``.
    Finished batches are saved under ``resume_dirs`` as they finish, so an interrupted run resumes;
    the caller deletes them once the scores are kept."""
    import torch

    from ..cache import cache_dir, stable_hash
    from ..engine.attribution import score_inputs
    from ..engine.graph import ResidualGraph
    from ..models import load_model
    from .store import model_fingerprint

    dtype = cfg.dtype_for(pair)
    r = pair.resolved()
    scores: dict[tuple[str, float], Any] = {}
    plans: dict[tuple[str, float], dict] = {}  # how each side's samples were batched (memory planning)
    faithful: dict[tuple[str, float], dict] = {}
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
            if cfg.share_scores:  # per-sample files, kept for other pairs of this model (and for resuming)
                share = {"sample_cache": cache_dir("scores"), "cache_key": stable_hash(
                    model_fingerprint(spec.path, spec.revision, spec.gguf_file), 24)}
            else:  # per-batch files of this call, deleted once the case is measured
                resume = resume_dir(spec, inputs, graph, dtype, cfg)
                resume_dirs.append(resume)
                share = {"resume_dir": resume, "cache_key": resume.name}
            scores[(side, a)] = score_inputs(model, inputs, pad_token_id=pad, graph=graph,
                                             batch_size=cfg.batch_size, progress=cfg.progress,
                                             memory_budget=budget, checkpointing="auto" if budget else False,
                                             **share, **attribution_kwargs(cfg))
            plans[(side, a)] = {**scores[(side, a)].meta["plan"],
                                "shared_samples": scores[(side, a)].meta.get("shared_samples", 0)}
            if cfg.faithfulness:
                faithful[(side, a)] = faithfulness_of(model, inputs, scores[(side, a)], pad, cfg)
        del model
        if cfg.device.startswith("cuda"):
            torch.cuda.empty_cache()
        seconds[side] = time.perf_counter() - t1
    for key, curve in faithful.items():
        scores[key].meta["faithfulness"] = curve
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
                          placement={"device_map": cfg.device_map, "max_memory": cfg.max_memory,
                                     "share_scores": cfg.share_scores},
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
                       "batch_size": cfg.batch_size, **attribution_kwargs(cfg)}, 24)
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


STABILITY_RESAMPLES = 1000  # top-k stability resamples (at most the run's n_resamples)


def bootstrap_metrics(base, tuned, cfg: RunConfig, metric_names: Sequence[str]) -> tuple[dict, dict, dict]:
    """Bootstrap every claim metric; figure data (:func:`figure_data`); top-k stability and faithfulness
    (when scored) per side in the extras."""
    from ..analysis import stats
    from ..analysis.stability import topk_stability

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
    figures = figure_data(base, tuned)
    extra: dict[str, Any] = {"metric_errors": errors} if errors else {}
    for side, es in (("base", base), ("tuned", tuned)):
        if "faithfulness" in es.meta:
            extra.setdefault("faithfulness", {})[side] = es.meta["faithfulness"]
        try:  # how much of each top-k edge set survives a resample of the samples (SPEC §11)
            st = topk_stability(es.edge_vectors(), n_resamples=min(cfg.n_resamples, STABILITY_RESAMPLES),
                                seed=cfg.bootstrap_seed, confidence=cfg.confidence, progress=False)
            extra.setdefault("stability", {})[side] = plain(st.to_dict())
        except ValueError as exc:
            extra.setdefault("stability", {})[side] = {"error": str(exc)}
    try:
        df = stats.complexity_sensitivity(bs, ts, mask, n_resamples=cfg.n_resamples, seed=cfg.bootstrap_seed,
                                          confidence=cfg.confidence)
        extra["complexity_sensitivity"] = plain(df.to_dict(orient="records"))
    except ValueError as exc:
        extra["complexity_sensitivity_error"] = str(exc)
    return out, figures, extra


def figure_data(base, tuned) -> dict[str, Any]:
    """What the report's figures need: mean |W| and mean W per edge, output entropy per source node.

    Head-level matrices are summed over heads to the qkv graph (``mean_abs`` then is the sum of the heads'
    mean |W|, ``mean`` exactly the qkv graph's mean W; the entropy per node stays per head), which keeps a
    7B model's figure data at qkv size."""
    import numpy as np

    from ..analysis import metrics as M

    g = base.graph
    bs, ts = base.scores, tuned.scores
    out: dict[str, Any] = {
        "entropy_per_node_base": np.nan_to_num(M.output_edge_entropy_per_node(bs, g.edge_mask), nan=0.0).tolist(),
        "entropy_per_node_tuned": np.nan_to_num(M.output_edge_entropy_per_node(ts, g.edge_mask), nan=0.0).tolist(),
        "entropy_sources": list(g.sources), "n": int(bs.shape[0]), "granularity": g.granularity}
    means = {"mean_abs_base": bs.abs().mean(0), "mean_abs_tuned": ts.abs().mean(0),
             "mean_base": bs.mean(0), "mean_tuned": ts.mean(0)}
    if g.granularity == "head":
        means = {k: g.to_qkv(v) for k, v in means.items()}
        g = type(g)(g.n_layers, "qkv", g.model_type)
    m_np = g.edge_mask.cpu().numpy().astype(bool)
    out.update({"sources": list(g.sources), "destinations": list(g.destinations), "edge_mask": m_np.tolist()})
    out.update({k: np.where(m_np, v.cpu().numpy(), 0.0).tolist() for k, v in means.items()})
    return out


def faithfulness_of(model, inputs, edge_scores, pad_token_id: int, cfg: RunConfig) -> dict[str, Any]:
    """The model's faithfulness curve (SPEC §11) on these inputs, for the circuit its mean edge scores pick;
    ``{"error": why}`` where it cannot be computed (reported beside the claims, never silently left out)."""
    import torch

    from ..engine.faithfulness import faithfulness_curve

    try:
        curve = faithfulness_curve(model, inputs, edge_scores.scores.mean(0), edge_scores.graph,
                                   pad_token_id=pad_token_id, batch_size=cfg.batch_size, progress=cfg.progress)
    except (ValueError, NotImplementedError) as exc:
        log.warning("faithfulness of %s not computed: %s", inputs.model, exc)
        return {"error": str(exc)}
    except torch.OutOfMemoryError as exc:  # the scores are kept; the missing curve is named, with the fix
        log.warning("faithfulness of %s ran out of memory: %s", inputs.model, exc)
        return {"error": f"out of memory ({str(exc).splitlines()[0] if str(exc) else 'no message'}); rerun with "
                         "a smaller --batch-size, or --no-faithfulness to skip the curves"}
    return plain(curve.to_dict())
