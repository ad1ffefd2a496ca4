"""The EAP engine against its definition: finite differences under single-edge ablation
on tiny fp64 models of every supported family, plus the invariants the engine promises."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from eapbench.engine.architectures import ARCHITECTURES, UnsupportedArchitectureError
from eapbench.engine.attribution import AttributionError, _Scorer, attribute, attribution_hooks, score_inputs
from eapbench.engine.graph import ResidualGraph
from eapbench.records import AttributionInputs

from eap_oracle import finite_difference_scores, per_sample_loss
from tiny_models import FAMILIES, random_batch, tiny_model


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request):
    return request.param, tiny_model(request.param)


def test_every_supported_family_is_tested():
    assert set(FAMILIES) == set(ARCHITECTURES)


# ---- the oracle -------------------------------------------------------------------------
@pytest.mark.parametrize("granularity", ["qkv", "block"])
def test_scores_equal_finite_difference_derivative(family_model, granularity):
    family, model = family_model
    ids, mask = random_batch()
    graph = ResidualGraph.from_model(model, granularity)
    scores = attribute(model, ids, mask, graph=graph).double()
    fd = finite_difference_scores(model, ids, mask, graph)
    scale = fd.abs().max()
    assert scale > 1e-3, "degenerate test model: no signal"
    # the bound is 1e-3 of the largest score; fp64 models reach fp32 rounding (~3e-7)
    assert (scores - fd).abs().max() <= 1e-5 * scale, family
    assert torch.all(scores[:, ~graph.edge_mask] == 0)


def test_oracle_three_layers_llama():
    model = tiny_model("llama", n_layers=3, seed=3)
    ids, mask = random_batch(seq=7, n_targets=3, seed=1)
    graph = ResidualGraph.from_model(model)
    fd = finite_difference_scores(model, ids, mask, graph)
    scores = attribute(model, ids, mask, graph=graph).double()
    assert (scores - fd).abs().max() <= 1e-5 * fd.abs().max()


def test_block_equals_sum_of_qkv(family_model):
    _, model = family_model
    ids, mask = random_batch(seed=2)
    qkv = ResidualGraph.from_model(model, "qkv")
    block = ResidualGraph.from_model(model, "block")
    s_qkv = attribute(model, ids, mask, graph=qkv)
    s_block = attribute(model, ids, mask, graph=block)
    assert torch.allclose(s_block, qkv.to_block(s_qkv), rtol=1e-5, atol=1e-6 * s_qkv.abs().max())


# ---- batching and padding ---------------------------------------------------------------
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_each_sample_alone(family_model, side):
    _, model = family_model
    g = torch.Generator().manual_seed(5)
    lengths, prompts = [9, 6, 7], [4, 3, 5]
    rows = [tuple(torch.randint(0, 40, (n,), generator=g).tolist()) for n in lengths]
    inputs = AttributionInputs(problem_ids=("a", "b", "c"), input_ids=tuple(rows),
                               prompt_lengths=tuple(prompts), t_cut=2)
    graph = ResidualGraph.from_model(model)
    ids, attn, loss = inputs.tensors(pad_token_id=0, padding_side=side)
    batched = attribute(model, ids, loss, graph=graph, attention_mask=attn)
    for k in range(3):
        i1, a1, l1 = inputs.tensors(pad_token_id=0, rows=slice(k, k + 1))
        alone = attribute(model, i1, l1, graph=graph, attention_mask=a1)[0]
        assert torch.allclose(batched[k], alone, rtol=1e-5, atol=1e-6 * alone.abs().max()), (side, k)


def test_score_inputs_matches_attribute_and_keeps_order(family_model):
    _, model = family_model
    ids, mask = random_batch(batch=5, seed=4)
    inputs = AttributionInputs(problem_ids=tuple("abcde"), input_ids=tuple(tuple(r) for r in ids.tolist()),
                               prompt_lengths=(5,) * 5, t_cut=4)
    es = score_inputs(model, inputs, pad_token_id=0, batch_size=2, progress=False)
    direct = attribute(model, ids, mask)
    assert es.problem_ids == tuple("abcde")
    assert es.scores.shape == direct.shape and es.edge_vectors().shape == (5, es.graph.n_edges)
    assert torch.allclose(es.scores, direct, rtol=1e-5, atol=1e-6 * direct.abs().max())
    assert es.losses.shape == (5,)


def test_score_inputs_resumes_finished_batches(tmp_path, monkeypatch):
    model = tiny_model("qwen2")
    ids, _ = random_batch(batch=4, seed=9)
    inputs = AttributionInputs(problem_ids=tuple("abcd"), input_ids=tuple(tuple(r) for r in ids.tolist()),
                               prompt_lengths=(5,) * 4, t_cut=4)
    first = score_inputs(model, inputs, pad_token_id=0, batch_size=2, progress=False, resume_dir=tmp_path,
                         cache_key="m1")
    assert first.meta["resumed_batches"] == 0 and len(list(tmp_path.glob("batch-*.pt"))) == 2
    import eapbench.engine.attribution as attribution
    calls = []
    real = attribution.attribute
    monkeypatch.setattr(attribution, "attribute", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = score_inputs(model, inputs, pad_token_id=0, batch_size=2, progress=False, resume_dir=tmp_path,
                         cache_key="m1")
    assert calls == [] and again.meta["resumed_batches"] == 2 and torch.equal(again.scores, first.scores)
    other = score_inputs(model, inputs, pad_token_id=0, batch_size=2, progress=False, resume_dir=tmp_path,
                         cache_key="another-model")
    assert len(calls) == 2 and other.meta["resumed_batches"] == 0


@pytest.mark.parametrize("content", [b"\x80\xff garbage \x00", b"", "wrong-shape"], ids=["binary", "empty", "wrong-shape"])
def test_corrupt_resume_file_is_named_dropped_and_recomputed(tmp_path, caplog, content):
    """Issue 15: a damaged resume file is a warning naming it, then its batch is computed again."""
    import logging

    model = tiny_model("llama")
    ids, _ = random_batch(batch=4, seed=9)
    inputs = AttributionInputs(problem_ids=tuple("abcd"), input_ids=tuple(tuple(r) for r in ids.tolist()),
                               prompt_lengths=(5,) * 4, t_cut=4)
    kw = dict(pad_token_id=0, batch_size=2, progress=False, resume_dir=tmp_path, cache_key="m")
    first = score_inputs(model, inputs, **kw)
    bad = sorted(tmp_path.glob("batch-*.pt"))[0]
    if content == "wrong-shape":
        torch.save({"scores": torch.zeros(1, 2, 3), "losses": torch.zeros(1)}, bad)
    else:
        bad.write_bytes(content)
    with caplog.at_level(logging.WARNING):
        again = score_inputs(model, inputs, **kw)
    assert str(bad) in caplog.text
    assert again.meta["resumed_batches"] == 1 and again.meta["computed_batches"] == 1
    assert torch.equal(again.scores, first.scores) and torch.equal(again.losses, first.losses)
    assert bad.is_file()  # rewritten with the recomputed batch
    done = score_inputs(model, inputs, **kw, cleanup=True)
    assert done.meta["resumed_batches"] == 2 and list(tmp_path.glob("batch-*.pt")) == []


def test_checkpointing_gives_the_same_scores():
    model = tiny_model("llama")
    ids, mask = random_batch(seed=6)
    plain = attribute(model, ids, mask)
    ckpt = attribute(model, ids, mask, checkpointing=True)
    assert torch.allclose(plain, ckpt, rtol=1e-6, atol=1e-9)
    assert not model.training and not model.is_activation_checkpointing
    model.train()
    assert torch.equal(attribute(model, ids, mask), plain) and model.training
    model.eval()


# ---- the model is left as it was ------------------------------------------------------
def _forward_hooks(model):
    return {name: (dict(m._forward_hooks), dict(m._forward_pre_hooks)) for name, m in model.named_modules()}


@pytest.mark.parametrize("granularity,method", [("qkv", "eap"), ("block", "eap"), ("head", "eap"), ("qkv", "eap-ig")])
def test_checkpointing_leaves_no_forward_hook(granularity, method):
    """transformers' activation_checkpointing_enable registers enable_input_require_grads' hook on the input
    embeddings and its disable keeps it: attribute() removes it, so every module's hooks are as before."""
    model = tiny_model("llama")
    ids, mask = random_batch(seed=6)
    graph = ResidualGraph.from_model(model, granularity)
    before = _forward_hooks(model)
    attribute(model, ids, mask, graph=graph, checkpointing=True, method=method)
    assert _forward_hooks(model) == before
    assert not model.is_activation_checkpointing and not hasattr(model, "_require_grads_hook")
    assert not any("_gradient_checkpointing_func" in vars(m) for m in model.modules())


