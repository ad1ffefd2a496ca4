"""Planned attribution (eapbench.engine.planning): batches packed by length under a memory budget,
checkpointing only where a sample needs it, and scores that do not depend on the batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eapbench.engine.attribution import score_inputs
from eapbench.engine.memory import estimate_memory
from eapbench.engine.planning import ALLOCATOR_OVERHEAD, PlanError, parse_bytes, plan_batches, resolve_budget
from eapbench.records import AttributionInputs

from tiny_models import tiny_model

LLAMA_8B = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
            "num_key_value_heads": 8, "vocab_size": 128256, "num_hidden_layers": 32, "_attn_implementation": "sdpa"}


def need(T, B=1, ckpt=False, padded=False):
    """What the planner counts on CUDA: the estimate times the allocator's overhead."""
    return int(ALLOCATOR_OVERHEAD["cuda"] * estimate_memory(LLAMA_8B, seq_len=T, batch_size=B, dtype="bfloat16",
                                                            checkpointing=ckpt, device="cuda", padded=padded))


def test_without_a_budget_the_plan_is_consecutive_batches():
    plan = plan_batches(LLAMA_8B, [5, 9, 3, 7, 2], batch_size=2)
    assert [b.rows for b in plan] == [(0, 1), (2, 3), (4,)]
    assert not any(b.checkpointing for b in plan) and all(b.estimate is None for b in plan)
    assert all(b.checkpointing for b in plan_batches(LLAMA_8B, [5, 9], batch_size=8, checkpointing=True))


def test_long_samples_get_small_batches_and_checkpointing_only_when_needed():
    lengths = [8192, 512, 512, 512, 512, 300, 16384]
    budget = need(8192) + need(8192) // 10  # one 8k sample fits, a 16k one needs checkpointing
    assert need(16384) > budget >= need(16384, ckpt=True)
    plan = plan_batches(LLAMA_8B, lengths, batch_size=8, budget=budget, checkpointing="auto", dtype="bfloat16",
                        device="cuda")
    assert plan[0].rows == (6,) and plan[0].checkpointing  # longest first, alone, checkpointed
    assert plan[1].rows == (0,) and not plan[1].checkpointing
    assert plan[2].rows == (1, 2, 3, 4, 5) and not plan[2].checkpointing  # the short ones packed together
    assert all(b.estimate <= budget for b in plan)
    with pytest.raises(PlanError, match=r"sample q6 \(16384 tokens\) needs .* GiB for attribution, more than the "
                                        r"memory budget .*allow checkpointing"):
        plan_batches(LLAMA_8B, lengths, batch_size=8, budget=budget, checkpointing=False, dtype="bfloat16",
                     device="cuda", names=[f"q{i}" for i in range(7)])
    with pytest.raises(PlanError, match="even with checkpointing"):
        plan_batches(LLAMA_8B, [16384], batch_size=8, budget=need(16384, ckpt=True) - 1, checkpointing="auto",
                     dtype="bfloat16", device="cuda")


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(2, 6000), min_size=1, max_size=30), batch_size=st.integers(1, 9),
       scale=st.floats(1.0, 20.0))
def test_plan_invariants(lengths, batch_size, scale):
    budget = int(scale * need(max(lengths), ckpt=True))
    plan = plan_batches(LLAMA_8B, lengths, batch_size=batch_size, budget=budget, checkpointing="auto",
                        dtype="bfloat16", device="cuda")
    rows = [r for b in plan for r in b.rows]
    assert sorted(rows) == list(range(len(lengths)))  # every sample exactly once
    for b in plan:
        assert 1 <= len(b.rows) <= batch_size and b.estimate <= budget
        widths = [lengths[r] for r in b.rows]
        assert widths == sorted(widths, reverse=True)
        assert b.estimate == need(widths[0], len(widths), b.checkpointing, len(set(widths)) > 1)
        if b.checkpointing:  # only samples that alone would not fit without it
            assert all(need(w) > budget for w in widths)


