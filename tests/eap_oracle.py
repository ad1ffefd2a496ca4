"""Independent oracle for EAP scores: dL/dε by finite differences under single-edge ablation.

For edge u → v, only destination v's copy of its input becomes H_v − ε·O_u; every other
reader of the same residual is untouched. This uses plain forward hooks and full logits,
sharing no code with eapbench.engine.attribution except the module paths of architectures.py.

At "head" granularity the sources are computed from o_proj's weights (head i: its slice of
o_proj's input times its columns of W_O; OLMo-2: the frozen-scale share of the post-attention
norm), and destination a{l}.h{i}<x> is ablated by swapping the attention module's forward for
a from-scratch one (projections, QK-norm, rotary, causal softmax, o_proj) that runs on the
clean and on the shifted input and takes only query head i's q — or the k/v of query head i's
k/v head, as seen by head i alone (k/v ungrouped) — from the shifted one.

EAP-IG (SPEC §11): the same derivative, with the ablation delta ε·(O_u − O_u') and the input
embeddings interpolated to e' + α(e − e'), averaged over α = k/m, k = 1..m.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from eapbench.engine.architectures import arch_spec, decoder_layers
from eapbench.engine.graph import ResidualGraph


def _first(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


def _with_first(args, kwargs, value):
    if args:
        return (value, *args[1:]), kwargs
    kwargs = dict(kwargs)
    kwargs["hidden_states"] = value
    return args, kwargs


def per_sample_loss(model, ids, loss_mask):
    logits = model(input_ids=ids).logits.double()
    logp = F.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
    m = loss_mask[:, 1:].double()
    return -(logp * m).sum(1) / m.sum(1)


def source_outputs(model, ids) -> dict[str, torch.Tensor]:
    spec = arch_spec(model)
    outs, handles = {}, []

    def grab(name):
        def hook(mod, args, out):
            outs[name] = (out[0] if isinstance(out, tuple) else out).detach().clone()
        return hook
    handles.append(model.get_submodule(spec.embed).register_forward_hook(grab("input")))
    for l, layer in enumerate(decoder_layers(model, spec)):
        handles.append(layer.get_submodule(spec.attn_source).register_forward_hook(grab(f"a{l}")))
        handles.append(layer.get_submodule(spec.mlp_source).register_forward_hook(grab(f"m{l}")))
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
    return outs


def ablated_loss(model, ids, loss_mask, dst: str, delta: torch.Tensor) -> torch.Tensor:
    """Per-sample loss when destination ``dst`` reads H_dst − delta (delta = ε·O_u)."""
    if ".h" in dst:
        return ablated_loss_head(model, ids, loss_mask, dst, delta)
    spec = arch_spec(model)
    layers = decoder_layers(model, spec)
    handles = []

    def shift(args, kwargs):
        return _with_first(args, kwargs, _first(args, kwargs) - delta)

    try:
        if dst == "logits":
            mod = model.get_submodule(spec.final_norm)
            handles.append(mod.register_forward_pre_hook(lambda m, a, k: shift(a, k), with_kwargs=True))
        elif dst.startswith("m"):
            mod = layers[int(dst[1:])].get_submodule(spec.mlp_reader)
            handles.append(mod.register_forward_pre_hook(lambda m, a, k: shift(a, k), with_kwargs=True))
        elif "<" not in dst:  # block-level attention input
            mod = layers[int(dst[1:])].get_submodule(spec.attn_reader)
            handles.append(mod.register_forward_pre_hook(lambda m, a, k: shift(a, k), with_kwargs=True))
        else:
            l, branch = int(dst[1:dst.index("<")]), dst[dst.index("<") + 1]
            layer = layers[l]
            proj = layer.get_submodule(getattr(spec, f"{branch}_proj"))
            if spec.attn_norm is None:  # q/k/v read the raw residual
                handles.append(proj.register_forward_pre_hook(lambda m, a, k: shift(a, k), with_kwargs=True))
            else:  # q/k/v read norm(residual): recompute the norm on the shifted residual for this branch
                norm = layer.get_submodule(spec.attn_norm)
                saved = {}
                handles.append(norm.register_forward_pre_hook(
                    lambda m, a, k: saved.__setitem__("x", _first(a, k)), with_kwargs=True))
                handles.append(proj.register_forward_pre_hook(
                    lambda m, a, k: _with_first(a, k, norm.forward(saved["x"] - delta)), with_kwargs=True))
        with torch.no_grad():
            return per_sample_loss(model, ids, loss_mask)
    finally:
        for h in handles:
            h.remove()


# ---- "head" granularity -------------------------------------------------------------------
def head_source_outputs(model, ids) -> dict[str, torch.Tensor]:
    """``input``, ``m{l}`` and ``a{l}.h{i}`` for every head, from o_proj's input and weights."""
    spec = arch_spec(model)
    outs = source_outputs(model, ids)
    z, y, handles = {}, {}, []
    layers = decoder_layers(model, spec)
    def grab(l):
        def hook(mod, args, out):
            z[l], y[l] = args[0].detach(), out.detach()
        return hook
    for l, layer in enumerate(layers):
        handles.append(layer.self_attn.o_proj.register_forward_hook(grab(l)))
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        for hd in handles:
            hd.remove()
    res = {k: v for k, v in outs.items() if not k.startswith("a")}
    for l, layer in enumerate(layers):
        attn = layer.self_attn
        d_h, W = attn.head_dim, attn.o_proj.weight
        for i in range(model.config.num_attention_heads):
            part = z[l][..., i * d_h:(i + 1) * d_h] @ W[:, i * d_h:(i + 1) * d_h].T
            if spec.norm_position == "post":  # w ⊙ y_i / rms(y), y the whole o_proj output
                norm = layer.post_attention_layernorm
                part = norm.weight * part * torch.rsqrt(y[l].pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
            res[f"a{l}.h{i}"] = part
    return res


def _rotate(x, cos, sin):  # x [B, H, T, d_h]; cos/sin [B, T, d_h]; the rotate-half RoPE of all four families
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None] + rot * sin[:, None]


