"""GRPO: online policy optimisation with group-relative advantages from the grader's reward.

Per step, each of ``B`` problems is sampled ``G`` times at the configured temperature; a
completion's advantage is its reward minus its group's mean, divided by the group's
standard deviation (Shao et al. 2024). The policy is updated with the clipped surrogate
over ``minibatches`` minibatches, token-averaged, plus ``kl_coef`` times the k3 estimate of
KL(policy || parent) on the sampled tokens. Log-probs are those of the sampling
distribution (logits divided by the temperature).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from ..records import Problem
from .rl import PostTrainConfig, clipped_surrogate, k3_kl, minibatch_indices, rollout, step_problems
from .task import completion_logprobs

log = logging.getLogger(__name__)


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """(r - group mean) / (group std + eps) for consecutive groups of ``group_size`` rows."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    g = rewards.view(-1, group_size)
    return ((g - g.mean(1, keepdim=True)) / (g.std(1, unbiased=False, keepdim=True) + eps)).view(-1)


def train_grpo(model, tokenizer, pool: Sequence[Problem], cfg: PostTrainConfig,
               grade: Callable[[str, str], bool], progress: bool = True, desc: str = "grpo") -> list[dict]:
    """Train ``model`` in place; returns the per-step history (reward, loss, KL, clip fraction).

    The KL reference is a frozen copy of ``model`` as passed in (the parent).
    """
    import copy

    ref = copy.deepcopy(model).eval().requires_grad_(False) if cfg.kl_coef > 0 else None
    T = cfg.temperature
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))
    pad = tokenizer.pad_token_id
    history = []
    for step in tqdm(range(cfg.steps), desc=desc, disable=not progress):
        ro = rollout(model, tokenizer, step_problems(pool, cfg, step), cfg, gen, grade)
        adv = group_advantages(ro.rewards, cfg.samples_per_prompt)
        model.train()
        with torch.no_grad():
            old_logp, _ = completion_logprobs(model, ro.prompts, ro.completions, pad_id=pad, temperature=T)
            ref_logp = (completion_logprobs(ref, ro.prompts, ro.completions, pad_id=pad, temperature=T)[0]
                        if ref is not None else None)
        losses, clips, kls = [], [], []
        for idx in minibatch_indices(len(ro.completions), cfg, gen):
            rows = idx.tolist()
            logp, mask = completion_logprobs(model, [ro.prompts[i] for i in rows],
                                             [ro.completions[i] for i in rows], pad_id=pad, temperature=T)
            width = logp.shape[1]
            loss, frac = clipped_surrogate(logp, old_logp[idx, :width], adv[idx, None].expand_as(logp),
                                           mask, cfg.clip)
            if ref_logp is not None:
                kl = (k3_kl(logp, ref_logp[idx, :width]) * mask).sum() / mask.sum().clamp(min=1)
                loss = loss + cfg.kl_coef * kl
                kls.append(float(kl.detach()))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            losses.append(float(loss.detach()))
            clips.append(frac)
        history.append({"step": step, "reward": float(ro.rewards.mean()), "loss": sum(losses) / len(losses),
                        "kl": sum(kls) / len(kls) if kls else 0.0, "clip_frac": sum(clips) / len(clips),
                        "groups_with_signal": float((ro.rewards.view(-1, cfg.samples_per_prompt).std(1) > 0)
                                                    .float().mean())})
        if step % 10 == 0 or step == cfg.steps - 1:
            log.info("%s step %d reward %.3f", desc, step, history[-1]["reward"])
    model.eval()
    return history