def test_eap_ig_plans_against_its_own_estimate():
    """EAP-IG keeps a second source buffer: under the same budget it packs fewer rows, each batch's estimate
    its own (method, steps, baseline passed through); a bad method fails with or without a budget."""
    lengths = [2048] * 8
    ig = dict(method="eap-ig", steps=5, baseline="tokens")

    def ig_need(T, B=1):
        return int(ALLOCATOR_OVERHEAD["cuda"] * estimate_memory(LLAMA_8B, seq_len=T, batch_size=B, dtype="bfloat16",
                                                                device="cuda", **ig))
    budget = need(2048, 4) + need(2048) // 20  # four rows of plain EAP
    assert ig_need(2048, 3) < budget < ig_need(2048, 4)
    eap = plan_batches(LLAMA_8B, lengths, batch_size=8, budget=budget, dtype="bfloat16", device="cuda")
    plan = plan_batches(LLAMA_8B, lengths, batch_size=8, budget=budget, dtype="bfloat16", device="cuda", **ig)
    assert [len(b.rows) for b in eap] == [4, 4] and [len(b.rows) for b in plan] == [3, 3, 2]
    assert [b.estimate for b in plan] == [ig_need(2048, 3)] * 2 + [ig_need(2048, 2)]
    with pytest.raises(PlanError, match="even with checkpointing"):
        plan_batches(LLAMA_8B, [8192], batch_size=1, budget=int(ig_need(8192) * 0.3), checkpointing="auto",
                     dtype="bfloat16", device="cuda", **ig)
    for budget in (None, 10**12):
        with pytest.raises(ValueError, match="method"):
            plan_batches(LLAMA_8B, lengths, batch_size=8, budget=budget, method="ig")


def test_sizes_and_auto_budget():
    assert parse_bytes("40GiB") == 40 * 2**30 and parse_bytes("500MB") == 500 * 10**6 and parse_bytes(1024) == 1024
    assert parse_bytes("1.5e9") == 1_500_000_000
    for bad in ("lots", "-1GiB", "0", "40 parsecs"):
        with pytest.raises(ValueError, match="memory budget"):
            parse_bytes(bad)
    assert resolve_budget(None, "cpu") is None
    auto = resolve_budget("auto", "cpu")
    assert 0 < auto < 24 * 2**40


def inputs_of_mixed_lengths(n=9, seed=0) -> AttributionInputs:
    g = np.random.default_rng(seed)
    rows, plens = [], []
    for _ in range(n):
        p, extra = int(g.integers(2, 6)), int(g.integers(0, 8))
        rows.append(tuple(int(x) for x in g.integers(2, 40, size=p + 4 + extra)))
        plens.append(p + extra)  # t_cut = 4 answer tokens after prompts of different lengths
    return AttributionInputs(tuple(f"q{i}" for i in range(n)), tuple(rows), tuple(plens), 4, model="tiny")


def test_planned_scores_equal_one_by_one_in_input_order():
    model = tiny_model("qwen2", seed=3)
    inp = inputs_of_mixed_lengths()
    alone = score_inputs(model, inp, pad_token_id=0, batch_size=1, progress=False)
    budget = int(ALLOCATOR_OVERHEAD["cpu"] * estimate_memory(model.config, seq_len=max(map(len, inp.input_ids)),
                                                             batch_size=3, dtype="float64", device="cpu", padded=True))
    planned = score_inputs(model, inp, pad_token_id=0, batch_size=8, progress=False, memory_budget=budget,
                           checkpointing="auto")
    plan = planned.meta["plan"]
    assert plan["budget_bytes"] == budget and sum(int(k) * v for k, v in plan["batch_sizes"].items()) == 9
    assert max(map(int, plan["batch_sizes"])) > 1
    assert plan["batches"] < 9 and plan["max_estimate_bytes"] <= budget
    assert planned.problem_ids == inp.problem_ids
    torch.testing.assert_close(planned.scores, alone.scores, rtol=1e-7, atol=1e-9 * float(alone.scores.abs().max()))
    torch.testing.assert_close(planned.losses, alone.losses, rtol=1e-9, atol=0)
    forced = score_inputs(model, inp, pad_token_id=0, batch_size=4, progress=False, checkpointing=True)
    torch.testing.assert_close(forced.scores, alone.scores, rtol=1e-7, atol=1e-9 * float(alone.scores.abs().max()))


