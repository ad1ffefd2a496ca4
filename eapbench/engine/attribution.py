"""One-pass Edge Attribution Patching on raw Hugging Face decoder models (SPEC §3).

    W[u, v] = − Σ_t Σ_d O_u[t, d] · ∂L/∂H_v[t, d]

Forward hooks copy every source output O_u into one buffer; backward (tensor) hooks
receive each destination's *branch-specific* gradient ∂L/∂H_v and immediately contract it
with the buffered outputs of the sources upstream of v, accumulating in fp32. A q, k or v
destination gets its own gradient by giving each projection a private view of the normed
residual and pulling that view's gradient back through the norm (a small vector-Jacobian
product, recomputed from the saved residual). One forward and one backward pass per batch;
no parameter gradients; full-vocabulary logits only at target positions.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..cache import atomic_save, drop_corrupt, stable_hash
from .architectures import ArchSpec, arch_spec, decoder_layers, get_module
from .graph import QKV, ResidualGraph
from ..models import input_device
from ..records import AttributionInputs

log = logging.getLogger(__name__)


class AttributionError(ValueError):
    """Bad input to :func:`attribute` (raised before any heavy work) or a non-finite result."""


# ---------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------
def _validate(model: nn.Module, graph: ResidualGraph, spec: ArchSpec, input_ids: torch.Tensor,
              loss_mask: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
    if input_ids.dim() != 2:
        raise AttributionError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
    if input_ids.dtype not in (torch.long, torch.int, torch.int32, torch.int64):
        raise AttributionError(f"input_ids must be integer token ids, got dtype {input_ids.dtype}")
    if loss_mask.shape != input_ids.shape:
        raise AttributionError(f"loss_mask shape {tuple(loss_mask.shape)} != input_ids shape "
                               f"{tuple(input_ids.shape)}; loss_mask[b, t] marks token t of row b as a target")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise AttributionError(f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape "
                               f"{tuple(input_ids.shape)}")
    lm = loss_mask.bool()
    if lm[:, 0].any():
        rows = lm[:, 0].nonzero().flatten().tolist()
        raise AttributionError(f"loss_mask marks position 0 as a target in rows {rows}; the first token "
                               "has no preceding position to predict it from")
    empty = (~lm.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise AttributionError(f"loss_mask has no target token in rows {empty}; every sample needs at least "
                               "one answer token to score (check T_cut and the prompt lengths)")
    if attention_mask is not None:
        bad = (lm & ~attention_mask.bool()).any(dim=1).nonzero().flatten().tolist()
        if bad:
            raise AttributionError(f"loss_mask marks padding positions as targets in rows {bad}")
    vocab = getattr(model.config, "vocab_size", None)
    if vocab is not None and (int(input_ids.max()) >= vocab or int(input_ids.min()) < 0):
        raise AttributionError(f"token ids outside [0, {vocab}) for this model; was the input tokenized "
                               "with another model's tokenizer?")
    n_layers = len(decoder_layers(model, spec))
    if graph.n_layers != n_layers or (graph.model_type not in (None, model.config.model_type)):
        raise AttributionError(
            f"graph was built for a {graph.model_type or '?'} model with {graph.n_layers} layers, but this "
            f"model is {model.config.model_type} with {n_layers} layers; build it with "
            "ResidualGraph.from_model(model)")


# ---------------------------------------------------------------------------------------
# the scorer: buffers and hooks for one batch
# ---------------------------------------------------------------------------------------
@dataclass
class _Scorer:
    """Hooks for one batch: source buffer, destination contractions, score accumulator."""

    graph: ResidualGraph
    spec: ArchSpec
    token_mask: torch.Tensor  # [B, T] 1 at real tokens, 0 at padding (positions summed over)
    scores: torch.Tensor = field(init=False)  # [B, n_src, n_dst] fp32
    outputs: torch.Tensor = field(init=False)  # [B, n_src, T, d] model dtype
    pending: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    attn_norms: dict[int, nn.Module | None] = field(default_factory=dict)  # layer -> norm before q/k/v
    leaf: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.has_padding = not bool(self.token_mask.bool().all())

    def allocate(self, hidden: torch.Tensor) -> None:
        B, T, d = hidden.shape
        self.outputs = hidden.new_zeros((B, self.graph.n_src, T, d))
        self.scores = torch.zeros((B, self.graph.n_src, self.graph.n_dst), dtype=torch.float32,
                                  device=hidden.device)

    # -- sources -------------------------------------------------------------------------
    def store(self, src: int, out: torch.Tensor) -> None:
        self.outputs[:, src].copy_(out.detach())

    # -- destinations --------------------------------------------------------------------
    def contract(self, dsts: list[int], grads: list[torch.Tensor]) -> None:
        """scores[:, :k_j, j] = −Σ_{t,d} O[:, :k_j] · g_j for each destination j (k_j its upstream
        sources), in one batched product over the largest k; fp32 accumulation, padding excluded."""
        ks = [self.graph.n_upstream(j) for j in dsts]
        k = max(ks)
        g = torch.stack(grads, dim=-1)  # [B, T, d, m]
        if self.has_padding:
            g = g * self.token_mask[:, :, None, None].to(device=g.device, dtype=g.dtype)
        B, T, d, m = g.shape
        g = g.to(self.outputs.device)  # a dispatched model's layers may sit on other devices than the buffer
        o = self.outputs[:, :k].reshape(B, k, T * d)
        g = g.reshape(B, T * d, m)
        acc = torch.float64 if o.dtype == torch.float64 else torch.float32
        out = None
        if o.dtype == acc:
            out = torch.bmm(o, g.to(acc))
        elif o.is_cuda:  # bf16/fp16 inputs, fp32 accumulation and output, where the backend offers it
            with contextlib.suppress(RuntimeError, TypeError):
                out = torch.bmm(o, g.to(o.dtype), out_dtype=torch.float32)
        if out is None:  # cast a few sources at a time: exact products, fp32 sums
            g32 = g.to(acc)
            chunk = max(1, (1 << 26) // max(1, T * d * B))
            out = torch.cat([torch.bmm(o[:, i:i + chunk].to(acc), g32) for i in range(0, k, chunk)], dim=1)
        out = out.float()
        for col, (j, kj) in enumerate(zip(dsts, ks)):
            self.scores[:, :kj, j] = -out[:, :kj, col]

    def direct_hook(self, dst: int) -> Callable[[torch.Tensor], None]:
        def hook(grad: torch.Tensor) -> None:
            self.contract([dst], [grad])
        return hook

    def layer_hook(self, layer: int, slot: str) -> Callable[[torch.Tensor], None]:
        """At "qkv" granularity a layer's four destinations are contracted together: the MLP's
        gradient (slot "m", already at the residual) waits for q, k and v, whose gradients reach
        their private inputs after the norm and are pulled back through it in :meth:`flush_layer`."""
        def hook(grad: torch.Tensor) -> None:
            got = self.pending.setdefault(layer, {})
            got[slot] = grad
            if len(got) == len(QKV) + 1:
                self.flush_layer(layer)
        return hook

    def residual(self, layer: int) -> torch.Tensor:
        """The residual stream that ``layer``'s attention norm reads, rebuilt from the source buffer: the
        upstream outputs added in layer order in the model dtype, as the decoder adds them, so it is
        the same tensor bit for bit (tested) without keeping a copy of it per layer."""
        k = self.graph.n_upstream(self.graph.attn_dst(layer, QKV[0]))
        x = self.outputs[:, 0]
        for i in range(1, k):
            x = x + self.outputs[:, i]
        return x

    def flush_layer(self, layer: int) -> None:
        got = self.pending.pop(layer, {})
        branches = [b for b in QKV if b in got]
        grads = [got[b] for b in branches]
        norm = self.attn_norms.get(layer)
        if grads and norm is not None:
            x = self.residual(layer)
            with torch.enable_grad():
                xs = x.detach().unsqueeze(0).expand(len(grads), *x.shape).reshape(-1, *x.shape[1:])
                xs = xs.clone().requires_grad_(True)
                (gx,) = torch.autograd.grad(norm.forward(xs), xs, torch.cat(grads, 0))
            grads = list(gx.split(x.shape[0], 0))
        dsts = [self.graph.attn_dst(layer, b) for b in branches]
        if "m" in got:
            dsts.append(self.graph.mlp_dst(layer))
            grads.append(got["m"])
        if dsts:
            self.contract(dsts, grads)


def _private_view(t: torch.Tensor, hook: Callable[[torch.Tensor], None]) -> torch.Tensor:
    """A new autograd node equal to ``t``: its gradient is the one flowing through this reader only."""
    v = t.view_as(t)
    if v.requires_grad:
        v.register_hook(hook)
    return v


def _replace_first_input(hook: Callable[[torch.Tensor], torch.Tensor]):
    """Forward pre-hook (with kwargs) that passes the module's first input (positional or
    ``hidden_states=``) through ``hook``."""
    def pre_hook(module, args, kwargs):
        if args:
            return (hook(args[0]), *args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = hook(kwargs["hidden_states"])
        return args, kwargs
    return pre_hook


@contextlib.contextmanager
def attribution_hooks(model: nn.Module, graph: ResidualGraph, scorer: _Scorer) -> Iterator[None]:
    """Install the scoring hooks for one batch; they are removed on exit, even on error."""
    spec = scorer.spec
    handles: list[Any] = []
    layers = decoder_layers(model, spec)

    def fwd(module: nn.Module, fn: Callable[[torch.Tensor], Any]) -> None:
        def hook(mod, args, out):
            res = fn(out[0] if isinstance(out, tuple) else out)
            if res is not None:
                return res
        handles.append(module.register_forward_hook(hook))

    def pre(module: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        handles.append(module.register_forward_pre_hook(_replace_first_input(fn), with_kwargs=True))

    def embed_out(out: torch.Tensor) -> torch.Tensor:
        scorer.allocate(out)
        leaf = out.detach().requires_grad_(True)  # the graph's only leaf: no parameter gradients
        scorer.leaf = leaf
        scorer.store(0, leaf)
        return leaf

    try:
        fwd(get_module(model, spec.embed), embed_out)
        for l, layer in enumerate(layers):
            fwd(get_module(layer, spec.attn_source), lambda o, s=graph.attn_src(l): scorer.store(s, o))
            fwd(get_module(layer, spec.mlp_source), lambda o, s=graph.mlp_src(l): scorer.store(s, o))
            if graph.granularity == "block":
                pre(get_module(layer, spec.mlp_reader),
                    lambda x, j=graph.mlp_dst(l): _private_view(x, scorer.direct_hook(j)))
                pre(get_module(layer, spec.attn_reader),
                    lambda x, j=graph.attn_dst(l): _private_view(x, scorer.direct_hook(j)))
                continue
            pre(get_module(layer, spec.mlp_reader), lambda x, l=l: _private_view(x, scorer.layer_hook(l, "m")))
            scorer.attn_norms[l] = get_module(layer, spec.attn_norm) if spec.attn_norm else None
            for b in QKV:
                proj = get_module(layer, getattr(spec, f"{b}_proj"))
                pre(proj, lambda x, l=l, b=b: _private_view(x, scorer.layer_hook(l, b)))
        pre(get_module(model, spec.final_norm),
            lambda x: _private_view(x, scorer.direct_hook(graph.logits_dst)))
        yield
    finally:
        for h in handles:
            h.remove()


# ---------------------------------------------------------------------------------------
# loss at target positions only
# ---------------------------------------------------------------------------------------
def _per_sample_loss(model: nn.Module, spec: ArchSpec, hidden: torch.Tensor, input_ids: torch.Tensor,
                     loss_mask: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Mean NLL of each row's targets; logits are computed only where a target is predicted."""
    tgt_b, tgt_t = loss_mask.bool().nonzero(as_tuple=True)
    h = hidden[tgt_b.to(hidden.device), (tgt_t - 1).to(hidden.device)]
    targets = input_ids[tgt_b, tgt_t]
    head = get_module(model, spec.lm_head)
    parts = []
    for i in range(0, h.shape[0], chunk):
        logits = _at_least_fp32(head(h[i:i + chunk]))  # on the head's device, for a dispatched model
        parts.append(F.cross_entropy(logits, targets[i:i + chunk].to(logits.device), reduction="none"))
    nll = torch.cat(parts)
    tgt_b = tgt_b.to(nll.device)
    B = input_ids.shape[0]
    total = torch.zeros(B, dtype=nll.dtype, device=nll.device).index_add(0, tgt_b, nll)
    counts = torch.zeros(B, dtype=nll.dtype, device=nll.device).index_add(0, tgt_b, torch.ones_like(nll))
    return total / counts


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