def oracle_attention(attn, x_clean, x_shift, position_embeddings, head: int | None = None,
                     branch: str | None = None):
    """Attention output when query head ``head``'s ``branch`` input comes from ``x_shift`` and every
    other input from ``x_clean`` (no padding; causal)."""
    cfg = attn.config
    n_heads, n_kv, d_h = cfg.num_attention_heads, cfg.num_key_value_heads, attn.head_dim
    B, T, _ = x_clean.shape

    def project(x):
        q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
        if hasattr(attn, "q_norm"):
            q, k = attn.q_norm(q), attn.k_norm(k)
        per_q = torch.arange(n_heads) // (n_heads // n_kv)  # query head -> its k/v head
        return {"q": q.view(B, T, n_heads, d_h), "k": k.view(B, T, n_kv, d_h)[:, :, per_q],
                "v": v.view(B, T, n_kv, d_h)[:, :, per_q]}

    qkv = project(x_clean)
    if head is not None:
        shifted = project(x_shift)
        qkv[branch] = qkv[branch].clone()
        qkv[branch][:, :, head] = shifted[branch][:, :, head]
    cos, sin = position_embeddings
    q, k, v = (qkv[b].transpose(1, 2) for b in "qkv")
    q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
    scores = (q @ k.transpose(-1, -2)) * d_h ** -0.5
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    probs = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    return attn.o_proj((probs @ v).transpose(1, 2).reshape(B, T, n_heads * d_h))


