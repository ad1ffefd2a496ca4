"""Tests for eapbench.zoo: tokenizer, sampling/log-prob plumbing, each training method
(determinism + direction), the build, and every shipped checkpoint (offline load + card hashes)."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from eapbench.pipeline.grading import grade
from eapbench.pipeline.synthetic import generate_problems
from eapbench.zoo import NAMES, checkpoint_path, default_checkpoint_dir
from eapbench.zoo.build import build_zoo, problem_sets, tiny_recipe
from eapbench.zoo.card import read_card, verify_card
from eapbench.zoo.dpo import dpo_loss, make_pairs, sample_preferences, train_dpo
from eapbench.zoo.evaluate import compare_to_parent, mcnemar_exact, paired
from eapbench.zoo.grpo import group_advantages, train_grpo
from eapbench.zoo.model import load_checkpoint, make_model, save_checkpoint
from eapbench.zoo.ppo import gae, train_ppo
from eapbench.zoo.rl import PostTrainConfig, k3_kl
from eapbench.zoo.sft import SFTConfig, cosine_lr, train_sft
from eapbench.zoo.task import (answer_text, completion_logprobs, encode_answers, encode_prompts, prompt_text,
                               sample)
from eapbench.zoo.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def tiny():
    """A tiny tokenizer + briefly SFT-trained 2-layer model and the tiny recipe's problem sets."""
    recipe = tiny_recipe()
    sft_pool, post_pool, heldout = problem_sets(recipe)
    tok = build_tokenizer([prompt_text(p) + answer_text(p) for p in sft_pool], recipe.vocab_size)
    model = make_model(recipe.model, tok, seed=0)
    train_sft(model, tok, sft_pool, replace(recipe.sft, steps=40), progress=False)
    return recipe, tok, model, sft_pool, post_pool, heldout


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- tokenizer -------------------------------------------------------------------------------

def test_tokenizer_digits_split_prefix_stable_and_deterministic(tiny):
    _, tok, _, sft_pool, _, heldout = tiny
    texts = [prompt_text(p) + answer_text(p) for p in sft_pool]
    assert build_tokenizer(texts, 512).get_vocab() == tok.get_vocab()
    for p in heldout:
        prompt = tok(prompt_text(p), add_special_tokens=False)["input_ids"]
        answer = tok(answer_text(p), add_special_tokens=False)["input_ids"]
        assert tok(prompt_text(p) + answer_text(p), add_special_tokens=False)["input_ids"] == prompt + answer
        assert tok.decode(prompt + answer) == prompt_text(p) + answer_text(p)
    pieces = tok.convert_ids_to_tokens(tok(" 123+45=168.", add_special_tokens=False)["input_ids"])
    assert [t for t in pieces if any(c.isdigit() for c in t)] == list("12345168")
    assert encode_answers(tok, heldout[:1])[0][-1] == tok.eos_token_id


def test_tokenizer_rejects_too_small_vocab():
    with pytest.raises(ValueError, match="vocab_size"):
        build_tokenizer(["a"], vocab_size=100)


# --- sampling and log-probs ------------------------------------------------------------------

def test_completion_logprobs_match_unpadded_rows(tiny):
    """Oracle: each row scored alone, without padding, equals its row in the padded batch."""
    _, tok, model, _, _, heldout = tiny
    prompts = encode_prompts(tok, heldout[:5])
    comps = encode_answers(tok, heldout[:5])
    comps[1] = comps[1][:3]
    with torch.no_grad():
        logp, mask = completion_logprobs(model, prompts, comps, pad_id=tok.pad_token_id)
        for i, (p, c) in enumerate(zip(prompts, comps)):
            ids = torch.tensor([p + c])
            lp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
            ref = lp[len(p) - 1:len(p) + len(c) - 1].gather(-1, torch.tensor(c)[:, None]).squeeze(-1)
            assert int(mask[i].sum()) == len(c)
            torch.testing.assert_close(logp[i, :len(c)], ref, atol=1e-5, rtol=1e-5)
            assert torch.all(logp[i, len(c):] == 0)