def test_score_inputs_plans_eap_ig_with_its_estimate():
    """score_inputs passes EAP-IG's method, steps and baseline ("tokens" for a corrupted one) to the planner."""
    model = tiny_model("llama", seed=3)
    inp = inputs_of_mixed_lengths(n=4)
    base = AttributionInputs(inp.problem_ids, tuple(tuple((t * 7 + 3) % 40 for t in r) for r in inp.input_ids),
                             inp.prompt_lengths, inp.t_cut, model="tiny")
    width = max(map(len, inp.input_ids))
    kw = dict(seq_len=width, batch_size=4, dtype="float64", device="cpu", padded=True)
    ig = dict(method="eap-ig", steps=2, baseline="tokens")
    planned = score_inputs(model, inp, pad_token_id=0, batch_size=4, progress=False, memory_budget=10**12,
                           method="eap-ig", steps=2, baseline=base)
    assert planned.meta["plan"]["batches"] == 1
    assert planned.meta["plan"]["max_estimate_bytes"] == int(ALLOCATOR_OVERHEAD["cpu"] * estimate_memory(
        model.config, **kw, **ig)) > int(ALLOCATOR_OVERHEAD["cpu"] * estimate_memory(model.config, **kw))
    unplanned = score_inputs(model, inp, pad_token_id=0, batch_size=4, progress=False, method="eap-ig", steps=2,
                             baseline=base)
    torch.testing.assert_close(planned.scores, unplanned.scores, rtol=1e-7,
                               atol=1e-9 * float(unplanned.scores.abs().max()))


def test_sample_cache_shares_scores_across_calls(tmp_path):
    """Issue 14.4: with sample_cache a sample is attributed once: an identical call computes nothing and
    returns the same scores bit for bit; an overlapping call computes only its new samples, and the reused
    ones equal a fresh batch's up to summation order; another t_cut, graph or model key shares nothing."""
    import numpy as np

    from eapbench.engine.attribution import score_inputs
    from eapbench.engine.graph import ResidualGraph
    from eapbench.records import AttributionInputs
    from tiny_models import tiny_model

    model = tiny_model("llama", dtype=torch.float32)

    def inputs(ids, t_cut=4):
        rows, plens = [], []
        for k in ids:
            p = 3 + k % 3
            rows.append(tuple(int(x) for x in np.random.default_rng(k).integers(2, 40, size=p + t_cut)))
            plens.append(p)
        return AttributionInputs(tuple(f"q{k}" for k in ids), tuple(rows), tuple(plens), t_cut, model="m")

    first = inputs(range(0, 10))
    kw = dict(pad_token_id=0, batch_size=4, progress=False, sample_cache=tmp_path, cache_key="model-a")
    a = score_inputs(model, first, **kw)
    assert a.meta["shared_samples"] == 0 and len(list(tmp_path.glob("sample-*.pt"))) == 10
    again = score_inputs(model, first, **kw)
    assert again.meta["shared_samples"] == 10 and again.meta["computed_batches"] == 0
    assert torch.equal(again.scores, a.scores) and torch.equal(again.losses, a.losses)
    sorted(tmp_path.glob("sample-*.pt"))[0].write_bytes(b"garbage")  # corrupt: named, dropped, recomputed
    c = score_inputs(model, first, **kw)
    assert c.meta["shared_samples"] == 9 and c.meta["computed_batches"] == 1
    torch.testing.assert_close(c.scores, a.scores, rtol=1e-5, atol=1e-6 * float(a.scores.abs().max()))
    overlap = inputs(range(5, 15))
    b = score_inputs(model, overlap, **kw)
    assert b.meta["shared_samples"] == 5 and b.meta["computed_batches"] == 2
    fresh = score_inputs(model, overlap, pad_token_id=0, batch_size=4, progress=False)
    torch.testing.assert_close(b.scores, fresh.scores, rtol=1e-5, atol=1e-6 * float(fresh.scores.abs().max()))
    assert torch.equal(b.scores[:5], c.scores[5:])  # the shared rows are the stored ones
    assert score_inputs(model, inputs(range(0, 10), t_cut=5), **kw).meta["shared_samples"] == 0
    assert score_inputs(model, first, **{**kw, "cache_key": "model-b"}).meta["shared_samples"] == 0
    block = ResidualGraph.from_model(model, granularity="block")
    assert score_inputs(model, first, graph=block, **kw).meta["shared_samples"] == 0
