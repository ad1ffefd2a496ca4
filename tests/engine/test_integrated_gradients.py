"""EAP-IG (SPEC §11) against its definition: per-step finite differences under single-edge ablation
with interpolated embeddings (tests/eap_oracle.py), its reduction to plain EAP, Riemann
convergence and completeness where they hold, and argument validation."""

from __future__ import annotations

import pytest
import torch

from eapbench.engine.attribution import AttributionError, attribute, score_inputs
from eapbench.engine.graph import ResidualGraph
from eapbench.records import AttributionInputs

from eap_oracle import ig_finite_difference_scores, interpolated_loss, per_sample_loss, source_outputs
from tiny_models import FAMILIES, random_batch, tiny_model


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request):
    return request.param, tiny_model(request.param)


def corrupted(ids: torch.Tensor, seed: int = 11) -> torch.Tensor:
    return random_batch(batch=ids.shape[0], seq=ids.shape[1], seed=seed)[0]


# ---- the oracle -------------------------------------------------------------------------
@pytest.mark.parametrize("baseline", ["zero", "tokens"])
def test_scores_equal_finite_difference_ig(family_model, baseline):
    family, model = family_model
    ids, mask = random_batch()
    base = None if baseline == "zero" else corrupted(ids)
    graph = ResidualGraph.from_model(model)
    steps = 3
    scores = attribute(model, ids, mask, graph=graph, method="eap-ig", steps=steps, baseline=base).double()
    fd = ig_finite_difference_scores(model, ids, mask, graph, steps, base)
    scale = fd.abs().max()
    assert scale > 1e-3, "degenerate test model: no signal"
    assert (scores - fd).abs().max() <= 1e-6 * scale, family
    assert torch.all(scores[:, ~graph.edge_mask] == 0)
    eap = attribute(model, ids, mask, graph=graph).double()
    assert (scores - eap).abs().max() > 1e-2 * scale, "IG indistinguishable from plain EAP: the test proves nothing"


@pytest.mark.parametrize("family", ["llama", "olmo2"])
def test_block_granularity_equals_finite_difference_ig(family):
    model = tiny_model(family, seed=1)
    ids, mask = random_batch(seed=3)
    base = corrupted(ids, seed=5)
    graph = ResidualGraph.from_model(model, "block")
    scores = attribute(model, ids, mask, graph=graph, method="eap-ig", steps=4, baseline=base).double()
    fd = ig_finite_difference_scores(model, ids, mask, graph, 4, base)
    assert (scores - fd).abs().max() <= 1e-6 * fd.abs().max()


def test_block_equals_sum_of_qkv(family_model):
    _, model = family_model
    ids, mask = random_batch(seed=2)
    base = corrupted(ids)
    qkv, block = ResidualGraph.from_model(model, "qkv"), ResidualGraph.from_model(model, "block")
    s_qkv = attribute(model, ids, mask, graph=qkv, method="eap-ig", steps=4, baseline=base)
    s_block = attribute(model, ids, mask, graph=block, method="eap-ig", steps=4, baseline=base)
    assert torch.allclose(s_block, qkv.to_block(s_qkv), rtol=1e-5, atol=1e-6 * s_qkv.abs().max())


# ---- reduction to plain EAP -------------------------------------------------------------
@pytest.mark.parametrize("granularity", ["qkv", "block"])
def test_one_step_zero_baseline_is_plain_eap(family_model, granularity):
    _, model = family_model
    ids, mask = random_batch(seed=4)
    graph = ResidualGraph.from_model(model, granularity)
    eap, eap_loss = attribute(model, ids, mask, graph=graph, return_loss=True)
    ig, ig_loss = attribute(model, ids, mask, graph=graph, method="eap-ig", steps=1, return_loss=True)
    assert torch.equal(ig, eap) and torch.equal(ig_loss, eap_loss)


def test_losses_are_the_clean_losses():
    model = tiny_model("qwen2")
    ids, mask = random_batch(seed=6)
    _, losses = attribute(model, ids, mask, method="eap-ig", steps=3, baseline=corrupted(ids), return_loss=True)
    assert torch.allclose(losses.double(), per_sample_loss(model, ids, mask), rtol=1e-10)


