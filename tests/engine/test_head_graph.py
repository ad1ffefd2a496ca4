""""head" granularity (SPEC §2, issue 13 item 1): per-head sources a{l}.h{i} and per-query-head
destinations a{l}.h{i}<q|k|v>, scored in the same one-pass engine. Checked against finite differences
under single-edge ablation (tests/eap_oracle.py re-implements attention, so one head's q, k or v alone
reads the shifted residual), against the "qkv" scores by summing heads, and for the graph's layout."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, strategies as st

from eapbench.engine.attribution import AttributionError, _Scorer, attribute
from eapbench.engine.graph import ResidualGraph

from eap_oracle import (ablated_loss_head, finite_difference_scores, head_source_outputs, per_sample_loss,
                        source_outputs)
from tiny_models import FAMILIES, random_batch, tiny_model


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request):
    return request.param, tiny_model(request.param)


@pytest.fixture
def fp64_scores(monkeypatch):
    """Accumulate and return scores in float64 (fp64 models), so identities hold to ~1e-15."""
    monkeypatch.setattr(_Scorer, "score_dtype", torch.float64)


# ---- the graph ----------------------------------------------------------------------------
def test_names_counts_and_order():
    g = ResidualGraph(2, "head", "llama", n_heads=2)
    assert g.sources == ["input", "a0.h0", "a0.h1", "m0", "a1.h0", "a1.h1", "m1"]
    assert g.destinations == ["a0.h0<q>", "a0.h1<q>", "a0.h0<k>", "a0.h1<k>", "a0.h0<v>", "a0.h1<v>", "m0",
                              "a1.h0<q>", "a1.h1<q>", "a1.h0<k>", "a1.h1<k>", "a1.h0<v>", "a1.h1<v>", "m1",
                              "logits"]
    assert (g.n_src, g.n_dst) == (len(g.sources), len(g.destinations)) == (7, 15)
    assert g.attn_src(1, 1) == 5 and g.mlp_src(1) == 6 and g.attn_dst(1, "k", 1) == 10 and g.mlp_dst(0) == 6
    assert "a0.h1->a1.h0<k>" in g.edge_names() and "a0.h0->m0" in g.edge_names()
    assert "a0.h0->a0.h1<q>" not in g.edge_names() and "m1->logits" in g.edge_names()


@given(st.integers(1, 5), st.integers(1, 6))
def test_layout_is_eap_igs_and_edges_iff_written_before_read(L, H):
    """Row/column indices follow EAP-IG's Graph (forward index 1 + l(H+1) + i, m at + H; backward index
    l(3H+1) + qkv·H + i, m at + 3H, logits last), so the matrices line up with its ``scores``."""
    g = ResidualGraph(L, "head", n_heads=H)
    for l in range(L):
        for i in range(H):
            assert g.sources[1 + l * (H + 1) + i] == f"a{l}.h{i}" == g.sources[g.attn_src(l, i)]
            for x, b in enumerate("qkv"):
                assert g.destinations[l * (3 * H + 1) + x * H + i] == f"a{l}.h{i}<{b}>" == \
                    g.destinations[g.attn_dst(l, b, i)]
        assert g.sources[1 + l * (H + 1) + H] == f"m{l}" and g.destinations[l * (3 * H + 1) + 3 * H] == f"m{l}"
    src_pos = {"input": -1, **{f"a{l}.h{i}": 2 * l for l in range(L) for i in range(H)},
               **{f"m{l}": 2 * l + 1 for l in range(L)}}

    def read_pos(name):
        if name == "logits":
            return 2 * L
        return 2 * int(name[1:].split("<")[0].split(".")[0]) + (1 if name.startswith("m") else 0)

    expected = torch.tensor([[src_pos[u] < read_pos(v) for v in g.destinations] for u in g.sources])
    assert torch.equal(g.edge_mask, expected) and len(g.edge_names()) == g.n_edges


@given(st.integers(1, 4), st.integers(1, 5))
def test_to_qkv_sums_heads(L, H):
    g = ResidualGraph(L, "head", n_heads=H)
    q = g.as_qkv()
    s = torch.randn(2, g.n_src, g.n_dst, dtype=torch.float64) * g.edge_mask
    out = g.to_qkv(s)
    assert out.shape == (2, q.n_src, q.n_dst)
    for u in range(q.n_src):
        for v in range(q.n_dst):
            su, sv = q.sources[u], q.destinations[v]
            rows = [i for i, n in enumerate(g.sources) if re.sub(r"\.h\d+", "", n) == su]
            cols = [j for j, n in enumerate(g.destinations) if re.sub(r"\.h\d+", "", n) == sv]
            assert torch.allclose(out[:, u, v], s[:, rows][:, :, cols].sum((1, 2))), (su, sv)
    assert torch.all(out[:, ~q.edge_mask] == 0)
    assert torch.allclose(g.to_block(s), q.to_block(out))


def test_n_heads_is_validated():
    with pytest.raises(ValueError, match="n_heads"):
        ResidualGraph(2, "head")
    with pytest.raises(ValueError, match="n_heads"):
        ResidualGraph(2, "head", n_heads=0)
    with pytest.raises(ValueError, match="only meaningful"):
        ResidualGraph(2, "qkv", n_heads=4)
    with pytest.raises(ValueError, match="head"):
        ResidualGraph(2, "head", n_heads=2).attn_dst(0, "q", 2)
    with pytest.raises(ValueError, match="to_qkv"):
        ResidualGraph(2).to_qkv(torch.zeros(5, 9))
    model = tiny_model("qwen2")
    g = ResidualGraph.from_model(model, "head")
    assert g.n_heads == 4 and g.model_type == "qwen2" and ResidualGraph.from_model(model).n_heads is None


# ---- the oracle -----------------------------------------------------------------------------
def test_oracle_attention_and_head_sources_reproduce_the_model(family_model):
    """The oracle's own attention (no shift) gives the model's loss, and its head sources sum to a{l}."""
    _, model = family_model
    ids, mask = random_batch(seed=3)
    torch.testing.assert_close(ablated_loss_head(model, ids, mask, "a1.h2<k>", None),
                               per_sample_loss(model, ids, mask), rtol=1e-12, atol=0)
    heads, whole = head_source_outputs(model, ids), source_outputs(model, ids)
    for l in range(2):
        torch.testing.assert_close(sum(heads[f"a{l}.h{i}"] for i in range(4)), whole[f"a{l}"], rtol=1e-12,
                                   atol=1e-12)


def test_head_scores_equal_finite_difference_derivative(family_model):
    family, model = family_model
    ids, mask = random_batch()
    graph = ResidualGraph.from_model(model, "head")
    scores = attribute(model, ids, mask, graph=graph).double()
    fd = finite_difference_scores(model, ids, mask, graph)
    scale = fd.abs().max()
    assert scale > 1e-3, "degenerate test model: no signal"
    assert (scores - fd).abs().max() <= 1e-6 * scale, family
    assert torch.all(scores[:, ~graph.edge_mask] == 0)
    # GQA (2 query heads per k/v head): heads sharing a k/v head still get their own k and v scores
    for b in "kv":
        a, c = graph.attn_dst(1, b, 0), graph.attn_dst(1, b, 1)
        assert (fd[:, :, a] - fd[:, :, c]).abs().max() > 1e-2 * scale


def test_oracle_three_layers_more_heads_qwen2():
    """A different head layout (6 query heads, 3 k/v heads, 3 layers) against the oracle."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    import tiny_models
    cfg = Qwen2Config(vocab_size=40, hidden_size=24, intermediate_size=40, num_hidden_layers=3,
                      num_attention_heads=6, num_key_value_heads=3, max_position_embeddings=64,
                      tie_word_embeddings=False, attn_implementation="sdpa")
    torch.manual_seed(4)
    model = Qwen2ForCausalLM(cfg).double().eval()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_((1.0 + 0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype)) if "norm" in name
                    else 0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    for mod in model.modules():
        if type(mod).__name__.endswith("RMSNorm"):
            mod.forward = tiny_models._rms_norm_same_dtype.__get__(mod)
    ids, mask = random_batch(seq=7, n_targets=3, seed=1)
    graph = ResidualGraph.from_model(model, "head")
    assert graph.n_heads == 6
    fd = finite_difference_scores(model, ids, mask, graph)
    scores = attribute(model, ids, mask, graph=graph).double()
    assert (scores - fd).abs().max() <= 1e-6 * fd.abs().max()