def test_checkpointing_keeps_the_callers_own_hooks_modes_and_checkpointing():
    model = tiny_model("qwen2")
    ids, mask = random_batch(seed=6)
    plain = attribute(model, ids, mask)
    model.enable_input_require_grads()  # the caller's own, e.g. for adapters
    handles = model._require_grads_hooks
    model.train()
    model.model.layers[0].eval()
    modes = {n: m.training for n, m in model.named_modules()}
    before = _forward_hooks(model)
    for ckpt in (True, False):
        assert torch.allclose(attribute(model, ids, mask, checkpointing=ckpt), plain, rtol=1e-6, atol=1e-9)
        assert _forward_hooks(model) == before and model._require_grads_hooks is handles
        assert {n: m.training for n, m in model.named_modules()} == modes
    model.activation_checkpointing_enable({"use_reentrant": True})  # the caller checkpoints, its own way
    func = model.model.layers[0]._gradient_checkpointing_func
    before = _forward_hooks(model)
    attribute(model, ids, mask, checkpointing=True)
    assert model.is_activation_checkpointing and model.model.layers[0]._gradient_checkpointing_func is func
    assert _forward_hooks(model) == before


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def test_model_left_untouched(family_model):
    _, model = family_model
    ids, mask = random_batch(seed=7)
    flags = {n: (i % 3 == 0) for i, (n, _) in enumerate(model.named_parameters())}
    for n, p in model.named_parameters():
        p.requires_grad_(flags[n])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        logits_before = model(input_ids=ids).logits
    hooks_before = _hook_count(model)

    _, losses = attribute(model, ids, mask, return_loss=True)

    assert _hook_count(model) == hooks_before
    for n, p in model.named_parameters():
        assert p.requires_grad == flags[n] and p.grad is None, n
        assert torch.equal(p, before[n]), n
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, logits_before)
        assert torch.allclose(losses.double(), per_sample_loss(model, ids, mask), rtol=1e-10)
    for p in model.parameters():
        p.requires_grad_(True)