# ---- Riemann sums -----------------------------------------------------------------------
def test_riemann_sums_converge_with_a_corrupted_baseline(family_model):
    """The right Riemann sum's error is O(1/m): |W_m − W_2m| roughly halves each doubling."""
    _, model = family_model
    ids, mask = random_batch()
    base = corrupted(ids)
    graph = ResidualGraph.from_model(model)
    W = {m: attribute(model, ids, mask, graph=graph, method="eap-ig", steps=m, baseline=base).double()
         for m in (8, 16, 32, 64)}
    d = [float((W[m] - W[2 * m]).abs().max()) for m in (8, 16, 32)]
    assert d[1] < 0.7 * d[0] and d[2] < 0.7 * d[1], d
    assert d[2] < 0.05 * float(W[64].abs().max()), d


def test_input_row_is_the_riemann_sum_of_the_embedding_gradient(family_model):
    """Completeness at fixed m (exact): every path from the embeddings to the loss passes through
    exactly one destination, so Σ_v W[input, v] = −(e − e')·(1/m)Σ_k ∇_e L(e' + α_k(e − e'))."""
    _, model = family_model
    ids, mask = random_batch(seed=8)
    base = corrupted(ids)
    e, e0 = source_outputs(model, ids)["input"], source_outputs(model, base)["input"]
    steps = 3
    W = attribute(model, ids, mask, method="eap-ig", steps=steps, baseline=base).double()
    riemann = torch.zeros(ids.shape[0], dtype=torch.float64)
    for k in range(1, steps + 1):
        x = (e0 + k / steps * (e - e0)).requires_grad_(True)
        logits = model(inputs_embeds=x).logits.double()
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
        m = mask[:, 1:].double()
        (g,) = torch.autograd.grad((-(logp * m).sum(1) / m.sum(1)).sum(), x)
        riemann -= ((e - e0) * g).sum((1, 2)) / steps
    assert torch.allclose(W[:, 0].sum(-1), riemann, rtol=1e-6, atol=1e-7)


def test_completeness_in_the_limit_with_a_corrupted_baseline():
    """With a corrupted baseline the input row tends to L(e') − L(e) as m grows, error O(1/m).
    Not asserted for the zero baseline: with pre-norm (and OLMo-2's QK-norm) the loss along
    α·e changes on scales down to √eps/‖e‖ and below (nested norms), so no practical m resolves
    the path near α = 0 and the sums do not approach L(0) − L(e)."""
    model = tiny_model("llama")
    ids, mask = random_batch()
    base = corrupted(ids)
    e0 = source_outputs(model, base)["input"]
    gap = interpolated_loss(model, ids, mask, 0.0, e0) - interpolated_loss(model, ids, mask, 1.0, e0)
    err = {m: float((attribute(model, ids, mask, method="eap-ig", steps=m, baseline=base).double()[:, 0].sum(-1)
                     - gap).abs().max()) for m in (16, 32, 64)}
    assert err[32] < 0.7 * err[16] and err[64] < 0.7 * err[32], err
    assert err[64] < 0.1 * float(gap.abs().max()), err


# ---- batching, checkpointing, the model left as it was ----------------------------------
def test_padded_batch_equals_each_sample_alone():
    model = tiny_model("mistral")
    g = torch.Generator().manual_seed(5)
    lengths, prompts = [9, 6, 7], [4, 3, 5]
    rows = [tuple(torch.randint(0, 40, (n,), generator=g).tolist()) for n in lengths]
    brows = [tuple(torch.randint(0, 40, (n,), generator=g).tolist()) for n in lengths]
    inputs = AttributionInputs(problem_ids=("a", "b", "c"), input_ids=tuple(rows), prompt_lengths=tuple(prompts), t_cut=2)
    binputs = AttributionInputs(problem_ids=("a", "b", "c"), input_ids=tuple(brows), prompt_lengths=tuple(prompts),
                                t_cut=2)
    ids, attn, loss = inputs.tensors(pad_token_id=0)
    bids = binputs.tensors(pad_token_id=0)[0]
    batched = attribute(model, ids, loss, attention_mask=attn, method="eap-ig", steps=3, baseline=bids)
    for k in range(3):
        i1, a1, l1 = inputs.tensors(pad_token_id=0, rows=[k])
        alone = attribute(model, i1, l1, attention_mask=a1, method="eap-ig", steps=3,
                          baseline=binputs.tensors(pad_token_id=0, rows=[k])[0])[0]
        assert torch.allclose(batched[k], alone, rtol=1e-5, atol=1e-6 * alone.abs().max()), k