@contextlib.contextmanager
def _frozen_parameters(model: nn.Module) -> Iterator[None]:
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextlib.contextmanager
def _execution_mode(model: nn.Module, checkpointing: bool) -> Iterator[None]:
    was_training = model.training
    if not checkpointing:  # eval mode: no dropout, whatever mode the caller left the model in
        model.eval()
        try:
            yield
        finally:
            model.train(was_training)
        return
    dropouts = {k: v for k, v in model.config.to_dict().items()
                if "dropout" in k and isinstance(v, (int, float)) and v > 0}
    if dropouts:
        raise AttributionError(f"checkpointing runs the model in train mode, but its config has non-zero "
                               f"dropout {dropouts}; set them to 0 or attribute without checkpointing")
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
        model.activation_checkpointing_enable({"use_reentrant": False})
        disable = model.activation_checkpointing_disable
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        disable = model.gradient_checkpointing_disable
    model.train()  # HF checkpoints decoder layers only in train mode; dropout was checked to be 0
    try:
        yield
    finally:
        disable()
        model.train(was_training)


def execution_device(model: nn.Module) -> torch.device:
    """Where the model's inputs go (:func:`eapbench.models.input_device`); a model whose weights are
    all on ``meta`` with no accelerate hook to load them is an :class:`AttributionError`."""
    try:
        return input_device(model)
    except ValueError as exc:
        raise AttributionError(str(exc)) from None