def test_hooked_forward_is_bit_identical(family_model):
    _, model = family_model
    ids, _ = random_batch(seed=8)
    graph = ResidualGraph.from_model(model)
    with torch.no_grad():
        plain = model.model(input_ids=ids).last_hidden_state
    from eapbench.engine.architectures import arch_spec
    scorer = _Scorer(graph=graph, spec=arch_spec(model), token_mask=torch.ones_like(ids))
    with attribution_hooks(model, graph, scorer), torch.enable_grad():
        hooked = model.model(input_ids=ids).last_hidden_state
    assert torch.equal(plain, hooked.detach())


def test_hooks_removed_and_flags_restored_on_error(monkeypatch):
    model = tiny_model("qwen2")
    ids, mask = random_batch()
    hooks_before = _hook_count(model)

    def boom(*a, **k):
        raise RuntimeError("exploded mid-forward")
    monkeypatch.setattr(model.model.layers[1].mlp, "forward", boom)
    with pytest.raises(RuntimeError, match="exploded"):
        attribute(model, ids, mask)
    assert _hook_count(model) == hooks_before
    assert all(p.requires_grad for p in model.parameters())


# ---- properties -----------------------------------------------------------------------
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.integers(1, 3), seq=st.integers(2, 10), data=st.data())
def test_shape_mask_and_determinism(batch, seq, data):
    model = _PROPERTY_MODEL
    n_targets = data.draw(st.integers(1, seq - 1))
    seed = data.draw(st.integers(0, 1000))
    ids, mask = random_batch(batch=batch, seq=seq, n_targets=n_targets, seed=seed)
    graph = ResidualGraph.from_model(model)
    s1 = attribute(model, ids, mask, graph=graph)
    s2 = attribute(model, ids, mask, graph=graph)
    assert s1.dtype == torch.float32 and s1.shape == (batch, graph.n_src, graph.n_dst)
    assert torch.all(s1[:, ~graph.edge_mask] == 0)
    assert torch.equal(s1, s2)


_PROPERTY_MODEL = tiny_model("olmo2", dtype=torch.float32)


# ---- bad input ------------------------------------------------------------------------
def test_row_without_target_is_rejected():
    model = tiny_model("llama")
    ids, mask = random_batch()
    mask[1] = False
    with pytest.raises(AttributionError, match=r"no target token in rows \[1\]"):
        attribute(model, ids, mask)


def test_target_at_position_zero_is_rejected():
    model = tiny_model("llama")
    ids, mask = random_batch()
    mask[0, 0] = True
    with pytest.raises(AttributionError, match="position 0"):
        attribute(model, ids, mask)


