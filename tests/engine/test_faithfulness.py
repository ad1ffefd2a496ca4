"""MIB faithfulness (eapbench.engine.faithfulness) on tiny fp64 models of every family: exactness at the
ends of the curve, a model whose answer is known, an independent oracle for the patched forward (at every
granularity, "head" with grouped-query attention), and the consistency of "head" with "qkv" circuits."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from eapbench.engine.architectures import arch_spec, decoder_layers
from eapbench.engine.attribution import attribute
from eapbench.engine import faithfulness as engine
from eapbench.engine.faithfulness import (DEFAULT_PERCENTS, FaithfulnessCurve, circuit_mask, faithfulness_curve,
                                          n_selected, patched_loglik, prune_circuit, source_means)
from eapbench.engine.graph import QKV, ResidualGraph
from eapbench.records import AttributionInputs

from eap_oracle import _rotate, head_source_outputs, per_sample_loss, source_outputs
from tiny_models import FAMILIES, random_batch, tiny_model

GRANULARITIES = ("qkv", "block", "head")


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request):
    return request.param, tiny_model(request.param)


def _clean_loglik(model, ids, lm):
    return -per_sample_loss(model, ids, lm)


def _random_circuit(graph: ResidualGraph, seed: int, p: float = 0.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(graph.edge_mask.shape, generator=g) < p) & graph.edge_mask


# ---- an independent oracle ---------------------------------------------------------------
def _split_heads(layer, z: torch.Tensor, y: torch.Tensor, post_norm: bool) -> list[torch.Tensor]:
    """Head i's output from o_proj's input z (and output y): z_i W_i^T, or (OLMo-2) w ⊙ z_i W_i^T / rms(y)."""
    attn = layer.self_attn
    d_h, W = attn.head_dim, attn.o_proj.weight
    parts = [z[..., i * d_h:(i + 1) * d_h] @ W[:, i * d_h:(i + 1) * d_h].T for i in range(W.shape[1] // d_h)]
    if post_norm:
        norm = layer.post_attention_layernorm
        r = torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
        parts = [norm.weight * p * r for p in parts]
    return parts


def _per_head_attention(attn, inputs, position_embeddings):
    """Attention output (causal, no padding) where query head i's q, and the k and v it sees (its k/v head's,
    ungrouped), are projected from their own inputs ``inputs[(branch, i)]`` ([B, T, d], after any norm)."""
    cfg = attn.config
    n_heads, n_kv, d_h = cfg.num_attention_heads, cfg.num_key_value_heads, attn.head_dim
    per_q = n_heads // n_kv

    def head(branch, i):
        x = inputs[(branch, i)]
        full = getattr(attn, f"{branch}_proj")(x)
        if branch in "qk" and hasattr(attn, f"{branch}_norm"):
            full = getattr(attn, f"{branch}_norm")(full)
        g = i if branch == "q" else i // per_q
        return full[..., g * d_h:(g + 1) * d_h]

    q, k, v = (torch.stack([head(b, i) for i in range(n_heads)], dim=1) for b in "qkv")  # [B, H, T, d_h]
    cos, sin = position_embeddings
    q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
    T = q.shape[2]
    scores = (q @ k.transpose(-1, -2)) * d_h ** -0.5
    probs = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf")).softmax(-1)
    return attn.o_proj((probs @ v).transpose(1, 2).flatten(2))


def _oracle_loglik(model, ids, lm, circuit: torch.Tensor, means: torch.Tensor, graph: ResidualGraph):
    """Patched forward by fixed-point iteration, sharing no code with the engine: every destination's input is
    *replaced* by the explicit sum Σ_{u in circuit} O_u + Σ_{u not in circuit} Ō_u, with O_u the source outputs
    of the previous run (a clean run first). The i-th source in forward order is exact after i runs, so
    n_src + 1 runs reach the fixed point (checked); full logits, full softmax. At "head" granularity the
    attention forward is rebuilt from scratch (:func:`_per_head_attention`), each head branch reading its own
    explicit input, and head outputs come from o_proj's input (:func:`_split_heads`), no padding."""
    spec = arch_spec(model)
    layers = decoder_layers(model, spec)
    heads = graph.granularity == "head"
    outs = head_source_outputs(model, ids) if heads else source_outputs(model, ids)
    names = graph.sources
    means = means.to(torch.float64)

    def explicit(dst: int) -> torch.Tensor:
        k = graph.n_upstream(dst)
        return sum(outs[names[u]] if circuit[u, dst] else means[u].expand_as(outs["input"]) for u in range(k))

    def replace(fn):
        def pre(mod, args, kwargs):
            if args:
                return (fn(), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": fn()}
        return pre

    def head_forward(l, layer):
        norm = layer.get_submodule(spec.attn_norm) if spec.attn_norm else None

        def forward(hidden_states, position_embeddings=None, attention_mask=None, **kwargs):
            inputs = {}
            for b in QKV:
                for i in range(graph.n_heads):
                    x = explicit(graph.attn_dst(l, b, i))
                    inputs[(b, i)] = x if norm is None else norm(x)
            return _per_head_attention(layer.self_attn, inputs, position_embeddings), None
        return forward

    previous = None
    for _ in range(graph.n_src + 2):
        handles, record, o_io = [], {}, {}

        def grab(name):
            return lambda m, a, o: record.__setitem__(name, (o[0] if isinstance(o, tuple) else o).detach().clone())
        handles.append(model.get_submodule(spec.embed).register_forward_hook(grab("input")))
        for l, layer in enumerate(layers):
            handles.append(layer.get_submodule(spec.mlp_source).register_forward_hook(grab(f"m{l}")))
            handles.append(layer.get_submodule(spec.mlp_reader).register_forward_pre_hook(
                replace(lambda j=graph.mlp_dst(l): explicit(j)), with_kwargs=True))
            if heads:
                layer.self_attn.forward = head_forward(l, layer)
                handles.append(layer.self_attn.o_proj.register_forward_hook(
                    lambda m, a, o, l=l: o_io.__setitem__(l, (a[0].detach(), o.detach()))))
                continue
            handles.append(layer.get_submodule(spec.attn_source).register_forward_hook(grab(f"a{l}")))
            if graph.granularity == "block":
                handles.append(layer.get_submodule(spec.attn_reader).register_forward_pre_hook(
                    replace(lambda j=graph.attn_dst(l): explicit(j)), with_kwargs=True))
                continue
            norm = layer.get_submodule(spec.attn_norm) if spec.attn_norm else None
            for b in QKV:
                j = graph.attn_dst(l, b)
                fn = (lambda j=j: explicit(j)) if norm is None else (lambda j=j, norm=norm: norm.forward(explicit(j)))
                handles.append(layer.get_submodule(getattr(spec, f"{b}_proj")).register_forward_pre_hook(
                    replace(fn), with_kwargs=True))
        handles.append(model.get_submodule(spec.final_norm).register_forward_pre_hook(
            replace(lambda: explicit(graph.logits_dst)), with_kwargs=True))
        try:
            with torch.no_grad():
                ll = _clean_loglik(model, ids, lm)
        finally:
            for h in handles:
                h.remove()
            for layer in layers:
                layer.self_attn.__dict__.pop("forward", None)
        for l, (z, y) in o_io.items():
            for i, part in enumerate(_split_heads(layers[l], z, y, spec.norm_position == "post")):
                record[f"a{l}.h{i}"] = part
        outs = record
        if previous is not None and torch.equal(previous, ll):
            return ll
        previous = ll
    raise AssertionError("the oracle did not reach its fixed point")


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("seed,p", [(0, 0.5), (1, 0.5), (2, 0.15)])
def test_patched_forward_equals_fixed_point_oracle(family_model, granularity, seed, p):
    _, model = family_model
    graph = ResidualGraph.from_model(model, granularity)
    ids, lm = random_batch(batch=2, seq=8, seed=seed)
    means = source_means(model, ids, graph=graph)
    circuit = _random_circuit(graph, seed, p)
    got = patched_loglik(model, ids, lm, circuit, means, graph=graph)
    want = _oracle_loglik(model, ids, lm, circuit, means, graph)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    clean = _clean_loglik(model, ids, lm)
    assert (got - clean).abs().max() > 1e-4  # the ablation does something
    if seed == 0:  # the oracle itself: with every edge kept it is the model
        full = _oracle_loglik(model, ids, lm, graph.edge_mask, means, graph)
        torch.testing.assert_close(full, clean, rtol=0, atol=1e-12)


@pytest.mark.parametrize("granularity", ["qkv", "head"])
def test_means_are_token_weighted_over_real_tokens(granularity):
    model = tiny_model("llama" if granularity == "qkv" else "olmo2")
    graph = ResidualGraph.from_model(model, granularity)
    ids, _ = random_batch(batch=2, seq=7, seed=3)
    attn = torch.ones_like(ids)
    attn[1, 4:] = 0
    means = source_means(model, ids, attention_mask=attn, graph=graph)
    outputs = head_source_outputs if granularity == "head" else source_outputs
    row0, row1 = outputs(model, ids[:1]), outputs(model, ids[1:, :4])
    for u, name in enumerate(graph.sources):
        want = torch.cat([row0[name][0], row1[name][0]]).mean(0)
        torch.testing.assert_close(means[u], want, rtol=0, atol=1e-12)


# ---- "head" against "qkv" ------------------------------------------------------------------
def _head_to_qkv_index(graph: ResidualGraph) -> tuple[torch.Tensor, torch.Tensor]:
    """For every "head" source row / destination column, the "qkv" row / column it belongs to."""
    qkv = graph.as_qkv()
    src = {n: i for i, n in enumerate(qkv.sources)}
    dst = {n: i for i, n in enumerate(qkv.destinations)}
    rows = [src[n.split(".")[0]] for n in graph.sources]
    cols = [dst[n.split(".")[0] + n[n.index("<"):] if ".h" in n else n] for n in graph.destinations]
    return torch.tensor(rows), torch.tensor(cols)


@pytest.mark.parametrize("seed", [0, 1])
def test_head_circuit_that_never_splits_a_qkv_edge_is_that_qkv_circuit(family_model, seed):
    """Where every head edge of a qkv edge u → v is kept, or every one ablated, the head circuit is the qkv
    circuit: the heads of a{l} sum to a{l} (o_proj has no bias; OLMo-2's frozen-scale shares sum to the norm's
    output), so do their means, and the heads of a{l}<x> all read H + the same shift (k/v ungrouped is the
    same attention). Exact up to rounding; a circuit that splits a qkv edge has no qkv counterpart."""
    _, model = family_model
    head = ResidualGraph.from_model(model, "head")
    qkv = head.as_qkv()
    rows, cols = _head_to_qkv_index(head)
    ids, lm = random_batch(batch=2, seq=8, seed=seed)
    means_h, means_q = source_means(model, ids, graph=head), source_means(model, ids, graph=qkv)
    summed = torch.zeros_like(means_q).index_add(0, rows, means_h)
    torch.testing.assert_close(summed, means_q, rtol=0, atol=1e-12)
    for circuit in (_random_circuit(qkv, seed), _random_circuit(qkv, seed + 7, 0.2),
                    torch.zeros_like(qkv.edge_mask)):
        expanded = circuit[rows][:, cols] & head.edge_mask
        got = patched_loglik(model, ids, lm, expanded, means_h, graph=head)
        want = patched_loglik(model, ids, lm, circuit, means_q, graph=qkv)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    # a circuit that splits one: a1.h0 → logits, and every edge into a1.h0<v>, is neither a1.h0 → logits
    # alone nor its qkv coarsening (a1 → logits and every edge into a1<v>). (With <q> instead, a1.h0 would
    # not change: its k/v read the means, the same at every position, so its attention pattern is moot.)
    out_only = torch.zeros_like(head.edge_mask)
    out_only[head.attn_src(1, 0), head.logits_dst] = True
    split = out_only.clone()
    split[:, head.attn_dst(1, "v", 0)] = head.edge_mask[:, head.attn_dst(1, "v", 0)]
    coarse = torch.zeros_like(qkv.edge_mask)
    coarse[qkv.attn_src(1), qkv.logits_dst] = True
    coarse[:, qkv.attn_dst(1, "v")] = qkv.edge_mask[:, qkv.attn_dst(1, "v")]
    some = patched_loglik(model, ids, lm, split, means_h, graph=head)
    less = patched_loglik(model, ids, lm, out_only, means_h, graph=head)
    whole = patched_loglik(model, ids, lm, coarse, means_q, graph=qkv)
    assert (some - less).abs().min() > 1e-6 and (some - whole).abs().min() > 1e-6


def test_curve_ends_agree_across_granularities(family_model):
    """m(full) and m(∅) do not depend on the granularity (f's denominator is the same); f in between does."""
    _, model = family_model
    inputs = _inputs()
    ids, attn, lm = inputs.tensors(0)
    curves = {}
    for granularity in ("qkv", "head"):
        graph = ResidualGraph.from_model(model, granularity)
        scores = attribute(model, ids, lm, graph=graph, attention_mask=attn).mean(0)
        curves[granularity] = faithfulness_curve(model, inputs, scores, graph=graph, pad_token_id=0,
                                                 percents=(0, 10, 100), progress=False)
    head, qkv = curves["head"], curves["qkv"]
    assert head.m_full == qkv.m_full
    assert head.m_empty == pytest.approx(qkv.m_empty, abs=1e-10)
    assert head.n_edges == ResidualGraph.from_model(model, "head").n_edges > qkv.n_edges
    assert head.granularity == "head" and head.f_signed[-1] == 1.0 and head.f_signed[0] == 0.0


# ---- the ends of the curve -------------------------------------------------------------
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_full_circuit_is_the_model_bit_for_bit(family_model, granularity):
    _, model = family_model
    graph = ResidualGraph.from_model(model, granularity)
    ids, lm = random_batch(batch=3, seq=9)
    means = source_means(model, ids, graph=graph)
    got = patched_loglik(model, ids, lm, graph.edge_mask, means, graph=graph)
    torch.testing.assert_close(got, _clean_loglik(model, ids, lm), rtol=0, atol=1e-12)
    # and inside the curve: f(100%) = 1 exactly, m(100%) is the clean pass's value exactly
    curve = faithfulness_curve(model, ids, torch.randn(graph.n_src, graph.n_dst), graph=graph, loss_mask=lm,
                               progress=False)
    assert curve.f_signed[-1] == 1.0 and curve.f_abs[-1] == 1.0
    assert curve.m_signed[-1] == curve.m_full


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_empty_circuit_reads_only_the_means(family_model, granularity):
    """With every edge ablated the final norm reads Σ_u Ō_u at every position, whatever the input."""
    _, model = family_model
    spec = arch_spec(model)
    graph = ResidualGraph.from_model(model, granularity)
    ids, lm = random_batch(batch=3, seq=9, seed=5)
    means = source_means(model, ids, graph=graph)
    got = patched_loglik(model, ids, lm, torch.zeros_like(graph.edge_mask), means, graph=graph)
    with torch.no_grad():
        h = model.get_submodule(spec.final_norm)(means.sum(0))
        logp = F.log_softmax(model.get_submodule(spec.lm_head)(h).double(), -1)
    want = torch.stack([logp[ids[b][lm[b]]].mean() for b in range(ids.shape[0])])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    curve = faithfulness_curve(model, ids, torch.randn(graph.n_src, graph.n_dst), graph=graph, loss_mask=lm,
                               percents=(0, 100), progress=False)
    assert curve.m_empty == pytest.approx(float(want.mean()), abs=1e-10)
    assert curve.f_signed[0] == 0.0 and curve.f_abs[0] == 0.0


# ---- a model whose answer is known -----------------------------------------------------
def _silence(model, *, attention: bool = True, mlp_layers=(0, 1)):
    with torch.no_grad():
        for l, layer in enumerate(model.model.layers):
            if attention:
                layer.self_attn.o_proj.weight.zero_()
            if l in mlp_layers:
                layer.mlp.down_proj.weight.zero_()
    return model


def test_only_input_to_logits_matters():
    model = _silence(tiny_model("llama"))
    graph = ResidualGraph.from_model(model)  # 23 edges
    ids, lm = random_batch(batch=3, seq=9)
    scores = torch.rand(graph.n_src, graph.n_dst, generator=torch.Generator().manual_seed(0)) * 0.5
    scores[0, graph.logits_dst] = 5.0
    percents = (0, 2, 5, 10, 50, 100)  # ⌊p · 23 / 100⌋ = 0, 0, 1, 2, 11, 23 edges
    curve = faithfulness_curve(model, ids, scores, graph=graph, loss_mask=lm, percents=percents, progress=False)
    assert curve.n_selected == (0, 0, 1, 2, 11, 23)
    assert curve.f_signed == (0.0, 0.0, 1.0, 1.0, 1.0, 1.0)
    assert curve.f_abs == curve.f_signed
    x = np.array(percents) / 100
    assert curve.cpr == pytest.approx(np.trapezoid(curve.f_signed, x))
    assert curve.cmd == pytest.approx(np.trapezoid(np.abs(1 - np.array(curve.f_abs)), x))
    assert curve.cmd == pytest.approx(0.02 + 0.03 / 2)  # |1 − f| = 1 on [0, 0.02], falls to 0 over [0.02, 0.05]


def test_path_through_m0_needs_all_three_edges():
    """Attention and m1 silenced: only input→m0, m0→logits and input→logits carry signal. f = 1 exactly once
    the three are in; with m0→logits but not input→m0 pruning drops m0, so f is unchanged from one edge."""
    model = _silence(tiny_model("llama"), mlp_layers=(1,))
    graph = ResidualGraph.from_model(model)
    ids, lm = random_batch(batch=3, seq=9, seed=2)
    scores = torch.rand(graph.n_src, graph.n_dst, generator=torch.Generator().manual_seed(1)) - 0.5
    m0 = graph.mlp_src(0)
    scores[0, graph.logits_dst], scores[m0, graph.logits_dst], scores[0, graph.mlp_dst(0)] = 3.0, 2.0, 1.0
    percents = (0, 5, 10, 15, 50, 100)  # 0, 1, 2, 3, 11, 23 edges
    curve = faithfulness_curve(model, ids, scores, graph=graph, loss_mask=lm, percents=percents, progress=False)
    f = curve.f_signed
    assert f[0] == 0.0 and f[3:] == (1.0, 1.0, 1.0)
    assert f[1] == f[2] and abs(f[1] - 1) > 1e-3 and abs(f[1]) > 1e-3
    assert curve.n_kept_signed[:4] == (0, 1, 1, 3)


# ---- circuits ----------------------------------------------------------------------------
def test_prune_keeps_only_input_to_logits_paths():
    graph = ResidualGraph(n_layers=2, granularity="qkv")
    c = torch.zeros_like(graph.edge_mask)
    c[0, graph.attn_dst(0, "q")] = True        # input → a0<q>: a0 has no out-edge → dropped
    c[graph.mlp_src(1), graph.logits_dst] = True  # m1 → logits: m1 has no in-edge → dropped
    c[0, graph.mlp_dst(0)] = True              # input → m0 → a1<v> → logits: kept
    c[graph.mlp_src(0), graph.attn_dst(1, "v")] = True
    c[graph.attn_src(1), graph.logits_dst] = True
    want = c.clone()
    want[0, graph.attn_dst(0, "q")] = want[graph.mlp_src(1), graph.logits_dst] = False
    assert torch.equal(prune_circuit(c, graph), want)
    assert torch.equal(prune_circuit(graph.edge_mask, graph), graph.edge_mask)


def test_topk_ranking_signed_absolute_and_ties():
    graph = ResidualGraph(n_layers=1, granularity="block")  # 3 sources, 3 destinations, 6 edges
    s = torch.zeros(graph.n_src, graph.n_dst)
    s[0, 2], s[1, 2], s[2, 2], s[0, 0], s[0, 1], s[1, 1] = -9.0, 1.0, 1.0, 0.5, 0.2, 0.1
    signed = circuit_mask(s, graph, 2, absolute=False, prune=False)
    assert signed[1, 2] and signed[2, 2] and int(signed.sum()) == 2
    absolute = circuit_mask(s, graph, 2, absolute=True, prune=False)
    assert absolute[0, 2] and absolute[1, 2] and int(absolute.sum()) == 2  # tie 1.0 vs 1.0: earlier row first
    assert [n_selected(p, 3221) for p in DEFAULT_PERCENTS] == [3, 6, 16, 32, 64, 161, 322, 644, 1610, 3221]


def test_prune_at_head_granularity_works_per_head():
    graph = ResidualGraph(n_layers=2, granularity="head", n_heads=4)
    c = torch.zeros_like(graph.edge_mask)
    c[0, graph.attn_dst(0, "k", 1)] = True                      # input → a0.h1 → m0 → logits: kept
    c[graph.attn_src(0, 1), graph.mlp_dst(0)] = True
    c[graph.mlp_src(0), graph.logits_dst] = True
    c[0, graph.attn_dst(0, "q", 2)] = True                      # a0.h2 has no out-edge: dropped
    c[graph.attn_src(0, 3), graph.logits_dst] = True            # a0.h3 has no in-edge: dropped
    c[graph.attn_src(0, 1), graph.attn_dst(1, "v", 0)] = True   # a1.h0 has no out-edge: dropped
    want = torch.zeros_like(c)
    for u, v in ((0, graph.attn_dst(0, "k", 1)), (graph.attn_src(0, 1), graph.mlp_dst(0)),
                 (graph.mlp_src(0), graph.logits_dst)):
        want[u, v] = True
    assert torch.equal(prune_circuit(c, graph), want)
    assert torch.equal(prune_circuit(graph.edge_mask, graph), graph.edge_mask)


def test_unsupported_granularity_is_named():
    model = tiny_model("llama")
    graph = ResidualGraph(n_layers=2)
    object.__setattr__(graph, "granularity", "neuron")  # whatever graph.py offers, faithfulness names what it lacks
    with pytest.raises(ValueError, match="'neuron' granularity"):
        circuit_mask(torch.zeros(5, 9), graph, 1, absolute=True)
    with pytest.raises(ValueError, match="'neuron' granularity"):
        ids, lm = random_batch()
        faithfulness_curve(model, ids, torch.zeros(5, 9), graph, loss_mask=lm, progress=False)


def test_head_graph_must_match_the_model():
    model = tiny_model("llama")
    graph = ResidualGraph(n_layers=2, granularity="head", model_type="llama", n_heads=8)
    ids, lm = random_batch()
    with pytest.raises(ValueError, match="8 heads"):
        faithfulness_curve(model, ids, torch.zeros(graph.n_src, graph.n_dst), graph, loss_mask=lm, progress=False)


# ---- every family, real inputs ---------------------------------------------------------
def _inputs(seed: int = 0) -> AttributionInputs:
    g = torch.Generator().manual_seed(seed)
    rows, prompts = [], []
    for length, prompt in ((9, 4), (6, 3), (11, 5), (7, 2)):
        rows.append(tuple(torch.randint(1, 40, (length,), generator=g).tolist()))
        prompts.append(prompt)
    return AttributionInputs(problem_ids=tuple("abcd"), input_ids=tuple(rows), prompt_lengths=tuple(prompts),
                             t_cut=2, model="tiny")


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_every_family_runs_and_batching_does_not_matter(family_model, granularity):
    family, model = family_model
    graph = ResidualGraph.from_model(model, granularity)
    inputs = _inputs()
    ids, attn, lm = inputs.tensors(0)
    scores = attribute(model, ids, lm, graph=graph, attention_mask=attn)
    one = faithfulness_curve(model, inputs, scores, graph=graph, pad_token_id=0, batch_size=1, progress=False)
    many = faithfulness_curve(model, inputs, scores.mean(0), graph=graph, pad_token_id=0, batch_size=4,
                              progress=False)
    assert isinstance(one, FaithfulnessCurve) and one.n_samples == 4 and one.granularity == granularity
    assert one.percents == DEFAULT_PERCENTS and len(one.f_signed) == len(one.f_abs) == 10
    np.testing.assert_allclose(one.f_signed, many.f_signed, atol=1e-9)
    np.testing.assert_allclose(one.f_abs, many.f_abs, atol=1e-9)
    assert one.f_signed[-1] == one.f_abs[-1] == 1.0
    assert np.isfinite([one.cpr, one.cmd]).all() and one.cmd >= 0
    d = one.to_dict()
    assert d["cpr"] == one.cpr and d["meta"]["model_type"] == family
    # tensors with padding give the same curve as AttributionInputs
    tens = faithfulness_curve(model, ids, scores, graph=graph, loss_mask=lm, attention_mask=attn, progress=False)
    np.testing.assert_allclose(tens.f_signed, one.f_signed, atol=1e-9)


def test_bad_inputs_are_rejected():
    model = tiny_model("llama")
    graph = ResidualGraph.from_model(model)
    ids, lm = random_batch()
    with pytest.raises(ValueError, match="scores must be"):
        faithfulness_curve(model, ids, torch.zeros(3, 3), loss_mask=lm, progress=False)
    with pytest.raises(ValueError, match="pad_token_id"):
        faithfulness_curve(model, _inputs(), torch.zeros(graph.n_src, graph.n_dst), progress=False)
    with pytest.raises(ValueError, match="percents"):
        faithfulness_curve(model, ids, torch.zeros(graph.n_src, graph.n_dst), loss_mask=lm, percents=(5, 1),
                           progress=False)
    with pytest.raises(ValueError, match="n_layers|layers"):
        faithfulness_curve(model, ids, torch.zeros(9, 17), graph=ResidualGraph(n_layers=4), loss_mask=lm,
                           progress=False)


@pytest.mark.parametrize("family,granularity", [("qwen2", "qkv"), ("qwen2", "head"), ("olmo2", "head")])
def test_bfloat16_model_runs_with_fp32_sums(family, granularity):
    model = tiny_model(family, dtype=torch.bfloat16)
    graph = ResidualGraph.from_model(model, granularity)
    ids, lm = random_batch(batch=3, seq=9)
    scores = attribute(model, ids, lm, graph=graph).mean(0)
    curve = faithfulness_curve(model, ids, scores, graph, loss_mask=lm, percents=(0, 10, 50, 100), progress=False)
    assert curve.f_signed[0] == 0.0 and curve.f_signed[-1] == 1.0 and np.isfinite(curve.f_abs).all()
    assert curve.meta["dtype"] == "bfloat16"


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_shifted_many_is_shifted_per_destination(monkeypatch, dtype):
    """The head path's batched shift (one product over the difference buffer, a few slots at a time when the
    buffer must be cast) equals the per-destination sum."""
    graph = ResidualGraph(n_layers=3, granularity="head", n_heads=4)
    g = torch.Generator().manual_seed(0)
    ablate = (torch.rand(graph.edge_mask.shape, generator=g) < 0.6) & graph.edge_mask
    patch = engine._Patch(graph, torch.randn(graph.n_src, 16, generator=g).to(dtype), ablate)
    x = torch.randn(2, 5, 16, generator=g).to(dtype)
    patch.record(0, torch.randn(2, 5, 16, generator=g).to(dtype))
    for u in range(1, graph.n_src):
        patch.record(u, torch.randn(2, 5, 16, generator=g).to(dtype))
    dsts = [j for j in (graph.attn_dst(2, "q", 0), graph.attn_dst(2, "k", 3), graph.mlp_dst(1), graph.logits_dst)
            if j in patch.ablated]
    assert len(dsts) == 4
    monkeypatch.setattr(engine, "CAST_ELEMENTS", 3 * 2 * 5 * 16)  # three slots at a time when casting
    monkeypatch.setattr(engine._Patch, "batched", lambda self: True)  # what an accelerator takes, on the CPU
    got = patch.shifted_many(dsts, x)
    want = torch.stack([patch.shifted(j, x) for j in dsts])
    tol = 1e-12 if dtype == torch.float64 else 2e-2
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
