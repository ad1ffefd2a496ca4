"""One-pass Edge Attribution Patching on raw Hugging Face decoder models (SPEC §3).

    W[u, v] = − Σ_t Σ_d O_u[t, d] · ∂L/∂H_v[t, d]

Forward hooks copy every source output O_u into one buffer; backward (tensor) hooks
receive each destination's *branch-specific* gradient ∂L/∂H_v and immediately contract it
with the buffered outputs of the sources upstream of v, accumulating in fp32. A q, k or v
destination gets its own gradient by giving each projection a private view of the normed
residual and pulling that view's gradient back through the norm (a small vector-Jacobian
product, recomputed from the saved residual). One forward and one backward pass per batch;
no parameter gradients; full-vocabulary logits only at target positions.

At "head" granularity (SPEC §2) the same pass scores per-head edges:

- source ``a{l}.h{i}`` is head i's slice of o_proj's input through o_proj with every other
  head zeroed (o_proj's bias, if any, belongs to no head). OLMo-2 adds
  ``post_attention_layernorm(o_proj(z))`` to the residual: its head i writes the
  frozen-scale share ``w ⊙ y_i · r(y)`` of that norm's output, with y = Σ_i y_i = o_proj(z),
  y_i head i's o_proj output and r(y) = 1/sqrt(mean(y²) + eps) the norm's scale on the whole
  output, so the heads sum to a{l} exactly (up to rounding);
- destination ``a{l}.h{i}<x>`` takes the gradient at the output of branch x (q/k/v_proj,
  or OLMo-2's q_norm/k_norm, which couple the heads), keeps query head i's slice and pulls it
  back to the residual through that branch, recomputed from the residual the layer read (kept
  per layer): through a dense projection, head i's slice times its rows of W and then one
  batched vector-Jacobian product through the norm for a chunk of heads; otherwise (QK-norm,
  weights offloaded or quantized) one batched VJP of the whole branch, run through the
  modules' own forward, with the other heads' gradient zeroed. Rotary embedding and the head
  reshape act per head, so head i's slice of the gradient at the branch output is exactly the
  gradient through head i. A layer's 3H + 1 destinations are contracted in one product;
- grouped-query attention is ungrouped while scoring, as MIB/TransformerLens do: the k and v
  branch outputs are repeated per query head (what ``repeat_kv`` does inside attention) and
  the attention module's ``num_key_value_groups`` is set to 1, the same computation; the
  gradient at the repeated tensor then splits kv-head g's gradient by query head.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

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
    delta: torch.Tensor | None = None  # contracted instead of ``outputs`` when set (EAP-IG's O − O')
    head_layers: dict[int, "_HeadLayer"] = field(default_factory=dict)  # "head" granularity only
    attn_inputs: dict[int, torch.Tensor] = field(default_factory=dict)  # "head": the residual q/k/v read
    o_inputs: dict[int, torch.Tensor] = field(default_factory=dict)  # "head", post-norm: o_proj's input
    score_dtype: ClassVar[torch.dtype] = torch.float32  # of the accumulator (tests raise it to check identities)

    def __post_init__(self) -> None:
        self.has_padding = not bool(self.token_mask.bool().all())

    def allocate(self, hidden: torch.Tensor) -> None:
        B, T, d = hidden.shape
        self.outputs = hidden.new_zeros((B, self.graph.n_src, T, d))
        self.scores = torch.zeros((B, self.graph.n_src, self.graph.n_dst), dtype=self.score_dtype,
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
        o = (self.outputs if self.delta is None else self.delta)[:, :k].reshape(B, k, T * d)
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
        out = out.to(self.scores.dtype)
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
        k = self.graph.n_upstream(self.graph.dst_per_layer * layer)
        x = self.outputs[:, 0]
        for i in range(1, k):
            x = x + self.outputs[:, i]
        return x

    def flush_layer(self, layer: int) -> None:
        got = self.pending.pop(layer, {})
        if self.graph.granularity == "head":
            self.flush_heads(layer, got)
            return
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

    def flush_heads(self, layer: int, got: dict[str, torch.Tensor]) -> None:
        """"head" granularity: per branch, chunks of query heads are pulled back to the residual together
        (:meth:`_HeadLayer.residual_grads`); then all of the layer's destinations are contracted in one
        product (one read of the source buffer: several times faster than a product per chunk, for a
        transient of 3H+1 gradients)."""
        hl = self.head_layers[layer]
        branches = [b for b in QKV if b in got]
        x = self.attn_inputs.pop(layer, None)
        dsts: list[int] = []
        grads: list[torch.Tensor] = []
        if branches:
            x = self.residual(layer) if x is None else x
            with torch.enable_grad():
                xs = x.detach().requires_grad_(True)
                h = xs if hl.attn_norm is None else hl.attn_norm.forward(xs)
                for b in branches:
                    out = None if hl.dense_weight(b) is not None else hl.branch_output(b, h)
                    for c0 in range(0, hl.n_heads, HEAD_CHUNK):
                        heads = range(c0, min(c0 + HEAD_CHUNK, hl.n_heads))
                        dsts += [self.graph.attn_dst(layer, b, i) for i in heads]
                        grads += list(hl.residual_grads(b, got[b], heads, xs, h, out).unbind(0))
            del h, xs
        if "m" in got:
            dsts.append(self.graph.mlp_dst(layer))
            grads.append(got["m"])
        if dsts:
            self.contract(dsts, grads)

    def store_heads(self, layer: int, z: torch.Tensor, post_norm: tuple[nn.Module, torch.Tensor] | None = None
                    ) -> None:
        """Store layer ``layer``'s per-head sources from o_proj's input ``z`` (see the module docstring);
        ``post_norm`` = (norm, its input y) for a family that norms the attention output (OLMo-2)."""
        hl = self.head_layers[layer]
        with torch.no_grad():
            bias = getattr(hl.o_proj, "bias", None) is not None and _dense_weight(hl.o_proj) is None
            zero = hl.o_proj.forward(torch.zeros_like(z[..., :1, :])) if bias else None
            if post_norm is not None:
                norm, y = post_norm
                eps = _norm_eps(norm)
                scale = torch.rsqrt(_at_least_fp32(y).pow(2).mean(-1, keepdim=True) + eps)
            W = _dense_weight(hl.o_proj)
            for c0 in range(0, hl.n_heads, HEAD_CHUNK):
                heads = range(c0, min(c0 + HEAD_CHUNK, hl.n_heads))
                if W is not None:  # head i's slice of z through its columns of W_O
                    zh = z.unflatten(-1, (hl.n_heads, hl.head_dim))[..., c0:heads.stop, :]
                    wh = W.unflatten(1, (hl.n_heads, hl.head_dim))[:, c0:heads.stop]
                    parts = torch.einsum("...ck,dck->c...d", zh, wh)
                else:  # weights not in memory (offloaded): o_proj's own forward on per-head masked inputs
                    parts = hl.o_proj.forward(hl.masked_heads(z, heads))
                    if zero is not None:
                        parts = parts - zero
                if post_norm is not None:  # w ⊙ v as norm(v) · sqrt(mean(v²) + eps): no weights read here
                    v = _at_least_fp32(parts) * scale.to(parts.device)
                    parts = norm.forward(v) * torch.sqrt(v.pow(2).mean(-1, keepdim=True) + eps)
                for c, i in enumerate(heads):
                    self.store(self.graph.attn_src(layer, i), parts[c])


HEAD_CHUNK = 8  # query heads whose vector-Jacobian products / head outputs are computed together


@dataclass
class _HeadLayer:
    """One decoder layer's modules at "head" granularity: the branches from the residual to the q/k/v
    outputs the hooks see (recomputed for the VJP) and the output projection that splits by head."""

    attn_norm: nn.Module | None
    projs: dict[str, nn.Module]
    branch_norms: dict[str, nn.Module | None]  # OLMo-2's q_norm / k_norm after the projections
    o_proj: nn.Module
    n_heads: int
    n_rep: int  # query heads per k/v head
    head_dim: int

    def dense_weight(self, branch: str) -> torch.Tensor | None:
        """The projection's weight when branch output = normed residual @ W.T + b (no QK-norm) and W is
        an ordinary dense tensor in memory; None otherwise (the branch is then differentiated whole)."""
        return None if self.branch_norms.get(branch) is not None else _dense_weight(self.projs[branch])

    def branch_output(self, branch: str, h: torch.Tensor) -> torch.Tensor:
        """What the branch's hook sees, recomputed from the normed residual ``h`` (modules' forward, so an
        offloaded module loads its weights)."""
        p = self.projs[branch].forward(h)
        norm = self.branch_norms.get(branch)
        return p if norm is None else norm.forward(p)

    def residual_grads(self, branch: str, grad: torch.Tensor, heads: range, xs: torch.Tensor, h: torch.Tensor,
                       out: torch.Tensor | None) -> torch.Tensor:
        """[len(heads), *xs.shape]: the gradient at the residual ``xs`` through query head i's ``branch``
        only, from ``grad`` at the (ungrouped) branch output. With a dense projection weight: head i's
        slice of ``grad`` times its rows of W, then one batched VJP through the norm; otherwise one batched
        VJP of ``out`` (the branch recomputed from ``h``) with the other heads' gradient zeroed."""
        W = self.dense_weight(branch)
        if W is None:
            (gx,) = torch.autograd.grad(out, xs, self.masked(branch, grad, heads), retain_graph=True,
                                        is_grads_batched=True)
            return gx
        hd, rep = self.head_dim, 1 if branch == "q" else self.n_rep
        g = grad.unflatten(-1, (self.n_heads, hd))[..., heads.start:heads.stop, :]
        w = W.unflatten(0, (W.shape[0] // hd, hd))[[i // rep for i in heads]]
        gh = torch.einsum("...ck,ckd->c...d", g, w.to(g.dtype))
        if h is xs:
            return gh
        (gx,) = torch.autograd.grad(h, xs, gh, retain_graph=True, is_grads_batched=True)
        return gx

    def masked(self, branch: str, grad: torch.Tensor, heads: range) -> torch.Tensor:
        """[len(heads), *grad.shape[:-1], width]: query head i's slice of ``grad`` (taken at the ungrouped
        branch output) placed where head i's q, or its k/v head's k/v, sits in the branch output."""
        hd = self.head_dim
        rep = 1 if branch == "q" else self.n_rep
        out = grad.new_zeros((len(heads), *grad.shape[:-1], self.n_heads * hd // rep))
        for c, i in enumerate(heads):
            g = i // rep
            out[c, ..., g * hd:(g + 1) * hd] = grad[..., i * hd:(i + 1) * hd]
        return out

    def masked_heads(self, z: torch.Tensor, heads: range) -> torch.Tensor:
        """[len(heads), *z.shape]: o_proj's input with every head but one zeroed, per head."""
        hd = self.head_dim
        out = z.new_zeros((len(heads), *z.shape))
        for c, i in enumerate(heads):
            out[c, ..., i * hd:(i + 1) * hd] = z[..., i * hd:(i + 1) * hd]
        return out

    def ungroup(self, t: torch.Tensor) -> torch.Tensor:
        """k/v [..., H_kv·d_h] → [..., H·d_h], kv head g repeated for its query heads (``repeat_kv``'s order)."""
        if self.n_rep == 1:
            return t.view_as(t)
        *lead, width = t.shape
        kv = width // self.head_dim
        t = t.view(*lead, kv, 1, self.head_dim).expand(*lead, kv, self.n_rep, self.head_dim)
        return t.reshape(*lead, kv * self.n_rep * self.head_dim)


def _dense_weight(module: nn.Module) -> torch.Tensor | None:
    """An ``nn.Linear``'s weight when it is an ordinary floating-point [out, in] tensor in memory (not
    offloaded to ``meta``, not quantized); None otherwise."""
    w = getattr(module, "weight", None)
    if (isinstance(module, nn.Linear) and isinstance(w, torch.Tensor) and w.device.type != "meta"
            and w.is_floating_point() and tuple(w.shape) == (module.out_features, module.in_features)):
        return w
    return None


def _norm_eps(norm: nn.Module) -> float:
    for name in ("variance_epsilon", "eps", "epsilon"):
        if isinstance(getattr(norm, name, None), float):
            return getattr(norm, name)
    raise AttributionError(f"'head' granularity: cannot read the epsilon of {type(norm).__name__}, the norm on "
                           "the attention output")


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

    regrouped: list[tuple[nn.Module, int]] = []
    try:
        fwd(get_module(model, spec.embed), embed_out)
        for l, layer in enumerate(layers):
            fwd(get_module(layer, spec.mlp_source), lambda o, s=graph.mlp_src(l): scorer.store(s, o))
            if graph.granularity == "head":
                _head_hooks(l, layer, scorer, handles, regrouped, fwd, pre)
                continue
            fwd(get_module(layer, spec.attn_source), lambda o, s=graph.attn_src(l): scorer.store(s, o))
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
        _remove_hooks(handles, regrouped)


def _ungroup_kv(attn: nn.Module, regrouped: list[tuple[nn.Module, int]]) -> None:
    """Set ``attn.num_key_value_groups`` to 1 (the caller's hooks repeat k/v per query head), recording the
    value it had in ``regrouped`` for :func:`_remove_hooks` to restore."""
    regrouped.append((attn, attn.num_key_value_groups))
    attn.num_key_value_groups = 1


def _remove_hooks(handles: list[Any], regrouped: list[tuple[nn.Module, int]]) -> None:
    """Undo a hook context: remove every hook handle and restore each regrouped attention module."""
    for h in handles:
        h.remove()
    for attn, groups in regrouped:
        attn.num_key_value_groups = groups


def _head_hooks(l: int, layer: nn.Module, scorer: _Scorer, handles: list[Any],
                regrouped: list[tuple[nn.Module, int]], fwd: Callable, pre: Callable) -> None:
    """"head" granularity hooks of decoder layer ``l`` (see the module docstring); an attention module
    whose ``num_key_value_groups`` is changed is recorded in ``regrouped`` with its value, to restore."""
    spec = scorer.spec
    attn = get_module(layer, spec.attn)
    o_proj = get_module(layer, spec.o_proj)
    groups = getattr(attn, "num_key_value_groups", None)
    head_dim = getattr(attn, "head_dim", None)
    if not isinstance(groups, int) or not isinstance(head_dim, int) or o_proj.in_features % head_dim:
        raise AttributionError(f"'head' granularity: {type(attn).__name__} has no integer num_key_value_groups "
                               "and head_dim; this attention module cannot be split into heads")
    hl = _HeadLayer(attn_norm=get_module(layer, spec.attn_norm) if spec.attn_norm else None,
                    projs={b: get_module(layer, getattr(spec, f"{b}_proj")) for b in QKV},
                    branch_norms={b: get_module(layer, n) for b, n in (("q", spec.q_norm), ("k", spec.k_norm)) if n},
                    o_proj=o_proj, n_heads=o_proj.in_features // head_dim, n_rep=groups, head_dim=head_dim)
    if hl.n_heads != scorer.graph.n_heads:
        raise AttributionError(f"graph has {scorer.graph.n_heads} heads per layer, layer {l} has {hl.n_heads}; "
                               "build it with ResidualGraph.from_model(model, 'head')")
    scorer.head_layers[l] = hl

    def o_proj_hook(mod, args, kwargs, out):
        z = args[0] if args else kwargs["input"]
        if spec.norm_position == "pre":
            scorer.store_heads(l, z)
        else:  # the source is the norm on o_proj's output: split when that norm runs
            scorer.o_inputs[l] = z.detach()
    handles.append(o_proj.register_forward_hook(o_proj_hook, with_kwargs=True))
    if spec.norm_position == "post":
        def post_norm_hook(mod, args, kwargs, out):
            y = args[0] if args else kwargs["hidden_states"]
            scorer.store_heads(l, scorer.o_inputs.pop(l), (mod, y))
        handles.append(get_module(layer, spec.attn_source).register_forward_hook(post_norm_hook, with_kwargs=True))

    def keep_input(x: torch.Tensor) -> torch.Tensor:
        scorer.attn_inputs[l] = x.detach()
        return x
    pre(get_module(layer, spec.attn_reader), keep_input)
    pre(get_module(layer, spec.mlp_reader), lambda x: _private_view(x, scorer.layer_hook(l, "m")))
    for b in QKV:
        norm = hl.branch_norms.get(b)
        out_mod = hl.projs[b] if norm is None else norm
        if b == "q":
            fwd(out_mod, lambda o: _private_view(o, scorer.layer_hook(l, "q")))
        else:
            fwd(out_mod, lambda o, b=b: _private_view(hl.ungroup(o), scorer.layer_hook(l, b)))
    if groups != 1:
        _ungroup_kv(attn, regrouped)


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


# Set by transformers' checkpointing enable: per module, and on the model (enable_input_require_grads' handles).
_CHECKPOINTING_ATTRS = ("gradient_checkpointing", "_gradient_checkpointing_func")
_REQUIRE_GRADS_ATTRS = ("_require_grads_hooks", "_require_grads_hook")


def _forward_hook_keys(model: nn.Module) -> dict[nn.Module, tuple[set[int], set[int]]]:
    return {m: (set(m._forward_hooks), set(m._forward_pre_hooks)) for m in model.modules()}


def _restore_modes(modes: list[tuple[nn.Module, bool]]) -> None:
    for m, mode in modes:
        m.training = mode


@contextlib.contextmanager
def _execution_mode(model: nn.Module, checkpointing: bool) -> Iterator[None]:
    """Eval mode, or train mode with activation checkpointing; on exit the model is as it was: every
    module's mode and checkpointing settings, and no forward hook that enabling checkpointing added
    (transformers' ``enable_input_require_grads`` hook on the input embeddings, which
    ``activation_checkpointing_disable`` leaves in place)."""
    modes = [(m, m.training) for m in model.modules()]
    if not checkpointing:  # eval mode: no dropout, whatever mode the caller left the model in
        model.eval()
        try:
            yield
        finally:
            _restore_modes(modes)
        return
    dropouts = {k: v for k, v in model.config.to_dict().items()
                if "dropout" in k and isinstance(v, (int, float)) and v > 0}
    if dropouts:
        raise AttributionError(f"checkpointing runs the model in train mode, but its config has non-zero "
                               f"dropout {dropouts}; set them to 0 or attribute without checkpointing")
    missing = object()
    saved = [(m, a, m.__dict__.get(a, missing)) for m in model.modules() for a in _CHECKPOINTING_ATTRS]
    saved += [(model, a, model.__dict__.get(a, missing)) for a in _REQUIRE_GRADS_ATTRS]
    hooks_before = _forward_hook_keys(model)

    def added_hooks() -> list[tuple[nn.Module, int, bool]]:  # (module, hook id, pre-hook?)
        out = []
        for m, (fwd, pre) in _forward_hook_keys(model).items():
            old_fwd, old_pre = hooks_before.get(m, (set(), set()))
            out += [(m, k, False) for k in fwd - old_fwd] + [(m, k, True) for k in pre - old_pre]
        return out

    v5_api = hasattr(model, "activation_checkpointing_enable")  # transformers >= 5
    disable = model.activation_checkpointing_disable if v5_api else model.gradient_checkpointing_disable
    added = None
    try:
        if v5_api:
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        added = added_hooks()
        model.train()  # HF checkpoints decoder layers only in train mode; dropout was checked to be 0
        yield
    finally:
        disable()
        for m, k, is_pre in added_hooks() if added is None else added:
            hook_dicts = ((m._forward_pre_hooks, m._forward_pre_hooks_with_kwargs) if is_pre else
                          (m._forward_hooks, m._forward_hooks_with_kwargs, m._forward_hooks_always_called))
            for d in hook_dicts:
                d.pop(k, None)
        for m, a, value in saved:
            if value is missing:
                m.__dict__.pop(a, None)
            else:
                m.__dict__[a] = value
        _restore_modes(modes)


def execution_device(model: nn.Module) -> torch.device:
    """Where the model's inputs go (:func:`eapbench.models.input_device`); a model whose weights are
    all on ``meta`` with no accelerate hook to load them is an :class:`AttributionError`."""
    try:
        return input_device(model)
    except ValueError as exc:
        raise AttributionError(str(exc)) from None


def attribute(model: nn.Module, input_ids: torch.Tensor, loss_mask: torch.Tensor, *,
              graph: ResidualGraph | None = None, attention_mask: torch.Tensor | None = None,
              checkpointing: bool = False, return_loss: bool = False, method: str = "eap",
              steps: int | None = None, baseline: torch.Tensor | None = None):
    """EAP edge scores of every sample in the batch: float32 [batch, n_src, n_dst] on the CPU.

    ``loss_mask[b, t]`` marks token t as a target predicted from position t−1; sample b's
    loss is the mean NLL over its targets. Scores are zero off ``graph.edge_mask``.
    ``checkpointing=True`` recomputes each decoder layer in the backward pass (HF gradient
    checkpointing) to cut activation memory on long sequences. With ``return_loss`` the
    per-sample losses are returned too, as ``(scores, losses)``.

    ``method="eap-ig"`` integrates the gradients over ``steps`` interpolation steps (default 5) from
    ``baseline`` (None: zero ablation; or corrupted token ids shaped like ``input_ids``) to the
    clean input (SPEC §11, :mod:`eapbench.engine.integrated_gradients`); losses stay the clean ones.
    """
    spec = arch_spec(model)
    graph = graph or ResidualGraph.from_model(model)
    device = execution_device(model)
    input_ids = input_ids.to(device)
    loss_mask = loss_mask.to(device).bool()
    attention_mask = (torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)).long()
    _validate(model, graph, spec, input_ids, loss_mask, attention_mask)
    from . import integrated_gradients as ig
    steps = ig.check_method(model, input_ids, method, steps, baseline)

    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    if method == "eap-ig":
        scores, losses = ig.ig_scores(model, graph, spec, input_ids, loss_mask, attention_mask, position_ids,
                                      steps=steps, baseline=baseline, checkpointing=checkpointing)
        return (scores, losses) if return_loss else scores
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
                 cleanup: bool = False, memory_budget: str | int | None = None, method: str = "eap",
                 steps: int | None = None, baseline: AttributionInputs | None = None,
                 sample_cache: str | Path | None = None) -> EdgeScores:
    """Score every sample of ``inputs`` in batches (right padding), with a progress bar.

    ``method``, ``steps`` and ``baseline`` are :func:`attribute`'s (EAP-IG with ``method="eap-ig"``); a
    corrupted ``baseline`` has one row per sample, as long as the sample's clean row.

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
    ``meta`` records ``resumed_batches`` and ``computed_batches``, and ``method``, ``steps`` and
    ``baseline`` ("zero" or "tokens"). An EAP-IG batch's key adds the method, steps and baseline ids.

    With ``sample_cache`` (a folder), every sample's scores and loss are kept there under a key of its own
    (:func:`sample_key`: ``cache_key``, the graph, dtype, device, method, the sample's token ids, prompt length,
    ``t_cut`` and baseline ids), and a sample found there is not attributed again — by this call or any
    later one, e.g. another pair that shares the model and the sample. Only the missing samples are
    planned into batches, so a reused sample was computed in another batch than a fresh run would put it
    in: equal up to float summation order (~1e-6 relative on CPU float32), not to the bit. ``meta`` records
    ``shared_samples``. The per-sample files also make the call resumable, so ``resume_dir`` is not used.
    """
    from tqdm.auto import tqdm

    from .planning import describe_plan, plan_batches, resolve_budget

    from . import integrated_gradients as ig
    steps = ig.check_method(model, None, method, steps, None)
    ig.check_baseline_inputs(inputs, baseline, method)
    graph = graph or ResidualGraph.from_model(model)
    param = next(model.parameters())
    device = execution_device(model)
    budget = resolve_budget(memory_budget, device)
    scores = losses = None
    shared: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    sample_paths: list[Path] = []
    if sample_cache is not None:
        resume_dir = None  # the per-sample files resume an interrupted call
        setting = {"model": cache_key, "model_type": graph.model_type, "n_layers": graph.n_layers,
                   "granularity": graph.granularity, "n_heads": getattr(graph, "n_heads", None),
                   "sources": list(graph.sources), "destinations": list(graph.destinations),
                   "dtype": str(param.dtype), "device": str(device), "method": method, "steps": steps}
        for i in range(len(inputs)):
            sample_paths.append(Path(sample_cache) / f"sample-{sample_key(setting, inputs, i, baseline)}.pt")
            hit = _load_resumed_batch(sample_paths[i], 1, graph)
            if hit is not None:
                shared[i] = hit
    todo = [i for i in range(len(inputs)) if i not in shared]
    plan = plan_batches(model.config, [len(inputs.input_ids[i]) for i in todo], batch_size=batch_size,
                        budget=budget, checkpointing=checkpointing, dtype=param.dtype,
                        granularity=graph.granularity, device=device.type,
                        names=tuple(inputs.problem_ids[i] for i in todo), method=method, steps=steps,
                        baseline="zero" if baseline is None else "tokens")
    plan = [dataclasses.replace(b, rows=tuple(todo[r] for r in b.rows)) for b in plan]
    if shared:
        first = next(iter(shared.values()))
        scores = torch.zeros((len(inputs), *first[0].shape[1:]), dtype=first[0].dtype)
        losses = torch.zeros(len(inputs), dtype=first[1].dtype)
        for i, (s_i, l_i) in shared.items():
            scores[i], losses[i] = s_i[0], l_i[0]
        log.info("%s: %d of %d samples' scores found in %s (shared with an earlier call), %d to attribute",
                 inputs.model or graph.model_type, len(shared), len(inputs), sample_cache, len(todo))
    summary = describe_plan(plan, budget)
    log.info("attributing %d samples (%s, %d layers, %s) in %d batches%s", len(inputs), graph.model_type,
             graph.n_layers, graph.granularity, len(plan),
             "" if budget is None else f" planned under {budget / 2**30:.2f} GiB (batch size: count {summary['batch_sizes']}, "
                                      f"{summary['checkpointed_batches']} with checkpointing)")
    reused = computed = 0
    paths: list[Path] = []
    for batch in tqdm(plan, desc=f"{method.upper()} {inputs.model or graph.model_type}", disable=not progress):
        ids, attn, mask = inputs.tensors(pad_token_id, list(batch.rows))
        base_ids = None if baseline is None else baseline.tensors(pad_token_id, list(batch.rows))[0]
        path = saved = None
        if resume_dir is not None:
            key = stable_hash({"format": RESUME_FORMAT, "model": cache_key, "model_type": graph.model_type,
                               "n_layers": graph.n_layers, "granularity": graph.granularity,
                               "sources": list(graph.sources), "destinations": list(graph.destinations),
                               "dtype": str(param.dtype), "device": str(device), "t_cut": inputs.t_cut,
                               "prompt_lengths": [inputs.prompt_lengths[i] for i in batch.rows],
                               "ids": ids.tolist(), "attention": attn.tolist(), "targets": mask.tolist(),
                               **({} if method == "eap" else  # plain EAP keeps the keys it always had
                                  {"method": method, "steps": steps,
                                   "baseline": None if base_ids is None else base_ids.tolist()})}, 24)
            path = Path(resume_dir) / f"batch-{key}.pt"
            paths.append(path)
            saved = _load_resumed_batch(path, ids.shape[0], graph)
        if saved is not None:
            s, l = saved
            reused += 1
        else:
            s, l = attribute(model, ids, mask, graph=graph, attention_mask=attn, checkpointing=batch.checkpointing,
                             return_loss=True, method=method, steps=steps, baseline=base_ids)
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
        for k, i in enumerate(batch.rows if sample_cache is not None and saved is None else ()):
            try:
                atomic_save(sample_paths[i], lambda p, k=k: torch.save({"scores": s[k:k + 1].clone(),
                                                                         "losses": l[k:k + 1].clone()}, p))
            except OSError as exc:
                log.warning("could not save a sample's scores to %s: %s", sample_paths[i], exc)
    if resume_dir is not None:
        log.info("%s: resumed %d of %d batches from %s, computed %d", inputs.model or graph.model_type, reused,
                 len(plan), resume_dir, computed)
        if cleanup:
            for path in paths:
                path.unlink(missing_ok=True)
    meta = {"batch_size": batch_size, "dtype": str(param.dtype).replace("torch.", ""),
            "device": str(device), "granularity": graph.granularity, "t_cut": inputs.t_cut, "model": inputs.model,
            "resumed_batches": reused, "computed_batches": computed, "plan": summary, "method": method,
            "steps": steps, "baseline": "zero" if baseline is None else "tokens", "shared_samples": len(shared)}
    return EdgeScores(scores=scores, graph=graph, problem_ids=inputs.problem_ids, losses=losses, meta=meta)


def sample_key(setting: dict[str, Any], inputs: AttributionInputs, i: int,
               baseline: AttributionInputs | None = None) -> str:
    """The key of sample ``i``'s scores in a ``sample_cache``: the scoring ``setting`` (model fingerprint,
    graph, dtype, device, method) and the sample itself (token ids, prompt length, ``t_cut``, baseline ids)."""
    return stable_hash({"format": RESUME_FORMAT, **setting, "ids": list(inputs.input_ids[i]),
                        "prompt_length": inputs.prompt_lengths[i], "t_cut": inputs.t_cut,
                        "baseline": None if baseline is None else list(baseline.input_ids[i])}, 24)