def test_mismatched_shapes_are_rejected():
    model = tiny_model("llama")
    ids, mask = random_batch()
    with pytest.raises(AttributionError, match="loss_mask shape"):
        attribute(model, ids, mask[:, :-1])
    with pytest.raises(AttributionError, match="attention_mask shape"):
        attribute(model, ids, mask, attention_mask=torch.ones(1, 3))
    with pytest.raises(AttributionError, match=r"\[batch, seq\]"):
        attribute(model, ids[0], mask[0])


def test_targets_on_padding_are_rejected():
    model = tiny_model("llama")
    ids, mask = random_batch()
    attn = torch.ones_like(ids)
    attn[0, -1] = 0
    with pytest.raises(AttributionError, match="padding positions"):
        attribute(model, ids, mask, attention_mask=attn)


def test_out_of_vocabulary_ids_are_rejected():
    model = tiny_model("llama")
    ids, mask = random_batch()
    ids[0, 3] = 10_000
    with pytest.raises(AttributionError, match="another model's tokenizer"):
        attribute(model, ids, mask)


def test_graph_of_another_model_is_rejected():
    model = tiny_model("llama")
    ids, mask = random_batch()
    with pytest.raises(AttributionError, match="3 layers.*ResidualGraph.from_model"):
        attribute(model, ids, mask, graph=ResidualGraph(3, model_type="llama"))
    with pytest.raises(AttributionError, match="olmo2"):
        attribute(model, ids, mask, graph=ResidualGraph(2, model_type="olmo2"))


def test_unsupported_architecture_names_it_and_the_supported_ones():
    from transformers import GPT2Config, GPT2LMHeadModel
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=30))
    ids, mask = random_batch(vocab=30)
    with pytest.raises(UnsupportedArchitectureError, match=r"'gpt2'.*llama, mistral, olmo2, qwen2"):
        attribute(model, ids, mask)
    with pytest.raises(UnsupportedArchitectureError):
        ResidualGraph.from_model(model)


def test_non_finite_loss_names_the_sample():
    model = tiny_model("llama")
    ids, mask = random_batch()
    ids[0] = torch.where(ids[0] == 39, 0, ids[0])  # token 39 only in sample 1
    ids[1, 2] = 39
    with torch.no_grad():
        model.model.embed_tokens.weight[39] = float("nan")
    with pytest.raises(AttributionError, match=r"non-finite loss for samples \[1\]"):
        attribute(model, ids, mask)


def test_non_finite_gradient_names_the_sample():
    model = tiny_model("mistral")
    ids, mask = random_batch()

    def poison(module, grad_output):  # NaN gradient into row 1 only, loss stays finite
        g = grad_output[0].clone()
        g[1] = float("nan")
        return (g,)
    handle = model.model.layers[1].mlp.register_full_backward_pre_hook(poison)
    try:
        with pytest.raises(AttributionError, match=r"non-finite gradients.*samples \[1\]"):
            attribute(model, ids, mask)
    finally:
        handle.remove()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_residual_rebuilt_from_the_buffer_is_the_layer_input_bit_for_bit(monkeypatch, dtype, checkpointing):
    """The q/k/v norm's backward reads the residual rebuilt from the source buffer (no copy kept per layer):
    it must be the very tensor the attention norm read in forward, in every family and dtype."""
    from eapbench.engine import attribution as A
    from eapbench.engine.architectures import arch_spec, decoder_layers, get_module

    for family in FAMILIES:
        model = tiny_model(family, n_layers=3, dtype=dtype)
        spec = arch_spec(model)
        if not spec.attn_norm:
            continue
        seen, checked = {}, []
        for l, layer in enumerate(decoder_layers(model, spec)):
            get_module(layer, spec.attn_norm).register_forward_pre_hook(
                lambda mod, args, l=l: seen.__setitem__(l, args[0].detach().clone()))
        flush = A._Scorer.flush_layer

        def checking_flush(self, layer):
            checked.append(torch.equal(self.residual(layer), seen[layer]))
            return flush(self, layer)

        monkeypatch.setattr(A._Scorer, "flush_layer", checking_flush)
        ids, mask = random_batch(seq=12, n_targets=5)
        attn = torch.ones_like(ids)
        attn[1, 9:] = 0
        A.attribute(model, ids, mask & attn.bool(), attention_mask=attn, checkpointing=checkpointing)
        assert checked == [True] * 3, family
        monkeypatch.undo()
