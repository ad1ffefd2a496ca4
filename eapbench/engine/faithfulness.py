"""Circuit faithfulness of edge scores, MIB circuit-localization style (SPEC §11).

For each k in ``percents`` the top ⌊k/100 · |E|⌋ real edges form the circuit (ranked by signed score
for CPR, by |score| for CMD, as MIB does), the circuit is pruned to its input → logits connected part
(MIB's ``Graph.prune``), and every edge outside it is mean-ablated: destination v reads

    H̃_v = Σ_{u → v in circuit} O_u + Σ_{u → v not in circuit} Ō_u

where O_u are the source outputs *of the patched forward itself* and Ō_u the reference (mean)
activation. Implemented with hooks in one forward pass per batch and circuit: sources record
D_u = Ō_u − O_u as the patched forward produces them, and each destination's input becomes
H_v + Σ_{ablated u} D_u (H_v the residual it would read). q, k and v are separate destinations at
"qkv" granularity: pre-norm families feed each projection norm(H + Δ_branch), post-norm OLMo-2
feeds the raw H + Δ_branch. A destination with no ablated in-edge is left untouched, so the full
circuit reproduces the model bit for bit.

At "head" granularity (SPEC §2) the same rule holds per head:

- source ``a{l}.h{i}`` is recorded in the patched forward from o_proj's input z of that forward: head i's
  slice of z through its columns of o_proj (OLMo-2: the frozen-scale share ``w ⊙ y_i · r(y)`` of the
  post-attention norm, y = o_proj(z)), as :mod:`eapbench.engine.attribution` defines it; Ō per head;
- destination ``a{l}.h{i}<x>`` feeds branch x of query head i alone from its own patched residual
  H + Δ: head i's slice of the branch output (norm → its rows of the projection; OLMo-2: the whole
  projection and QK-norm, which spans the heads, then head i's slice) replaces the model's. k and v are
  ungrouped per query head (GQA), as attribution does: in a layer with a patched k/v destination the
  branch outputs are repeated per query head and the attention module's ``num_key_value_groups`` set
  to 1 for the pass (the same computation when nothing differs). Heads whose inputs ablate the same
  sources share one shifted residual; up to ``HEAD_CHUNK`` distinct shifts are summed in one product over
  the difference buffer (:meth:`_Patch.shifted_many`).

Memory: the patched forward keeps one [B, T, d] difference per source with an ablated out-edge, in the
model dtype: up to 2L + 1 at "qkv", L·(H + 1) + 1 at "head" (H query heads), so a head-level curve of a
large model needs a batch about H/2 times smaller than a qkv-level one.

Definitions (documented choices):

- Metric m: mean over samples of the mean log-likelihood of each sample's target tokens
  (``loss_mask``, the model's own answer), i.e. minus the attribution loss of SPEC §3.
- f(k) = (m(circuit_k) − m(∅)) / (m(full) − m(∅)); ∅ ablates every edge, full ablates none.
- Reference Ō_u: the mean of source u's output over every real (non-padding) token of every
  sample of the evaluated inputs (token-weighted), from a clean forward. MIB's "mean" averages
  per sample over positions first; the token-weighted mean is the one well defined for
  variable-length sequences without per-position means.
- Areas, as MIB's ``evaluate_area_under_curve``: trapezoid rule over x = k/100 (the fraction of
  edges) at the listed points only (no point at 0), so with the default points x spans
  [0.001, 1]. CPR = ∫ f_signed dx (higher is better), CMD = ∫ |1 − f_abs| dx (lower is better).
- Ranking ties are broken by the graph's row-major edge order (earlier edge first, a stable sort;
  MIB's ``torch.argsort`` leaves ties unspecified).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..records import AttributionInputs
from .architectures import ArchSpec, arch_spec, decoder_layers, get_module
from .attribution import AttributionError, execution_device
from .attribution import _dense_weight, _norm_eps  # the same weight and norm access as attribution's heads
from .attribution import _replace_first_input as _replace_first
from .attribution import _remove_hooks, _ungroup_kv  # the same GQA regrouping and hook teardown
from .graph import QKV, ResidualGraph

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_PERCENTS", "FaithfulnessCurve", "circuit_mask", "faithfulness", "faithfulness_curve",
           "n_selected", "patched_loglik", "prune_circuit", "source_means"]

DEFAULT_PERCENTS: tuple[float, ...] = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)
SUPPORTED_GRANULARITIES = ("qkv", "block", "head")
HEAD_CHUNK = 8  # heads whose outputs / branch slices are computed together
CAST_ELEMENTS = 1 << 26  # at most this many buffer elements are cast to the accumulation dtype at once


@dataclass(frozen=True)
class FaithfulnessCurve:
    """f(k) for signed (CPR) and absolute (CMD) rankings, their areas and the raw metric values."""

    percents: tuple[float, ...]
    f_signed: tuple[float, ...]
    f_abs: tuple[float, ...]
    cpr: float
    cmd: float
    m_full: float
    m_empty: float
    n_samples: int
    n_edges: int
    n_selected: tuple[int, ...]  # ⌊k/100 · n_edges⌋ edges taken before pruning
    n_kept_signed: tuple[int, ...]  # edges left after pruning
    n_kept_abs: tuple[int, ...]
    m_signed: tuple[float, ...]
    m_abs: tuple[float, ...]
    granularity: str
    ablation: str = "mean"
    pruned: bool = True
    seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------
# circuits
# ---------------------------------------------------------------------------------------
def _check_graph(graph: ResidualGraph) -> None:
    if graph.granularity not in SUPPORTED_GRANULARITIES:
        raise ValueError(f"faithfulness does not support {graph.granularity!r} granularity yet; "
                         f"use one of {SUPPORTED_GRANULARITIES}")


def _dst_owner(graph: ResidualGraph) -> list[int]:
    """The source node whose input each destination column is (−1 for ``logits``)."""
    owner = [-1] * graph.n_dst
    for l in range(graph.n_layers):
        if graph.granularity == "head":
            for b in QKV:
                for i in range(graph.n_heads):
                    owner[graph.attn_dst(l, b, i)] = graph.attn_src(l, i)
        else:
            for b in (QKV if graph.granularity == "qkv" else (None,)):
                owner[graph.attn_dst(l, b)] = graph.attn_src(l)
        owner[graph.mlp_dst(l)] = graph.mlp_src(l)
    return owner


def prune_circuit(circuit: torch.Tensor, graph: ResidualGraph) -> torch.Tensor:
    """Keep only edges on an input → logits path (MIB ``Graph.prune``): repeatedly drop nodes with no
    kept out-edge or no kept in-edge (``input`` always has one) and the edges touching them."""
    _check_graph(graph)
    c = circuit.clone().bool() & graph.edge_mask
    owner = torch.tensor(_dst_owner(graph))
    is_logits = owner < 0
    while True:
        has_out = c.any(1)
        has_in = torch.zeros(graph.n_src, dtype=torch.bool)
        fed = c.any(0) & ~is_logits
        has_in[owner[fed]] = True
        has_in[0] = True
        node = has_out & has_in
        dst_ok = is_logits | node[owner.clamp(min=0)]
        new = c & node[:, None] & dst_ok[None, :]
        if torch.equal(new, c):
            return c
        c = new


def _scores_matrix(scores: Any, graph: ResidualGraph) -> torch.Tensor:
    s = getattr(scores, "scores", scores)  # EdgeScores: its per-sample matrices
    s = torch.as_tensor(s).detach().cpu().double()
    if s.dim() == 3:
        s = s.mean(0)
    if tuple(s.shape) != (graph.n_src, graph.n_dst):
        raise ValueError(f"scores must be [n_src, n_dst] = [{graph.n_src}, {graph.n_dst}] (or [n, n_src, n_dst], "
                         f"averaged over samples) for this graph, got shape {tuple(s.shape)}")
    if not torch.isfinite(s[graph.edge_mask]).all():
        raise ValueError("scores contain NaN/inf on real edges")
    return s


def n_selected(percent: float, n_edges: int) -> int:
    """⌊percent/100 · n_edges⌋ (MIB's ``int(pct * n)``), guarded against float round-down."""
    return min(n_edges, int(math.floor(percent * n_edges / 100.0 + 1e-9)))


def circuit_mask(scores: Any, graph: ResidualGraph, n: int, *, absolute: bool, prune: bool = True) -> torch.Tensor:
    """Bool [n_src, n_dst]: the top-``n`` real edges by score (|score| if ``absolute``), ties in row-major
    edge order, optionally pruned to the input → logits connected part."""
    _check_graph(graph)
    s = _scores_matrix(scores, graph)
    mask = graph.edge_mask
    values = s[mask].numpy()
    key = -np.abs(values) if absolute else -values
    order = np.argsort(key, kind="stable")[:n]
    flat = torch.zeros(int(mask.sum()), dtype=torch.bool)
    flat[torch.from_numpy(order)] = True
    out = torch.zeros_like(mask)
    out[mask] = flat
    return prune_circuit(out, graph) if prune else out


# ---------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # input_ids, attention_mask, loss_mask


def _batches(inputs: AttributionInputs | torch.Tensor, loss_mask: torch.Tensor | None,
             attention_mask: torch.Tensor | None, pad_token_id: int | None, batch_size: int) -> list[Batch]:
    if isinstance(inputs, AttributionInputs):
        if pad_token_id is None:
            raise ValueError("pad_token_id is required with AttributionInputs (the tokenizer's pad or eos id)")
        out = []
        for s in range(0, len(inputs), batch_size):
            ids, attn, lm = inputs.tensors(pad_token_id, slice(s, s + batch_size))
            out.append((ids, attn, lm))
        return out
    ids = torch.as_tensor(inputs)
    if loss_mask is None:
        raise ValueError("loss_mask is required with input_ids tensors")
    if ids.dim() != 2 or loss_mask.shape != ids.shape:
        raise AttributionError(f"input_ids must be [batch, seq] and loss_mask the same shape; got "
                               f"{tuple(ids.shape)} and {tuple(loss_mask.shape)}")
    attn = torch.ones_like(ids) if attention_mask is None else attention_mask
    if attn.shape != ids.shape:
        raise AttributionError(f"attention_mask shape {tuple(attn.shape)} != input_ids shape {tuple(ids.shape)}")
    return [(ids[s:s + batch_size], attn[s:s + batch_size].long(), loss_mask[s:s + batch_size].bool())
            for s in range(0, ids.shape[0], batch_size)]


def _validate_batch(model: nn.Module, ids: torch.Tensor, attn: torch.Tensor, lm: torch.Tensor) -> None:
    if lm[:, 0].any():
        raise AttributionError("loss_mask marks position 0 as a target; it has no preceding position")
    if (~lm.any(1)).any():
        rows = (~lm.any(1)).nonzero().flatten().tolist()
        raise AttributionError(f"loss_mask has no target token in rows {rows}")
    if (lm & ~attn.bool()).any():
        raise AttributionError("loss_mask marks padding positions as targets")
    vocab = getattr(model.config, "vocab_size", None)
    if vocab is not None and (int(ids.max()) >= vocab or int(ids.min()) < 0):
        raise AttributionError(f"token ids outside [0, {vocab}) for this model")


def _check_model_graph(model: nn.Module, graph: ResidualGraph, spec: ArchSpec) -> None:
    _check_graph(graph)
    n_layers = len(decoder_layers(model, spec))
    if graph.n_layers != n_layers or graph.model_type not in (None, model.config.model_type):
        raise AttributionError(f"graph was built for a {graph.model_type or '?'} model with {graph.n_layers} "
                               f"layers, but this model is {model.config.model_type} with {n_layers} layers")


# ---------------------------------------------------------------------------------------
# attention heads ("head" granularity)
# ---------------------------------------------------------------------------------------
def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


@dataclass
class _Heads:
    """One decoder layer's attention split by query head: per-head sources from o_proj's input, and head i's
    slice of each (ungrouped) branch output computed from a residual of its own."""

    attn: nn.Module
    attn_norm: nn.Module | None  # between the residual and q/k/v (pre-norm families)
    projs: dict[str, nn.Module]
    branch_norms: dict[str, nn.Module]  # QK-norm after the projections (OLMo-2; spans every head)
    o_proj: nn.Module
    post_norm: nn.Module | None  # the norm on the attention output, which is the source (OLMo-2)
    n_heads: int
    n_rep: int  # query heads per k/v head
    head_dim: int

    def outputs(self, z: torch.Tensor, heads: Sequence[int], y: torch.Tensor | None = None) -> torch.Tensor:
        """[len(heads), *z.shape[:-1], d]: head i's slice of o_proj's input ``z`` through its columns of o_proj
        (o_proj's bias belongs to no head); with a post-norm, its frozen-scale share w ⊙ y_i · r(y) of the
        norm's output, ``y`` = o_proj(z) the norm's input."""
        hd, idx = self.head_dim, list(heads)
        W = _dense_weight(self.o_proj)
        if W is not None:
            zh = z.unflatten(-1, (self.n_heads, hd))[..., idx, :]
            parts = torch.einsum("...ck,dck->c...d", zh, W.unflatten(1, (self.n_heads, hd))[:, idx])
        else:  # weights not in memory (offloaded): o_proj's own forward on per-head masked inputs
            masked = z.new_zeros((len(idx), *z.shape))
            for c, i in enumerate(idx):
                masked[c, ..., i * hd:(i + 1) * hd] = z[..., i * hd:(i + 1) * hd]
            parts = self.o_proj.forward(masked)
            if getattr(self.o_proj, "bias", None) is not None:
                parts = parts - self.o_proj.forward(torch.zeros_like(z[..., :1, :]))
        if self.post_norm is None:
            return parts
        eps = _norm_eps(self.post_norm)
        v = _at_least_fp32(parts) * torch.rsqrt(_at_least_fp32(y).pow(2).mean(-1, keepdim=True) + eps)
        w = getattr(self.post_norm, "weight", None)
        if isinstance(w, torch.Tensor) and w.device.type != "meta":
            return (w * v).to(y.dtype)
        # w ⊙ v as norm(v) · sqrt(mean(v²) + eps), without reading the weight
        return (self.post_norm.forward(v) * torch.sqrt(v.pow(2).mean(-1, keepdim=True) + eps)).to(y.dtype)

    def branch_slices(self, branch: str, x: torch.Tensor, heads: Sequence[int]) -> torch.Tensor:
        """[len(heads), *x.shape[:-1], head_dim]: query head i's slice of the ungrouped ``branch`` output
        (q, or its k/v head's k/v) when the branch reads the residual ``x``."""
        hd = self.head_dim
        rep = 1 if branch == "q" else self.n_rep
        groups = [i // rep for i in heads]
        h = x if self.attn_norm is None else self.attn_norm.forward(x)
        proj, norm = self.projs[branch], self.branch_norms.get(branch)
        W = _dense_weight(proj) if norm is None else None
        if W is not None:  # only head i's rows of the projection
            out = torch.einsum("...d,ckd->c...k", h, W.unflatten(0, (-1, hd))[groups].to(h.dtype))
            bias = getattr(proj, "bias", None)
            if bias is not None:
                out = out + bias.unflatten(0, (-1, hd))[groups].view(len(groups), *[1] * (h.dim() - 1), hd)
            return out
        full = proj.forward(h)
        if norm is not None:
            full = norm.forward(full)
        return full.unflatten(-1, (-1, hd))[..., groups, :].movedim(-2, 0)

    def ungroup(self, t: torch.Tensor) -> torch.Tensor:
        """k/v [..., H_kv·d_h] → a new [..., H·d_h] tensor, k/v head g repeated for its query heads (``repeat_kv``'s
        order)."""
        *lead, width = t.shape
        kv = width // self.head_dim
        t = t.view(*lead, kv, 1, self.head_dim).expand(*lead, kv, self.n_rep, self.head_dim)
        return t.reshape(*lead, kv * self.n_rep * self.head_dim).clone()


def _layer_heads(model: nn.Module, spec: ArchSpec, graph: ResidualGraph) -> list[_Heads]:
    """Every decoder layer's :class:`_Heads`; an error when the graph's head count is not the model's."""
    out = []
    for l, layer in enumerate(decoder_layers(model, spec)):
        attn, o_proj = get_module(layer, spec.attn), get_module(layer, spec.o_proj)
        groups = getattr(attn, "num_key_value_groups", None)
        head_dim = getattr(attn, "head_dim", None)
        in_features = getattr(o_proj, "in_features", None)
        if not isinstance(groups, int) or not isinstance(head_dim, int) or not isinstance(in_features, int) \
                or in_features % head_dim:
            raise AttributionError(f"'head' granularity: {type(attn).__name__} has no integer num_key_value_groups "
                                   "and head_dim; this attention module cannot be split into heads")
        if in_features // head_dim != graph.n_heads:
            raise AttributionError(f"graph has {graph.n_heads} heads per layer, layer {l} has "
                                   f"{in_features // head_dim}; build it with ResidualGraph.from_model(model, 'head')")
        out.append(_Heads(
            attn=attn, attn_norm=get_module(layer, spec.attn_norm) if spec.attn_norm else None,
            projs={b: get_module(layer, getattr(spec, f"{b}_proj")) for b in QKV},
            branch_norms={b: get_module(layer, n) for b, n in (("q", spec.q_norm), ("k", spec.k_norm)) if n},
            o_proj=o_proj, post_norm=get_module(layer, spec.attn_source) if spec.norm_position == "post" else None,
            n_heads=graph.n_heads, n_rep=groups, head_dim=head_dim))
    return out


def _head_source_hooks(hl: _Heads, heads: Sequence[int], emit: Callable[[list[int], torch.Tensor], None],
                       handles: list[Any]) -> None:
    """Call ``emit(heads_chunk, outputs)`` with :meth:`_Heads.outputs` of ``heads`` (in chunks) each time the
    layer's attention runs: from o_proj's input, or, with a post-norm, when that norm runs."""
    heads = list(heads)
    if not heads:
        return
    saved: dict[str, torch.Tensor] = {}

    def split(z: torch.Tensor, y: torch.Tensor | None) -> None:
        for c0 in range(0, len(heads), HEAD_CHUNK):
            chunk = heads[c0:c0 + HEAD_CHUNK]
            emit(chunk, hl.outputs(z, chunk, y))

    def o_hook(mod, args, kwargs, out):
        z = args[0] if args else kwargs["input"]
        if hl.post_norm is None:
            split(z, None)
        else:
            saved["z"] = z

    handles.append(hl.o_proj.register_forward_hook(o_hook, with_kwargs=True))
    if hl.post_norm is not None:
        def norm_hook(mod, args, kwargs, out):
            split(saved.pop("z"), _first(args, kwargs))
        handles.append(hl.post_norm.register_forward_hook(norm_hook, with_kwargs=True))


# ---------------------------------------------------------------------------------------
# hooks
# ---------------------------------------------------------------------------------------
def _first(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


class _Patch:
    """State of one patched forward: D_u = Ō_u − O_u for the sources with an ablated out-edge (only those are
    kept), and each destination's ablated sources."""

    def __init__(self, graph: ResidualGraph, means: torch.Tensor, ablate: torch.Tensor) -> None:
        self.graph = graph
        self.means = means  # [n_src, d], model dtype, on the embedding's device
        self.ablated = {j: ablate[:, j].nonzero().flatten().tolist() for j in range(graph.n_dst) if ablate[:, j].any()}
        self.slot = {u: i for i, u in enumerate(ablate.any(1).nonzero().flatten().tolist())}
        self.diffs: torch.Tensor | None = None  # [B, n_slots, T, d], model dtype
        self.residuals: dict[int, torch.Tensor] = {}

    def record(self, src: int, out: torch.Tensor) -> None:
        if src == 0:
            B, T, d = out.shape
            self.diffs = out.new_zeros((B, len(self.slot), T, d))
        if src in self.slot:
            self.diffs[:, self.slot[src]] = self.means[src].to(out.dtype) - out.to(self.diffs.device)

    def shifted(self, dst: int, x: torch.Tensor) -> torch.Tensor:
        """x + Σ_{ablated u → dst} D_u, summed in at least fp32 (one [B, T, d] accumulator, no gather copy)."""
        idx = self.ablated.get(dst)
        if idx is None:
            return x
        acc_dtype = torch.promote_types(self.diffs.dtype, torch.float32)
        acc = x.to(device=self.diffs.device, dtype=acc_dtype, copy=True)
        for u in idx:
            acc.add_(self.diffs[:, self.slot[u]])
        return acc.to(device=x.device, dtype=x.dtype)

    def batched(self) -> bool:
        """Whether :meth:`shifted_many` takes one product: not where TF32 would round the differences, nor where a
        CPU would cast a low-precision buffer (the casts cost more than the reads they save)."""
        acc_dtype = torch.promote_types(self.diffs.dtype, torch.float32)
        dev = self.diffs.device
        tf32 = dev.type == "cuda" and acc_dtype == torch.float32 and (
            torch.get_float32_matmul_precision() != "highest" or torch.backends.cuda.matmul.allow_tf32)
        return not tf32 and not (dev.type == "cpu" and self.diffs.dtype != acc_dtype)

    def shifted_many(self, dsts: Sequence[int], x: torch.Tensor) -> torch.Tensor:
        """[len(dsts), *x.shape]: :meth:`shifted` for several destinations that read ``x``, as one batched product
        of the difference buffer with their 0/1 ablation columns (each slot read once for all of them rather than
        once per destination, no copy of the buffer unless it must be cast: then a few slots at a time)."""
        if not self.batched():
            return torch.stack([self.shifted(j, x) for j in dsts])
        acc_dtype = torch.promote_types(self.diffs.dtype, torch.float32)
        dev = self.diffs.device
        B, _, T, d = self.diffs.shape
        k = 1 + max(max(self.ablated[j]) for j in dsts)
        n = sum(1 for u in self.slot if u < k)  # slots are in source order: the upstream ones are a prefix
        cols = torch.zeros(len(dsts), n, dtype=acc_dtype, device=dev)
        for c, j in enumerate(dsts):
            cols[c, [self.slot[u] for u in self.ablated[j]]] = 1
        acc = x.to(device=dev, dtype=acc_dtype).reshape(B, 1, T * d).repeat(1, len(dsts), 1)  # [B, c, T·d]
        step = n if self.diffs.dtype == acc_dtype else max(1, CAST_ELEMENTS // max(1, B * T * d))
        for s0 in range(0, n, step):
            s1 = min(n, s0 + step)
            part = self.diffs[:, s0:s1].flatten(2).to(acc_dtype)  # [B, s, T·d], a view when not cast
            acc.baddbmm_(cols[None, :, s0:s1].expand(B, -1, -1), part)
        return acc.unflatten(-1, (T, d)).movedim(1, 0).to(device=x.device, dtype=x.dtype)


@contextlib.contextmanager
def _patch_hooks(model: nn.Module, spec: ArchSpec, graph: ResidualGraph, patch: _Patch) -> Iterator[None]:
    handles: list[Any] = []

    def fwd(module: nn.Module, src: int) -> None:
        handles.append(module.register_forward_hook(lambda m, a, out: patch.record(src, _output(out))))

    def pre(module: nn.Module, dst: int) -> None:
        if dst in patch.ablated:
            handles.append(module.register_forward_pre_hook(
                _replace_first(lambda x: patch.shifted(dst, x)), with_kwargs=True))

    regrouped: list[tuple[nn.Module, int]] = []
    try:
        fwd(get_module(model, spec.embed), 0)
        heads = _layer_heads(model, spec, graph) if graph.granularity == "head" else None
        for l, layer in enumerate(decoder_layers(model, spec)):
            if heads is None:
                fwd(get_module(layer, spec.attn_source), graph.attn_src(l))
            fwd(get_module(layer, spec.mlp_source), graph.mlp_src(l))
            pre(get_module(layer, spec.mlp_reader), graph.mlp_dst(l))
            if heads is not None:
                _patch_head_hooks(l, layer, spec, graph, heads[l], patch, handles, regrouped)
                continue
            if graph.granularity == "block":
                pre(get_module(layer, spec.attn_reader), graph.attn_dst(l))
                continue
            norm = get_module(layer, spec.attn_norm) if spec.attn_norm else None
            dsts = {b: graph.attn_dst(l, b) for b in QKV}
            if norm is None:  # post-norm: q/k/v read the raw residual
                for b in QKV:
                    pre(get_module(layer, getattr(spec, f"{b}_proj")), dsts[b])
                continue
            if not any(j in patch.ablated for j in dsts.values()):
                continue

            def save(m, args, kwargs, l=l):
                patch.residuals[l] = _first(args, kwargs)
            handles.append(norm.register_forward_pre_hook(save, with_kwargs=True))
            for b in QKV:
                if dsts[b] in patch.ablated:
                    proj = get_module(layer, getattr(spec, f"{b}_proj"))
                    # norm.forward, not norm(): the saving pre-hook must not see the shifted residual
                    fn = (lambda x, l=l, j=dsts[b], norm=norm:
                          norm.forward(patch.shifted(j, patch.residuals[l])).to(device=x.device, dtype=x.dtype))
                    handles.append(proj.register_forward_pre_hook(_replace_first(fn), with_kwargs=True))
        pre(get_module(model, spec.final_norm), graph.logits_dst)
        yield
    finally:
        _remove_hooks(handles, regrouped)
        patch.diffs = None
        patch.residuals.clear()


def _patch_head_hooks(l: int, layer: nn.Module, spec: ArchSpec, graph: ResidualGraph, hl: _Heads, patch: _Patch,
                      handles: list[Any], regrouped: list[tuple[nn.Module, int]]) -> None:
    """"head" granularity patching of decoder layer ``l`` (module docstring); an attention module whose
    ``num_key_value_groups`` is set to 1 is recorded in ``regrouped`` with its value, to restore."""
    srcs = {i: graph.attn_src(l, i) for i in range(hl.n_heads)}
    needed = [i for i in range(hl.n_heads) if srcs[i] in patch.slot]

    def emit(chunk: list[int], parts: torch.Tensor) -> None:
        for c, i in enumerate(chunk):
            patch.record(srcs[i], parts[c])
    _head_source_hooks(hl, needed, emit, handles)

    todo = {b: [(i, graph.attn_dst(l, b, i)) for i in range(hl.n_heads) if graph.attn_dst(l, b, i) in patch.ablated]
            for b in QKV}
    if not any(todo.values()):
        return
    ungroup = hl.n_rep > 1 and bool(todo["k"] or todo["v"])

    def save(m, args, kwargs):
        patch.residuals[l] = _first(args, kwargs)
    handles.append(get_module(layer, spec.attn_reader).register_forward_pre_hook(save, with_kwargs=True))

    def branch_hook(branch: str):
        def hook(mod, args, out):
            t = hl.ungroup(out) if ungroup and branch != "q" else out
            if not todo[branch]:
                return t
            if t is out:
                t = out.clone()
            by_input: dict[tuple[int, ...], list[int]] = {}  # heads that ablate the same sources read one residual
            for i, j in todo[branch]:
                by_input.setdefault(tuple(patch.ablated[j]), []).append(i)
            hd, groups = hl.head_dim, list(by_input.values())
            for g0 in range(0, len(groups), HEAD_CHUNK):
                part = groups[g0:g0 + HEAD_CHUNK]
                xs = patch.shifted_many([graph.attn_dst(l, branch, hs[0]) for hs in part], patch.residuals[l])
                for x, hs in zip(xs, part):
                    for c0 in range(0, len(hs), HEAD_CHUNK):
                        chunk = hs[c0:c0 + HEAD_CHUNK]
                        sl = hl.branch_slices(branch, x, chunk).to(device=t.device, dtype=t.dtype)
                        for c, i in enumerate(chunk):
                            t[..., i * hd:(i + 1) * hd] = sl[c]
            return t
        return hook

    for b in QKV:
        if todo[b] or (ungroup and b != "q"):
            handles.append(hl.branch_norms.get(b, hl.projs[b]).register_forward_hook(branch_hook(b)))
    if ungroup:
        _ungroup_kv(hl.attn, regrouped)


# ---------------------------------------------------------------------------------------
# forward passes
# ---------------------------------------------------------------------------------------
def _loglik(model: nn.Module, spec: ArchSpec, ids: torch.Tensor, attn: torch.Tensor, lm: torch.Tensor) -> torch.Tensor:
    """Per-sample mean log-likelihood of the targets (fp32 or better), logits only at target positions."""
    position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
    hidden = get_module(model, spec.base)(input_ids=ids, attention_mask=attn, position_ids=position_ids,
                                          use_cache=False).last_hidden_state
    b, t = lm.nonzero(as_tuple=True)
    h = hidden[b.to(hidden.device), (t - 1).to(hidden.device)]
    logits = get_module(model, spec.lm_head)(h)
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    lp = torch.log_softmax(logits, -1).gather(-1, ids[b, t].to(logits.device)[:, None])[:, 0]
    b = b.to(lp.device)
    total = torch.zeros(ids.shape[0], dtype=lp.dtype, device=lp.device).index_add(0, b, lp)
    count = torch.zeros_like(total).index_add(0, b, torch.ones_like(lp))
    return (total / count).cpu()


@contextlib.contextmanager
def _eval(model: nn.Module) -> Iterator[None]:
    was = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was)


def _to(batch: Batch, device: torch.device) -> Batch:
    ids, attn, lm = batch
    return ids.to(device), attn.to(device).long(), lm.to(device).bool()


def _clean_pass(model: nn.Module, spec: ArchSpec, graph: ResidualGraph, batches: list[Batch],
                device: torch.device, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One unpatched pass: (token-weighted source means [n_src, d] in float64, per-sample log-likelihoods)."""
    from tqdm.auto import tqdm

    sums: torch.Tensor | None = None
    count = 0
    state: dict[str, torch.Tensor] = {}
    handles = []

    def accumulate(srcs: list[int], o: torch.Tensor) -> None:  # o: [len(srcs), B, T, d]
        nonlocal sums
        if sums is None:
            sums = torch.zeros(graph.n_src, o.shape[-1], dtype=torch.float64)
        w = state["mask"].to(device=o.device, dtype=torch.float64)[..., None]
        sums[srcs] += (o.double() * w).sum((1, 2)).cpu()

    def add(src: int):
        return lambda m, a, out: accumulate([src], _output(out)[None])

    lls = []
    try:
        handles.append(get_module(model, spec.embed).register_forward_hook(add(0)))
        heads = _layer_heads(model, spec, graph) if graph.granularity == "head" else None
        for l, layer in enumerate(decoder_layers(model, spec)):
            if heads is None:
                handles.append(get_module(layer, spec.attn_source).register_forward_hook(add(graph.attn_src(l))))
            else:
                _head_source_hooks(heads[l], range(graph.n_heads),
                                   lambda chunk, o, l=l: accumulate([graph.attn_src(l, i) for i in chunk], o), handles)
            handles.append(get_module(layer, spec.mlp_source).register_forward_hook(add(graph.mlp_src(l))))
        with _eval(model):
            for batch in tqdm(batches, desc="faithfulness: clean pass", disable=not progress, leave=False):
                ids, attn, lm = _to(batch, device)
                state["mask"] = attn
                count += int(attn.sum())
                lls.append(_loglik(model, spec, ids, attn, lm))
    finally:
        for h in handles:
            h.remove()
    return sums / count, torch.cat(lls)


def source_means(model: nn.Module, inputs: AttributionInputs | torch.Tensor, *, loss_mask: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, pad_token_id: int | None = None,
                 graph: ResidualGraph | None = None, batch_size: int = 8) -> torch.Tensor:
    """Ō_u: each source's output averaged over every real token of every sample, float64 [n_src, d]."""
    spec = arch_spec(model)
    graph = graph or ResidualGraph.from_model(model)
    _check_model_graph(model, graph, spec)
    if loss_mask is None and not isinstance(inputs, AttributionInputs):
        loss_mask = torch.zeros_like(torch.as_tensor(inputs), dtype=torch.bool)
        loss_mask[:, -1] = True  # targets are irrelevant to the means
    batches = _batches(inputs, loss_mask, attention_mask, pad_token_id, batch_size)
    means, _ = _clean_pass(model, spec, graph, batches, execution_device(model), progress=False)
    return means


def patched_loglik(model: nn.Module, input_ids: torch.Tensor, loss_mask: torch.Tensor, circuit: torch.Tensor,
                   means: torch.Tensor, *, graph: ResidualGraph | None = None,
                   attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample mean target log-likelihood with every real edge outside ``circuit`` (bool [n_src, n_dst])
    mean-ablated to ``means`` ([n_src, d], e.g. :func:`source_means`); one batch, returned on the CPU."""
    spec = arch_spec(model)
    graph = graph or ResidualGraph.from_model(model)
    _check_model_graph(model, graph, spec)
    device = execution_device(model)
    ids, attn, lm = _to(_batches(input_ids, loss_mask, attention_mask, None, max(1, input_ids.shape[0]))[0], device)
    _validate_batch(model, ids, attn, lm)
    return _patched(model, spec, graph, (ids, attn, lm), circuit, _means_on(model, spec, means))


def _means_on(model: nn.Module, spec: ArchSpec, means: torch.Tensor) -> torch.Tensor:
    emb = get_module(model, spec.embed)
    w = next(emb.parameters())
    return means.to(device=w.device if w.device.type != "meta" else "cpu", dtype=w.dtype)


def _patched(model: nn.Module, spec: ArchSpec, graph: ResidualGraph, batch: Batch, circuit: torch.Tensor,
             means: torch.Tensor) -> torch.Tensor:
    ablate = graph.edge_mask & ~circuit.bool().cpu()
    patch = _Patch(graph, means, ablate)
    with _eval(model), _patch_hooks(model, spec, graph, patch):
        return _loglik(model, spec, *batch)


# ---------------------------------------------------------------------------------------
# the curve
# ---------------------------------------------------------------------------------------
def _trapezoid(x: Sequence[float], y: Sequence[float]) -> float:
    return float(sum((x[i + 1] - x[i]) * (y[i] + y[i + 1]) / 2 for i in range(len(x) - 1)))


def faithfulness_curve(model: nn.Module, inputs: AttributionInputs | torch.Tensor, scores: Any,
                       graph: ResidualGraph | None = None, *, pad_token_id: int | None = None,
                       loss_mask: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                       percents: Sequence[float] = DEFAULT_PERCENTS, batch_size: int = 8, prune: bool = True,
                       means: torch.Tensor | None = None, progress: bool = True) -> FaithfulnessCurve:
    """MIB faithfulness curves of ``scores`` on ``inputs`` (module docstring for the definitions).

    ``inputs`` is :class:`~eapbench.records.AttributionInputs` (with ``pad_token_id``; right padding)
    or an ``input_ids`` tensor with ``loss_mask`` (and ``attention_mask``). ``scores`` is [n_src, n_dst]
    (e.g. the sample mean of :class:`EdgeScores` scores), [n, n_src, n_dst] (averaged) or an
    ``EdgeScores``. ``means`` overrides the reference activations (default: :func:`source_means` of
    ``inputs``). Costs one clean forward plus one per distinct circuit (at most 2·len(percents) + 1)
    for every batch.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    spec = arch_spec(model)
    graph = graph or ResidualGraph.from_model(model)
    _check_model_graph(model, graph, spec)
    s = _scores_matrix(scores, graph)
    percents = tuple(float(p) for p in percents)
    if not percents or any(not (0 <= p <= 100) for p in percents) or list(percents) != sorted(percents):
        raise ValueError(f"percents must be increasing values in [0, 100], got {percents}")
    device = execution_device(model)
    batches = _batches(inputs, loss_mask, attention_mask, pad_token_id, batch_size)
    for b in batches:
        _validate_batch(model, *b)
    n = sum(int(b[0].shape[0]) for b in batches)
    n_edges = graph.n_edges
    log.info("faithfulness: %d samples, %s %d layers (%s), %d edges, %d percents, %d batches",
             n, graph.model_type or "?", graph.n_layers, graph.granularity, n_edges, len(percents), len(batches))

    sel = [n_selected(p, n_edges) for p in percents]
    circuits: dict[str, list[torch.Tensor]] = {
        kind: [circuit_mask(s, graph, k, absolute=(kind == "abs"), prune=prune) for k in sel]
        for kind in ("signed", "abs")}
    empty = torch.zeros_like(graph.edge_mask)
    unique: dict[bytes, torch.Tensor] = {empty.numpy().tobytes(): empty}
    for masks in circuits.values():
        for c in masks:
            unique.setdefault(c.numpy().tobytes(), c)

    clean_means, ll_full = _clean_pass(model, spec, graph, batches, device, progress)
    ref = _means_on(model, spec, clean_means if means is None else torch.as_tensor(means))
    results: dict[bytes, list[torch.Tensor]] = {key: [] for key in unique}
    bar = tqdm(total=len(batches) * len(unique), desc=f"faithfulness {graph.model_type or ''}".strip(),
               disable=not progress)
    for batch in batches:
        batch = _to(batch, device)
        for key, c in unique.items():
            results[key].append(_patched(model, spec, graph, batch, c, ref))
            bar.update(1)
    bar.close()
    m = {key: float(torch.cat(v).double().mean()) for key, v in results.items()}
    m_full = float(ll_full.double().mean())
    m_empty = m[empty.numpy().tobytes()]
    denom = m_full - m_empty
    if denom == 0:
        log.warning("faithfulness: the full model and the empty circuit score the same (m = %g); f is undefined",
                    m_full)

    def curve(kind: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
        ms = tuple(m[c.numpy().tobytes()] for c in circuits[kind])
        fs = tuple((x - m_empty) / denom if denom != 0 else float("nan") for x in ms)
        return ms, fs

    m_signed, f_signed = curve("signed")
    m_abs, f_abs = curve("abs")
    x = [p / 100.0 for p in percents]
    cpr = _trapezoid(x, f_signed)
    cmd = _trapezoid(x, [abs(1.0 - f) for f in f_abs])
    seconds = time.perf_counter() - t0
    log.info("faithfulness: m_full %.4f, m_empty %.4f, CPR %.4f, CMD %.4f (%d circuits, %.1fs)",
             m_full, m_empty, cpr, cmd, len(unique), seconds)
    return FaithfulnessCurve(
        percents=percents, f_signed=f_signed, f_abs=f_abs, cpr=cpr, cmd=cmd, m_full=m_full, m_empty=m_empty,
        n_samples=n, n_edges=n_edges, n_selected=tuple(sel),
        n_kept_signed=tuple(int(c.sum()) for c in circuits["signed"]),
        n_kept_abs=tuple(int(c.sum()) for c in circuits["abs"]), m_signed=m_signed, m_abs=m_abs,
        granularity=graph.granularity, pruned=prune, seconds=seconds,
        meta={"model_type": graph.model_type, "n_layers": graph.n_layers, "n_heads": graph.n_heads,
              "n_circuits": len(unique),
              "batch_size": batch_size, "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
              "device": str(device), "reference": "token-weighted mean over the evaluated inputs"
              if means is None else "given", "area": "trapezoid over k/100 at the listed points"})


faithfulness = faithfulness_curve  # the short name the suite calls