# ---- heads sum to the qkv graph --------------------------------------------------------------
def test_head_scores_sum_to_qkv_scores(family_model, fp64_scores):
    _, model = family_model
    ids, mask = random_batch(seed=2)
    head = ResidualGraph.from_model(model, "head")
    qkv = ResidualGraph.from_model(model, "qkv")
    s_head = attribute(model, ids, mask, graph=head)
    s_qkv = attribute(model, ids, mask, graph=qkv)
    assert s_head.dtype == s_qkv.dtype == torch.float64
    scale = s_qkv.abs().max()
    assert (head.to_qkv(s_head) - s_qkv).abs().max() <= 1e-10 * scale
    for l in range(head.n_layers):  # the source rows alone: heads sum to a{l} (columns m{l'} and logits)
        rows = s_head[:, [head.attn_src(l, i) for i in range(head.n_heads)]].sum(1)
        for l2 in range(l, head.n_layers):
            assert (rows[:, head.mlp_dst(l2)] - s_qkv[:, qkv.attn_src(l), qkv.mlp_dst(l2)]).abs().max() <= 1e-10 * scale
        assert (rows[:, -1] - s_qkv[:, qkv.attn_src(l), -1]).abs().max() <= 1e-10 * scale


# ---- the engine's promises at head granularity ----------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "olmo2"])
def test_padding_checkpointing_and_the_model_left_as_it_was(family):
    model = tiny_model(family, n_layers=3, dtype=torch.float32)
    graph = ResidualGraph.from_model(model, "head")
    ids, mask = random_batch(seq=12, n_targets=5)
    attn = torch.ones_like(ids)
    attn[1, 9:] = 0
    groups = [layer.self_attn.num_key_value_groups for layer in model.model.layers]
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    with torch.no_grad():
        before = model(input_ids=ids).logits
    batched = attribute(model, ids, mask & attn.bool(), graph=graph, attention_mask=attn)
    alone = attribute(model, ids[1:, :9], mask[1:, :9], graph=graph)[0]
    assert torch.allclose(batched[1], alone, rtol=1e-5, atol=1e-5 * alone.abs().max())
    ckpt = attribute(model, ids, mask & attn.bool(), graph=graph, attention_mask=attn, checkpointing=True)
    assert torch.allclose(batched, ckpt, rtol=1e-6, atol=1e-6 * batched.abs().max())
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == hooks
    assert [layer.self_attn.num_key_value_groups for layer in model.model.layers] == groups == [2, 2, 2]
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before)