def test_sampling_is_seeded_and_greedy_matches_argmax(tiny):
    _, tok, model, _, _, heldout = tiny
    prompts = encode_prompts(tok, heldout[:6])
    kw = dict(eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, max_new_tokens=20)
    a = sample(model, prompts, temperature=1.0, generator=torch.Generator().manual_seed(3), **kw)
    b = sample(model, prompts, temperature=1.0, generator=torch.Generator().manual_seed(3), **kw)
    c = sample(model, prompts, temperature=1.0, generator=torch.Generator().manual_seed(4), **kw)
    assert a == b and a != c
    for comp in a:
        assert tok.eos_token_id not in comp[:-1] and len(comp) <= 20
    greedy = sample(model, prompts[:1], temperature=0.0, **kw)[0]
    ids = list(prompts[0])
    with torch.no_grad():
        for tok_id in greedy:
            assert int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()) == tok_id
            ids.append(tok_id)
    with pytest.raises(ValueError, match="Generator"):
        sample(model, prompts, temperature=1.0, **kw)


# --- method pieces against oracles -----------------------------------------------------------

def test_group_advantages_oracle():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    got = group_advantages(r, 4).numpy()
    g = r.numpy().reshape(-1, 4)
    want = ((g - g.mean(1, keepdims=True)) / (g.std(1, keepdims=True) + 1e-4)).ravel()
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert np.all(got[4:8] == 0)
    with pytest.raises(ValueError, match="groups"):
        group_advantages(r, 5)


def test_gae_oracle_against_direct_sums():
    torch.manual_seed(0)
    n, C = 4, 6
    lengths = [6, 3, 1, 5]
    mask = torch.zeros(n, C, dtype=torch.bool)
    for i, L in enumerate(lengths):
        mask[i, :L] = True
    rewards = torch.randn(n, C) * mask
    values = torch.randn(n, C) * mask
    gamma, lam = 0.9, 0.8
    adv, ret = gae(rewards, values, mask, gamma, lam)
    for i, L in enumerate(lengths):
        v = values[i, :L].tolist() + [0.0]
        deltas = [rewards[i, t] + gamma * v[t + 1] - v[t] for t in range(L)]
        for t in range(L):
            want = sum((gamma * lam) ** (k - t) * deltas[k] for k in range(t, L))
            assert abs(float(adv[i, t]) - float(want)) < 1e-5
            assert abs(float(ret[i, t]) - (float(want) + v[t])) < 1e-5
        assert torch.all(adv[i, L:] == 0)


def test_k3_kl_is_nonnegative_and_unbiased():
    torch.manual_seed(0)
    assert torch.all(k3_kl(torch.zeros(5), torch.zeros(5)) == 0)
    x = torch.randn(1000)
    assert torch.all(k3_kl(x, torch.randn(1000)) >= 0)
    # E_{y~p}[k3] = KL(p || q) for categorical p, q (exact expectation)
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.5, 0.3])
    exact = float((p * (p / q).log()).sum())
    est = float((p * k3_kl(p.log(), q.log())).sum())
    assert abs(est - exact) < 1e-6


def test_completion_logprobs_temperature_scales_logits(tiny):
    _, tok, model, _, _, heldout = tiny
    prompts, comps = encode_prompts(tok, heldout[:2]), encode_answers(tok, heldout[:2])
    with torch.no_grad():
        lp, _ = completion_logprobs(model, prompts, comps, pad_id=tok.pad_token_id, temperature=0.5)
        ids = torch.tensor([prompts[0] + comps[0]])
        logits = model(input_ids=ids).logits[0].float() / 0.5
        ref = torch.log_softmax(logits, -1)[len(prompts[0]) - 1:-1].gather(
            -1, torch.tensor(comps[0])[:, None]).squeeze(-1)
    torch.testing.assert_close(lp[0, :len(comps[0])], ref, atol=1e-5, rtol=1e-5)


def test_make_pairs_and_dpo_loss():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    assert make_pairs(r, 4) == [(0, 1), (3, 2), (11, 8)]
    z = torch.zeros(3)
    torch.testing.assert_close(dpo_loss(z, z, z, z, 0.1), torch.tensor(float(np.log(2))))
    assert float(dpo_loss(z + 1, z, z, z, 0.1)) < np.log(2) < float(dpo_loss(z, z + 1, z, z, 0.1))


def test_post_train_config_validates():
    with pytest.raises(ValueError, match="samples_per_prompt"):
        PostTrainConfig(samples_per_prompt=1)
    with pytest.raises(ValueError, match="minibatches"):
        PostTrainConfig(prompts_per_step=3, samples_per_prompt=3, minibatches=2)
    with pytest.raises(ValueError, match="temperature"):
        PostTrainConfig(temperature=0.0)


# --- each method: determinism and direction --------------------------------------------------

