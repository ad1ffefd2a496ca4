"""Independent oracle for EAP scores: dL/dε by finite differences under single-edge ablation.

For edge u → v, only destination v's copy of its input becomes H_v − ε·O_u; every other
reader of the same residual is untouched. This uses plain forward hooks and full logits,
sharing no code with eapbench.engine.attribution except the module paths of architectures.py.
"""

from __future__ import annotations

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


def finite_difference_scores(model, ids, loss_mask, graph: ResidualGraph, h: float = 1e-3) -> torch.Tensor:
    """[batch, n_src, n_dst] of dL/dε at ε = 0 (4-point central differences), zero off the edge mask."""
    outs = source_outputs(model, ids)
    fd = torch.zeros(ids.shape[0], graph.n_src, graph.n_dst, dtype=torch.float64)
    for i, j in graph.edge_mask.nonzero().tolist():
        src, dst = graph.sources[i], graph.destinations[j]
        f = {k: ablated_loss(model, ids, loss_mask, dst, k * h * outs[src]) for k in (-2, -1, 1, 2)}
        fd[:, i, j] = (-f[2] + 8 * f[1] - 8 * f[-1] + f[-2]) / (12 * h)
    return fd