def attribute(model: nn.Module, input_ids: torch.Tensor, loss_mask: torch.Tensor, *,
              graph: ResidualGraph | None = None, attention_mask: torch.Tensor | None = None,
              checkpointing: bool = False, return_loss: bool = False):
    """EAP edge scores of every sample in the batch: float32 [batch, n_src, n_dst] on the CPU.

    ``loss_mask[b, t]`` marks token t as a target predicted from position t−1; sample b's
    loss is the mean NLL over its targets. Scores are zero off ``graph.edge_mask``.
    ``checkpointing=True`` recomputes each decoder layer in the backward pass (HF gradient
    checkpointing) to cut activation memory on long sequences. With ``return_loss`` the
    per-sample losses are returned too, as ``(scores, losses)``.
    """
    spec = arch_spec(model)
    graph = graph or ResidualGraph.from_model(model)
    device = execution_device(model)
    input_ids = input_ids.to(device)
    loss_mask = loss_mask.to(device).bool()
    attention_mask = (torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)).long()
    _validate(model, graph, spec, input_ids, loss_mask, attention_mask)

    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    scorer = _Scorer(graph=graph, spec=spec, token_mask=attention_mask)
    base = get_module(model, spec.base)
    with _frozen_parameters(model), _execution_mode(model, checkpointing), \
            attribution_hooks(model, graph, scorer), torch.enable_grad():
        hidden = base(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      use_cache=False).last_hidden_state
        losses = _per_sample_loss(model, spec, hidden, input_ids, loss_mask)
        if not torch.isfinite(losses).all():
            bad = (~torch.isfinite(losses)).nonzero().flatten().tolist()
            raise AttributionError(f"non-finite loss for samples {bad} of the batch; check the model's "
                                   "dtype (fp16 overflows) and the inputs")
        torch.autograd.grad(losses.sum(), [scorer.leaf])
        for layer in list(scorer.pending):  # destinations whose gradient never arrived score zero
            scorer.flush_layer(layer)
    scores = scorer.scores.cpu()
    bad_rows = (~torch.isfinite(scores).flatten(1).all(1)).nonzero().flatten().tolist()
    if bad_rows:
        raise AttributionError(f"non-finite gradients: edge scores of samples {bad_rows} (batch rows) contain "
                               "NaN/inf; the model overflowed in backward — try float32 or bfloat16")
    del scorer
    return (scores, losses.detach().cpu()) if return_loss else scores