def test_sft_deterministic_and_loss_falls(tiny):
    recipe, tok, _, sft_pool, _, _ = tiny
    runs = []
    for _ in range(2):
        m = make_model(recipe.model, tok, seed=1)
        hist = train_sft(m, tok, sft_pool, replace(recipe.sft, steps=12, seed=5), progress=False)
        runs.append((_weights(m), hist))
    assert _same(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    losses = [h["loss"] for h in runs[0][1]]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.5


def test_cosine_lr_warms_up_then_decays_to_its_floor():
    peak, total, warm = 3e-3, 100, 10
    lrs = [cosine_lr(s, total, warm, peak, 0.1) for s in range(total)]
    assert lrs[0] == pytest.approx(peak / warm) and lrs[warm - 1] == pytest.approx(peak)
    assert all(a >= b for a, b in zip(lrs[warm - 1:], lrs[warm:]))
    assert cosine_lr(total, total, warm, peak, 0.1) == pytest.approx(0.1 * peak)
    assert cosine_lr(10 * total, total, warm, peak, 0.1) == pytest.approx(0.1 * peak)
    assert cosine_lr(total, total, warm, peak) == pytest.approx(0.0)
    assert SFTConfig().min_lr_ratio * SFTConfig().lr >= PostTrainConfig().lr, \
        "the sft model must end at a learning rate no smaller than post-training's"


def _token_reward(tok):
    """A toy reward the tiny model earns about a third of the time: the completion contains a '0'."""
    return lambda text, reference: "0" in text


def _reward_rate(model, tok, problems, reward, seed=123, reps=8):
    prompts = [p for p in encode_prompts(tok, problems) for _ in range(reps)]
    comps = sample(model, prompts, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, temperature=1.0,
                   generator=torch.Generator().manual_seed(seed))
    texts = tok.batch_decode(comps, skip_special_tokens=True)
    return float(np.mean([reward(t, "") for t in texts]))


@pytest.mark.parametrize("trainer", [train_grpo, train_ppo], ids=["grpo", "ppo"])
def test_online_methods_deterministic_and_reward_rises(tiny, trainer):
    _, tok, model, _, _, heldout = tiny
    reward = _token_reward(tok)
    pool = generate_problems(64, 11)
    cfg = PostTrainConfig(steps=8, prompts_per_step=8, samples_per_prompt=4, lr=3e-3, seed=2)
    results = []
    for _ in range(2):
        m = copy.deepcopy(model)
        hist = trainer(m, tok, pool, cfg, reward, progress=False)
        results.append((_weights(m), hist, m))
    assert _same(results[0][0], results[1][0]) and results[0][1] == results[1][1]
    assert not _same(results[0][0], _weights(model))
    before = _reward_rate(model, tok, heldout, reward)
    after = _reward_rate(results[0][2], tok, heldout, reward)
    assert 0.05 < before < 0.95, "toy reward should be neither always nor never earned by the tiny model"
    assert after > before + 0.05, (before, after)


def test_dpo_deterministic_and_preference_margin_grows(tiny):
    _, tok, model, _, _, _ = tiny
    reward = _token_reward(tok)
    pool = generate_problems(48, 12)
    cfg = PostTrainConfig(steps=6, prompts_per_step=8, samples_per_prompt=4, lr=3e-3, seed=2)
    pairs = sample_preferences(model, tok, pool, cfg, reward, progress=False)
    again = sample_preferences(model, tok, pool, cfg, reward, progress=False)
    for a, b in zip(pairs, again, strict=True):
        assert (a.prompts, a.chosen, a.rejected) == (b.prompts, b.chosen, b.rejected)
        assert torch.equal(a.ref_chosen, b.ref_chosen) and torch.equal(a.ref_rejected, b.ref_rejected)
    assert sum(len(p.prompts) for p in pairs) > 10
    results = []
    for _ in range(2):
        m = copy.deepcopy(model)
        hist = train_dpo(m, tok, pairs, cfg, progress=False)
        results.append((_weights(m), hist, m))
    assert _same(results[0][0], results[1][0]) and results[0][1] == results[1][1]

    def margin(m):
        with torch.no_grad():
            tot = []
            for pp in pairs:
                if pp.prompts:
                    lc, _ = completion_logprobs(m, pp.prompts, pp.chosen, pad_id=tok.pad_token_id)
                    lr, _ = completion_logprobs(m, pp.prompts, pp.rejected, pad_id=tok.pad_token_id)
                    tot.append(((lc.sum(1) - pp.ref_chosen) - (lr.sum(1) - pp.ref_rejected)).mean())
            return float(torch.stack(tot).mean())

    assert abs(margin(model)) < 1e-4
    assert margin(results[0][2]) > 0.5


# --- checkpoints and the build ---------------------------------------------------------------

def test_save_load_roundtrip_bf16_and_float32(tiny, tmp_path):
    _, tok, model, _, _, heldout = tiny
    folder = save_checkpoint(model, tok, tmp_path / "m")
    m32, tok2 = load_checkpoint(folder, dtype="float32")
    assert next(m32.parameters()).dtype == torch.float32
    for k, v in model.state_dict().items():
        torch.testing.assert_close(m32.state_dict()[k], v.to(torch.bfloat16).float())
    assert tok2.get_vocab() == tok.get_vocab()
    m16, _ = load_checkpoint(folder, dtype="bfloat16")
    assert next(m16.parameters()).dtype == torch.bfloat16
    with pytest.raises(FileNotFoundError, match="rebuild"):
        load_checkpoint(tmp_path / "nothing")


def test_tiny_build_writes_verified_cards(tmp_path):
    recipe = replace(tiny_recipe(), heldout_size=8,
                     post=replace(tiny_recipe().post, steps=2, prompts_per_step=2, samples_per_prompt=2))
    cards = build_zoo(recipe, tmp_path, jobs=1, progress=False)
    assert set(cards) == set(NAMES)
    for name in NAMES:
        card = read_card(tmp_path / name)
        assert verify_card(tmp_path / name) == []
        assert card["parent"] == (None if name == "sft" else "sft") and card["threads"] == 1
        assert 0.0 <= card["heldout_accuracy"] <= 1.0
    assert read_card(tmp_path / "grpo-t0.6")["hyperparameters"]["temperature"] == 0.6
    (tmp_path / "ppo" / "config.json").write_text("{}")
    assert any("config.json" in p for p in verify_card(tmp_path / "ppo"))
    manifest = json.loads((tmp_path / "zoo_build.json").read_text())
    assert manifest["threads_per_process"] == 1
    from eapbench.zoo.sharpness import step_accuracies

    with pytest.raises(ValueError, match="zero"):  # the tiny sft earns no reward: no gradient to step along
        step_accuracies(tmp_path / "sft", eps=(0.0,), recipe=recipe, n_problems=4)
    rows = compare_to_parent(tmp_path, recipe, names=("grpo", "dpo"))
    assert [r.child for r in rows] == ["grpo", "dpo"]
    for r in rows:  # the paired re-measurement reproduces the cards' greedy accuracies exactly
        assert r.n == 8 and r.accuracy == read_card(tmp_path / r.child)["heldout_accuracy"]
        assert r.parent_accuracy == read_card(tmp_path / "sft")["heldout_accuracy"]
        assert r.accuracy - r.parent_accuracy == pytest.approx((r.gained - r.lost) / r.n)



def test_zoo_eval_evaluates_the_children_present_and_needs_the_parent(tmp_path, capsys):
    """Issue 15: `eapbench zoo eval --out DIR` on a folder holding only some children compares those
    (and names the others as not evaluated); without the parent it is a one-line error, exit 2."""
    import shutil

    from eapbench import cli
    from eapbench.zoo.build import ZooRecipe
    from eapbench.zoo.task import accuracy

    for name in ("sft", "grpo"):
        shutil.copytree(checkpoint_path(name), tmp_path / name)
    assert cli.main(["zoo", "eval", "--out", str(tmp_path), "--problems", "24", "--json"]) == 0
    out, err = capsys.readouterr()
    rows = json.loads(out)
    assert [r["child"] for r in rows] == ["grpo"] and rows[0]["n"] == 24
    assert "not evaluated" in err and "ppo" in err and "grpo," not in err
    first = problem_sets(ZooRecipe())[2][:24]  # oracle: each model's own greedy accuracy on those problems
    for key, name in (("accuracy", "grpo"), ("parent_accuracy", "sft")):
        model, tok = load_checkpoint(tmp_path / name)
        assert rows[0][key] == accuracy(model, tok, first, grade)
    capsys.readouterr()
    shutil.rmtree(tmp_path / "sft")
    assert cli.main(["zoo", "eval", "--out", str(tmp_path), "--problems", "24"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "sft" in err and "Traceback" not in err
    empty = tmp_path / "only-sft"
    shutil.copytree(checkpoint_path("sft"), empty / "sft")
    assert cli.main(["zoo", "eval", "--out", str(empty), "--problems", "4"]) == 2
    assert "no child checkpoint" in capsys.readouterr().err

def test_paired_accuracy_counts_and_exact_mcnemar():
    from math import comb

    child = torch.tensor([1, 1, 1, 0, 0, 1, 1, 0], dtype=torch.bool)
    parent = torch.tensor([1, 0, 0, 1, 0, 0, 1, 0], dtype=torch.bool)
    r = paired("grpo", child, parent)
    assert (r.gained, r.lost, r.n) == (3, 1, 8) and r.accuracy == 5 / 8 and r.parent_accuracy == 3 / 8
    # two-sided exact binomial at 1/2 on 4 discordant problems, 3 vs 1: 2 * P(X <= 1) = 2 * 5/16
    assert r.p_value == pytest.approx(2 * sum(comb(4, k) for k in (0, 1)) / 2 ** 4)
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(10, 10) == pytest.approx(1.0)
    assert mcnemar_exact(69, 40) == pytest.approx(2 * sum(comb(109, k) for k in range(41)) / 2 ** 109)
    with pytest.raises(ValueError, match="results"):
        paired("ppo", child, parent[:4])


# --- the shipped zoo -------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_shipped_checkpoint_loads_offline_and_matches_card(name, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = checkpoint_path(name)
    assert verify_card(path) == []
    card = read_card(path)
    for key in ("parent", "method", "hyperparameters", "seed", "steps", "threads", "wall_time_s",
                "heldout_accuracy", "files_sha256", "library_versions"):
        assert key in card, key
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    assert next(model.parameters()).dtype == torch.float32
    assert model.config.model_type == "llama" and model.config.num_key_value_heads < model.config.num_attention_heads
    p = generate_problems(1, 99)[0]
    comp = sample(model, encode_prompts(tok, [p]), eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
                  temperature=0.0)[0]
    assert "\\boxed{" in tok.decode(comp, skip_special_tokens=True)


def test_shipped_zoo_band_budget_and_size():
    cards = {n: read_card(checkpoint_path(n)) for n in NAMES}
    assert 0.3 <= cards["sft"]["heldout_accuracy"] <= 0.7
    children = [n for n in NAMES if n != "sft"]
    assert all(cards[n]["parent"] == "sft" for n in children)
    assert len({cards[n]["completions_sampled"] for n in children}) == 1
    assert len({cards[n]["optimizer_steps"] for n in children}) == 1
    assert len({json.dumps(cards[n]["data"]) for n in NAMES}) == 1
    # the mini zoo's own folders (the smol lineage's adapters beside them have their own budget: test_smol.py)
    total = sum(f.stat().st_size for n in NAMES for f in (default_checkpoint_dir() / n).rglob("*") if f.is_file())
    assert total < 12 * 2**20


def test_shipped_online_models_beat_sft():
    """Issue 5's acceptance: every online post-trained model beats its SFT parent on held-out greedy accuracy."""
    cards = {n: read_card(checkpoint_path(n)) for n in NAMES}
    sft = cards["sft"]["heldout_accuracy"]
    online = [n for n in NAMES if cards[n]["method"] in ("grpo", "ppo")]
    assert len(online) == 3
    for name in online:
        assert cards[name]["heldout_accuracy"] > sft, (name, cards[name]["heldout_accuracy"], sft)


@pytest.fixture(scope="module")
def default_heldout():
    from eapbench.zoo.build import ZooRecipe

    return problem_sets(ZooRecipe())[2]


@pytest.mark.parametrize("name", NAMES)
def test_shipped_card_reproduces_from_the_weights(name, default_heldout):
    """The card's data section and hyper-parameters are the default recipe's, and its greedy
    held-out accuracy re-measures exactly from the shipped weights."""
    from dataclasses import asdict

    from eapbench.zoo.build import CHILDREN, ZooRecipe
    from eapbench.zoo.task import accuracy

    recipe = ZooRecipe()
    card = read_card(checkpoint_path(name))
    assert card["data"]["knobs"] == asdict(recipe.task)
    assert card["data"]["heldout"] == [recipe.heldout_size, recipe.heldout_seed]
    assert card["data"]["post_pool"] == [recipe.post.problems_used(), recipe.post_pool_seed]
    if name == "sft":
        assert card["hyperparameters"] == recipe.sft.to_dict()
    else:
        expected = replace(recipe.post, temperature=CHILDREN[name][1]).to_dict()
        assert {k: expected[k] for k in card["hyperparameters"]} == card["hyperparameters"]
    model, tok = load_checkpoint(checkpoint_path(name))
    assert accuracy(model, tok, default_heldout, grade) == card["heldout_accuracy"]



def _perturb(params, gen: torch.Generator, rel: float = 1e-6) -> None:
    """Multiply every weight by (1 + rel * N(0, 1)): ~8 float32 ulps, the size of the rounding
    differences another CPU's kernels (other summation order, other SIMD width) make."""
    with torch.no_grad():
        for p in params:
            p.mul_(1 + rel * torch.randn(p.shape, generator=gen))


def test_zoo_result_survives_another_machines_rounding(tmp_path, default_heldout):
    """Issue 15, the cross-machine half of the zoo's reproducibility claim. Stand-in for "the same
    run on another CPU": a short GRPO run from the shipped sft with seeded relative noise of 1e-6 on
    the initial weights and after every optimiser step, against the same run without noise; both
    saved the way the zoo ships them (bf16), reloaded and evaluated greedily on held-out problems.
    The bytes differ (hundreds of bf16 weights round the other way: why sha256 only holds on the
    same machine), the sampled rollouts' rewards, the greedy held-out decisions and so the accuracy
    and the paired counts against sft do not. It does not show that 120 steps stay this close, nor
    cover other library versions; the full-length check is re-measuring each shipped card's
    accuracy from its weights (test_shipped_card_reproduces_from_the_weights) on the new machine."""
    from hashlib import sha256

    from torch.optim.optimizer import register_optimizer_step_post_hook

    from eapbench.zoo.build import ZooRecipe
    from eapbench.zoo.task import correct, grader

    recipe = ZooRecipe()
    _, post_pool, _ = problem_sets(recipe)
    cfg = replace(recipe.post, steps=2)  # the shipped recipe's step (128 completions, 2 updates), twice
    grade_fn, _ = grader()
    problems = default_heldout[:200]

    def run(name: str, noise: bool):
        model, tok = load_checkpoint(checkpoint_path("sft"))
        handle = None
        if noise:
            gen = torch.Generator().manual_seed(1)
            _perturb(model.parameters(), gen)
            handle = register_optimizer_step_post_hook(
                lambda opt, args, kwargs: _perturb([p for g in opt.param_groups for p in g["params"]], gen))
        try:
            history = train_grpo(model, tok, post_pool, cfg, grade_fn, progress=False)
        finally:
            if handle is not None:
                handle.remove()
        folder = save_checkpoint(model, tok, tmp_path / name)
        reloaded, _ = load_checkpoint(folder)
        return (model, history, sha256((folder / "model.safetensors").read_bytes()).hexdigest(),
                correct(reloaded, tok, problems, grade_fn))

    here, hist_here, sha_here, ok_here = run("here", noise=False)
    there, hist_there, sha_there, ok_there = run("there", noise=True)
    drift = max(float((a - b).abs().max() / a.abs().max())
                for a, b in zip(_weights(here).values(), _weights(there).values()))
    assert 1e-7 < drift < 1e-3, drift  # the runs did differ, by rounding-sized amounts
    assert sha_here != sha_there
    assert [h["reward"] for h in hist_here] == [h["reward"] for h in hist_there]
    assert torch.equal(ok_here, ok_there)  # every greedy held-out decision, so accuracy and paired counts
    sft, tok = load_checkpoint(checkpoint_path("sft"))
    parent = correct(sft, tok, problems, grade_fn)
    assert paired("grpo", ok_here, parent) == paired("grpo", ok_there, parent)

def test_shipped_sft_is_not_too_sharp_for_rl_steps():
    """The property the zoo's SFT schedule is chosen for: a small step along the RL reward-ascent
    direction does not lower the parent's held-out accuracy (it did for an sft annealed to lr 0)."""
    from eapbench.zoo.sharpness import step_accuracies

    acc = step_accuracies(checkpoint_path("sft"), eps=(0.0, 0.01))
    card = read_card(checkpoint_path("sft"))["heldout_accuracy"]
    assert acc["rl-gradient"][0] == (0.0, card) and acc["random"][0] == (0.0, card)
    assert acc["rl-gradient"][1][1] >= card, acc


def test_checkpoint_path_rejects_unknown_names():
    with pytest.raises(ValueError, match="choose from"):
        checkpoint_path("rlhf")