def test_offloaded_model_scores_like_the_plain_one():
    """Head outputs and branch VJPs call the modules' forward, so accelerate loads offloaded weights."""
    from accelerate import cpu_offload

    for family in ("qwen2", "olmo2"):
        plain = tiny_model(family, dtype=torch.float32)
        ids, mask = random_batch(seq=10)
        graph = ResidualGraph.from_model(plain, "head")
        want = attribute(plain, ids, mask, graph=graph)
        model = tiny_model(family, dtype=torch.float32)
        cpu_offload(model, execution_device=torch.device("cpu"))
        got = attribute(model, ids, mask, graph=graph)
        assert (got - want).abs().max() <= 1e-5 * want.abs().max(), family


def test_graph_with_another_head_count_is_rejected():
    model = tiny_model("llama")
    ids, mask = random_batch()
    with pytest.raises(AttributionError, match="8 heads per layer, layer 0 has 4"):
        attribute(model, ids, mask, graph=ResidualGraph(2, "head", "llama", n_heads=8))
    assert all(layer.self_attn.num_key_value_groups == 2 for layer in model.model.layers)


# ---- benchmark ---------------------------------------------------------------------------------
@pytest.mark.perf
@pytest.mark.slow
@pytest.mark.parametrize("T", [256, 1024])
def test_head_vs_qkv_smollm2(benchmark, T):
    """attribute() at "head" vs "qkv" granularity on SmolLM2-135M (30 layers, 9/3 heads), fp32, B = 1,
    one torch thread, alternating; time and peak memory (RSS growth on CPU, allocator peak on CUDA).

        pytest tests/engine/test_head_graph.py -m perf --benchmarks -s
    """
    import statistics
    import time

    from eapbench.models import load_smollm2
    from test_attribution_bench import PeakMemory

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, _ = load_smollm2(dtype="float32", device=device.type)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, model.config.vocab_size, (1, T), generator=g).to(device)
        mask = torch.zeros(1, T, dtype=torch.bool, device=device)
        mask[:, T // 2:] = True
        graphs = {k: ResidualGraph.from_model(model, k) for k in ("qkv", "head")}
        for graph in graphs.values():  # warm-up
            attribute(model, ids[:, :32], mask[:, T // 2 - 16:T // 2 + 16], graph=graph)
        runs = {k: [] for k in graphs}
        for _ in range(2):
            for k, graph in graphs.items():
                t0 = time.perf_counter()
                with PeakMemory(device) as pm:
                    attribute(model, ids, mask, graph=graph)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                runs[k].append((time.perf_counter() - t0, pm.peak))
        benchmark.group = f"SmolLM2 head vs qkv T={T}"
        benchmark.pedantic(lambda: attribute(model, ids, mask, graph=graphs["head"]), rounds=1, iterations=1)
    finally:
        torch.set_num_threads(threads)
    row = {"T": T, **{f"{k}_s": statistics.median(t for t, _ in v) for k, v in runs.items()},
           **{f"{k}_peak_mb": max(m for _, m in v) / 2**20 for k, v in runs.items()},
           **{f"{k}_edges": g.n_edges for k, g in graphs.items()}}
    row["time_ratio"] = row["head_s"] / row["qkv_s"]
    row["mem_ratio"] = row["head_peak_mb"] / row["qkv_peak_mb"]
    benchmark.extra_info.update(row)
    print(f"\nSmolLM2-135M fp32 T={T} {device.type}: qkv {row['qkv_s']:.2f}s {row['qkv_peak_mb']:.0f}MB "
          f"({row['qkv_edges']} edges) | head {row['head_s']:.2f}s {row['head_peak_mb']:.0f}MB "
          f"({row['head_edges']} edges) | head/qkv: time x{row['time_ratio']:.2f} memory x{row['mem_ratio']:.2f}")