def test_checkpointing_gives_the_same_scores():
    model = tiny_model("llama")
    ids, mask = random_batch(seed=6)
    base = corrupted(ids)
    plain = attribute(model, ids, mask, method="eap-ig", steps=3, baseline=base)
    ckpt = attribute(model, ids, mask, method="eap-ig", steps=3, baseline=base, checkpointing=True)
    assert torch.allclose(plain, ckpt, rtol=1e-6, atol=1e-9)
    assert not model.training


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def test_model_left_untouched_and_hooks_removed_on_error(monkeypatch):
    model = tiny_model("olmo2")
    ids, mask = random_batch(seed=7)
    hooks = _hook_count(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    attribute(model, ids, mask, method="eap-ig", steps=2, baseline=corrupted(ids))
    assert _hook_count(model) == hooks
    for n, p in model.named_parameters():
        assert p.requires_grad and p.grad is None and torch.equal(p, before[n]), n
    calls = []

    def boom(*a, **k):
        calls.append(1)
        if len(calls) > 2:  # the baseline and the clean forward pass, the first interpolated one fails
            raise RuntimeError("exploded mid-forward")
        return real(*a, **k)
    real = model.model.layers[1].mlp.forward
    monkeypatch.setattr(model.model.layers[1].mlp, "forward", boom)
    with pytest.raises(RuntimeError, match="exploded"):
        attribute(model, ids, mask, method="eap-ig", steps=3, baseline=corrupted(ids))
    assert _hook_count(model) == hooks and all(p.requires_grad for p in model.parameters())


# ---- score_inputs -----------------------------------------------------------------------
def test_score_inputs_passes_method_steps_and_baseline_through(tmp_path):
    model = tiny_model("qwen2")
    ids, mask = random_batch(batch=4, seed=4)
    bids = corrupted(ids, seed=12)
    inputs = AttributionInputs(problem_ids=tuple("abcd"), input_ids=tuple(tuple(r) for r in ids.tolist()),
                               prompt_lengths=(5,) * 4, t_cut=4)
    binputs = AttributionInputs(problem_ids=tuple("abcd"), input_ids=tuple(tuple(r) for r in bids.tolist()),
                                prompt_lengths=(5,) * 4, t_cut=4)
    kw = dict(pad_token_id=0, batch_size=2, progress=False, resume_dir=tmp_path, cache_key="m")
    es = score_inputs(model, inputs, method="eap-ig", steps=3, baseline=binputs, **kw)
    direct = attribute(model, ids, mask, method="eap-ig", steps=3, baseline=bids)
    assert torch.allclose(es.scores, direct, rtol=1e-5, atol=1e-6 * direct.abs().max())
    assert (es.meta["method"], es.meta["steps"], es.meta["baseline"]) == ("eap-ig", 3, "tokens")
    assert es.meta["computed_batches"] == 2
    again = score_inputs(model, inputs, method="eap-ig", steps=3, baseline=binputs, **kw)
    assert again.meta["resumed_batches"] == 2 and torch.equal(again.scores, es.scores)
    for other in (dict(method="eap-ig", steps=4, baseline=binputs), dict(method="eap-ig", steps=3),
                  dict(method="eap")):  # each its own resume key
        assert score_inputs(model, inputs, **other, **kw).meta["resumed_batches"] == 0, other
    eap = score_inputs(model, inputs, **kw)
    assert (eap.meta["method"], eap.meta["steps"], eap.meta["baseline"]) == ("eap", 1, "zero")
    assert eap.meta["resumed_batches"] == 2  # the plain-EAP run above saved under the unchanged key


# ---- bad input ------------------------------------------------------------------------
def test_bad_arguments_are_rejected():
    model = tiny_model("llama")
    ids, mask = random_batch()
    with pytest.raises(AttributionError, match="unknown attribution method 'ig'.*eap, eap-ig"):
        attribute(model, ids, mask, method="ig")
    for steps in (0, -2, 2.5, True):
        with pytest.raises(AttributionError, match="steps must be an integer >= 1"):
            attribute(model, ids, mask, method="eap-ig", steps=steps)
    with pytest.raises(AttributionError, match=r"baseline shape \(2, 8\) != input_ids shape \(2, 9\)"):
        attribute(model, ids, mask, method="eap-ig", baseline=ids[:, :-1])
    with pytest.raises(AttributionError, match="corrupted token ids"):
        attribute(model, ids, mask, method="eap-ig", baseline=ids.double())
    with pytest.raises(AttributionError, match="outside"):
        attribute(model, ids, mask, method="eap-ig", baseline=ids + 100)
    with pytest.raises(AttributionError, match="baseline applies to method='eap-ig' only"):
        attribute(model, ids, mask, baseline=corrupted(ids))
    with pytest.raises(AttributionError, match="steps=5 applies to method='eap-ig' only"):
        attribute(model, ids, mask, steps=5)
    inputs = AttributionInputs(problem_ids=("a", "b"), input_ids=tuple(tuple(r) for r in ids.tolist()),
                               prompt_lengths=(5, 5), t_cut=4)
    short = AttributionInputs(problem_ids=("a", "b"), input_ids=(tuple(ids[0].tolist()), tuple(ids[1, :-1].tolist())),
                              prompt_lengths=(5, 5), t_cut=3)
    with pytest.raises(AttributionError, match=r"differ in length.*\['b'\]"):
        score_inputs(model, inputs, pad_token_id=0, progress=False, method="eap-ig", baseline=short)
    with pytest.raises(AttributionError, match="baseline applies"):
        score_inputs(model, inputs, pad_token_id=0, progress=False, baseline=inputs)
    with pytest.raises(AttributionError, match="unknown attribution method"):
        score_inputs(model, inputs, pad_token_id=0, progress=False, method="EAP-IG")


# ---- "head" granularity -----------------------------------------------------------------
@pytest.mark.parametrize("family", ["qwen2", "olmo2"])
def test_head_granularity_equals_finite_difference_ig(family):
    model = tiny_model(family)
    ids, mask = random_batch(seq=7, n_targets=3, seed=1)
    base = corrupted(ids, seed=13)
    graph = ResidualGraph.from_model(model, "head")
    scores = attribute(model, ids, mask, graph=graph, method="eap-ig", steps=2, baseline=base).double()
    fd = ig_finite_difference_scores(model, ids, mask, graph, 2, base)
    assert (scores - fd).abs().max() <= 1e-6 * fd.abs().max(), family


@pytest.mark.parametrize("baseline", ["zero", "tokens"])
def test_head_scores_sum_to_qkv_scores(family_model, baseline, monkeypatch):
    from eapbench.engine.attribution import _Scorer

    monkeypatch.setattr(_Scorer, "score_dtype", torch.float64)
    _, model = family_model
    ids, mask = random_batch(seed=2)
    base = None if baseline == "zero" else corrupted(ids)
    head, qkv = ResidualGraph.from_model(model, "head"), ResidualGraph.from_model(model, "qkv")
    s_head = attribute(model, ids, mask, graph=head, method="eap-ig", steps=3, baseline=base)
    s_qkv = attribute(model, ids, mask, graph=qkv, method="eap-ig", steps=3, baseline=base)
    assert s_head.dtype == s_qkv.dtype == torch.float64
    assert (head.to_qkv(s_head) - s_qkv).abs().max() <= 1e-10 * s_qkv.abs().max()