def ablated_loss_head(model, ids, loss_mask, dst: str, delta: torch.Tensor | None) -> torch.Tensor:
    """Per-sample loss when only query head i's branch x in layer l reads H − delta (``dst`` = a{l}.h{i}<x>;
    ``delta`` None: no shift, the oracle attention in every head — equal to the model's own loss)."""
    spec = arch_spec(model)
    l, i = (int(t) for t in dst[1:dst.index("<")].split(".h"))
    branch = dst[dst.index("<") + 1]
    layer = decoder_layers(model, spec)[l]
    attn, saved, handles = layer.self_attn, {}, []
    if spec.attn_norm is not None:
        norm = layer.get_submodule(spec.attn_norm)
        handles.append(norm.register_forward_pre_hook(
            lambda m, a, k: saved.__setitem__("x", _first(a, k)), with_kwargs=True))

    def forward(hidden_states, position_embeddings=None, attention_mask=None, **kwargs):
        if delta is None:
            return oracle_attention(attn, hidden_states, None, position_embeddings), None
        shifted = (hidden_states - delta if spec.attn_norm is None
                   else layer.get_submodule(spec.attn_norm)(saved["x"] - delta))
        return oracle_attention(attn, hidden_states, shifted, position_embeddings, i, branch), None

    attn.forward = forward
    try:
        with torch.no_grad():
            return per_sample_loss(model, ids, loss_mask)
    finally:
        del attn.forward
        for h in handles:
            h.remove()


def finite_difference_scores(model, ids, loss_mask, graph: ResidualGraph, h: float = 1e-3) -> torch.Tensor:
    """[batch, n_src, n_dst] of dL/dε at ε = 0 (4-point central differences), zero off the edge mask."""
    outs = head_source_outputs(model, ids) if graph.granularity == "head" else source_outputs(model, ids)
    fd = torch.zeros(ids.shape[0], graph.n_src, graph.n_dst, dtype=torch.float64)
    for i, j in graph.edge_mask.nonzero().tolist():
        src, dst = graph.sources[i], graph.destinations[j]
        f = {k: ablated_loss(model, ids, loss_mask, dst, k * h * outs[src]) for k in (-2, -1, 1, 2)}
        fd[:, i, j] = (-f[2] + 8 * f[1] - 8 * f[-1] + f[-2]) / (12 * h)
    return fd


@contextlib.contextmanager
def interpolated_embeddings(model, alpha: float, baseline_embeds: torch.Tensor | None):
    """Within the block the embedding output e becomes e' + alpha·(e − e') (e' = 0 when None)."""
    def hook(mod, args, out):
        e0 = torch.zeros_like(out) if baseline_embeds is None else baseline_embeds
        return e0 + alpha * (out - e0)
    handle = model.get_submodule(arch_spec(model).embed).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def ig_finite_difference_scores(model, ids, loss_mask, graph: ResidualGraph, steps: int,
                                baseline_ids: torch.Tensor | None = None, h: float = 1e-3) -> torch.Tensor:
    """EAP-IG scores [batch, n_src, n_dst]: mean over α_k = k/m of dL/dε at ε = 0 when destination v
    reads H_v − ε(O_u − O_u'), embeddings at e' + α_k(e − e'); clean outputs, loss on the clean targets.
    ``baseline_ids`` None is the zero baseline (e' = 0, O' = 0)."""
    outputs = head_source_outputs if graph.granularity == "head" else source_outputs
    outs = outputs(model, ids)
    if baseline_ids is None:
        base, e0 = {k: torch.zeros_like(v) for k, v in outs.items()}, None
    else:
        base = outputs(model, baseline_ids)
        e0 = base["input"]
    fd = torch.zeros(ids.shape[0], graph.n_src, graph.n_dst, dtype=torch.float64)
    for k in range(1, steps + 1):
        with interpolated_embeddings(model, k / steps, e0):
            for i, j in graph.edge_mask.nonzero().tolist():
                src, dst = graph.sources[i], graph.destinations[j]
                diff = outs[src] - base[src]
                f = {n: ablated_loss(model, ids, loss_mask, dst, n * h * diff) for n in (-2, -1, 1, 2)}
                fd[:, i, j] += (-f[2] + 8 * f[1] - 8 * f[-1] + f[-2]) / (12 * h)
    return fd / steps


def interpolated_loss(model, ids, loss_mask, alpha: float, baseline_embeds: torch.Tensor | None) -> torch.Tensor:
    """Per-sample clean-target loss with the embeddings at e' + alpha·(e − e')."""
    with interpolated_embeddings(model, alpha, baseline_embeds), torch.no_grad():
        return per_sample_loss(model, ids, loss_mask)