# ---------------------------------------------------------------------------------------
# many samples
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EdgeScores:
    """Per-sample edge-score matrices of one model on one set of inputs."""

    scores: torch.Tensor  # float32 [n, n_src, n_dst]
    graph: ResidualGraph
    problem_ids: tuple[str, ...]
    losses: torch.Tensor | None = None  # per-sample mean NLL
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def edge_mask(self) -> torch.Tensor:
        return self.graph.edge_mask

    def edge_vectors(self) -> torch.Tensor:
        """[n, n_edges] real-edge scores, row-major edge order (``graph.edge_names()``)."""
        return self.scores[:, self.edge_mask]


RESUME_FORMAT = 2  # part of every resume file's key: bump when the saved layout or the scores change


def _load_resumed_batch(path: Path, n_rows: int, graph: ResidualGraph) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A saved batch's (scores, losses), or None when absent; an unreadable or mis-shaped file is
    named in a warning and deleted (its batch is then computed again)."""
    if not path.is_file():
        return None
    try:
        with warnings.catch_warnings():  # torch's warnings about a garbage file's pickle protocol
            warnings.simplefilter("ignore")
            saved = torch.load(path, map_location="cpu", weights_only=True)
        s, l = saved["scores"], saved["losses"]
        want = (n_rows, len(graph.sources), len(graph.destinations))
        if not (isinstance(s, torch.Tensor) and isinstance(l, torch.Tensor) and tuple(s.shape) == want
                and tuple(l.shape) == (n_rows,)):
            raise ValueError(f"expected scores of shape {want} and {n_rows} losses")
        return s, l
    except Exception as exc:  # any corruption: recompute rather than fail or trust it
        drop_corrupt(path, "attribution resume file", exc)
        return None


def score_inputs(model: nn.Module, inputs: AttributionInputs, *, pad_token_id: int,
                 graph: ResidualGraph | None = None, batch_size: int = 8, checkpointing: bool | str = False,
                 progress: bool = True, resume_dir: str | Path | None = None, cache_key: str = "",
                 cleanup: bool = False, memory_budget: str | int | None = None) -> EdgeScores:
    """Score every sample of ``inputs`` in batches (right padding), with a progress bar.

    Batches: consecutive runs of ``batch_size`` samples, or, with ``memory_budget`` (bytes, a size
    like ``"40GiB"``, or ``"auto"``: 90% of the device's free memory), samples packed by length under
    the budget by :func:`eapbench.engine.planning.plan_batches`, at most ``batch_size`` per batch,
    with activation checkpointing for a batch whose single sample needs it when ``checkpointing`` is
    ``"auto"``. Scores come back in input order and do not depend on the batching (up to float
    summation order). ``meta["plan"]`` records what was chosen.

    With ``resume_dir``, each finished batch is saved there (keyed by ``cache_key`` — pass the
    model's fingerprint —, the graph's granularity and node names, the model's dtype and device,
    ``t_cut`` and the batch's token ids, prompt lengths and masks), so an interrupted run resumes
    at the first unfinished batch; a saved batch is reused bit for bit, an unreadable one is
    recomputed. ``cleanup=True`` deletes this call's batch files once every batch is done (the
    caller then keeps the scores); by default they stay for the next call with the same inputs.
    ``meta`` records ``resumed_batches`` and ``computed_batches``.
    """
    from tqdm.auto import tqdm

    from .planning import describe_plan, plan_batches, resolve_budget

    graph = graph or ResidualGraph.from_model(model)
    param = next(model.parameters())
    device = execution_device(model)
    budget = resolve_budget(memory_budget, device)
    plan = plan_batches(model.config, [len(r) for r in inputs.input_ids], batch_size=batch_size, budget=budget,
                        checkpointing=checkpointing, dtype=param.dtype, granularity=graph.granularity,
                        device=device.type, names=inputs.problem_ids)
    summary = describe_plan(plan, budget)
    log.info("attributing %d samples (%s, %d layers, %s) in %d batches%s", len(inputs), graph.model_type,
             graph.n_layers, graph.granularity, len(plan),
             "" if budget is None else f" planned under {budget / 2**30:.2f} GiB (batch size: count {summary['batch_sizes']}, "
                                      f"{summary['checkpointed_batches']} with checkpointing)")
    scores = losses = None
    reused = computed = 0
    paths: list[Path] = []
    for batch in tqdm(plan, desc=f"EAP {inputs.model or graph.model_type}", disable=not progress):
        ids, attn, mask = inputs.tensors(pad_token_id, list(batch.rows))
        path = saved = None
        if resume_dir is not None:
            key = stable_hash({"format": RESUME_FORMAT, "model": cache_key, "model_type": graph.model_type,
                               "n_layers": graph.n_layers, "granularity": graph.granularity,
                               "sources": list(graph.sources), "destinations": list(graph.destinations),
                               "dtype": str(param.dtype), "device": str(device), "t_cut": inputs.t_cut,
                               "prompt_lengths": [inputs.prompt_lengths[i] for i in batch.rows],
                               "ids": ids.tolist(), "attention": attn.tolist(), "targets": mask.tolist()}, 24)
            path = Path(resume_dir) / f"batch-{key}.pt"
            paths.append(path)
            saved = _load_resumed_batch(path, ids.shape[0], graph)
        if saved is not None:
            s, l = saved
            reused += 1
        else:
            s, l = attribute(model, ids, mask, graph=graph, attention_mask=attn, checkpointing=batch.checkpointing,
                             return_loss=True)
            computed += 1
            if path is not None:
                try:
                    atomic_save(path, lambda p, s=s, l=l: torch.save({"scores": s, "losses": l}, p))
                except OSError as exc:  # a full disk or a vanished folder costs the resume, not the run
                    log.warning("could not save attribution resume file %s: %s", path, exc)
        if scores is None:
            scores = torch.zeros((len(inputs), *s.shape[1:]), dtype=s.dtype)
            losses = torch.zeros(len(inputs), dtype=l.dtype)
        rows = torch.tensor(batch.rows)
        scores[rows], losses[rows] = s, l
    if resume_dir is not None:
        log.info("%s: resumed %d of %d batches from %s, computed %d", inputs.model or graph.model_type, reused,
                 len(plan), resume_dir, computed)
        if cleanup:
            for path in paths:
                path.unlink(missing_ok=True)
    meta = {"batch_size": batch_size, "dtype": str(param.dtype).replace("torch.", ""),
            "device": str(device), "granularity": graph.granularity, "t_cut": inputs.t_cut, "model": inputs.model,
            "resumed_batches": reused, "computed_batches": computed, "plan": summary}
    return EdgeScores(scores=scores, graph=graph, problem_ids=inputs.problem_ids, losses=losses, meta=meta)
