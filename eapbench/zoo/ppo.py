"""PPO: online policy optimisation with a learned value baseline (token-level GAE).

The reward is the grader's 0/1 verdict on the finished completion, given at its last
token, minus ``kl_coef`` times the per-token log-ratio to the parent (the usual RLHF-PPO
shaping; Ziegler et al. 2019). A small value head (2-layer MLP) reads the policy's final hidden states (detached,
so the critic never moves the policy) and is fitted to the returns; advantages come from
GAE(gamma, lambda) over the completion's tokens and are whitened over the batch. Sampling,
problems, minibatches and optimiser steps match GRPO's (see :mod:`eapbench.zoo.rl`); only
the baseline differs. The value head is a training device and is not shipped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from ..records import Problem
from .rl import PostTrainConfig, clipped_surrogate, minibatch_indices, rollout, step_problems
from .task import completion_logprobs

log = logging.getLogger(__name__)


class ValueHead(torch.nn.Module):
    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(d_model, d_model), torch.nn.Tanh(),
                                       torch.nn.Linear(d_model, 1))
        # start from V = 0 so early advantages are plain discounted rewards, not noise
        torch.nn.init.zeros_(self.net[2].weight)
        torch.nn.init.zeros_(self.net[2].bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.net(hidden.detach().float()).squeeze(-1)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and returns for right-padded token sequences.

    ``rewards``, ``values``: [n, C] (reward per token, zero where none); ``mask`` marks real
    tokens. The value after a sequence's last token is 0 (episode end).
    """
    n, C = rewards.shape
    adv = torch.zeros_like(rewards)
    running = torch.zeros(n)
    m = mask.float()
    for t in reversed(range(C)):
        next_v = values[:, t + 1] * m[:, t + 1] if t + 1 < C else torch.zeros(n)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        running = delta + gamma * lam * running * (m[:, t + 1] if t + 1 < C else 0.0)
        adv[:, t] = running * m[:, t]
    return adv, (adv + values) * m


def train_ppo(model, tokenizer, pool: Sequence[Problem], cfg: PostTrainConfig,
              grade: Callable[[str, str], bool], progress: bool = True, desc: str = "ppo") -> list[dict]:
    """Train ``model`` in place; returns the per-step history (reward, policy and value loss)."""
    import copy

    ref = copy.deepcopy(model).eval().requires_grad_(False) if cfg.kl_coef > 0 else None
    T = cfg.temperature
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    critic = ValueHead(model.config.hidden_size)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))
    vopt = torch.optim.AdamW(critic.parameters(), lr=cfg.value_lr, weight_decay=0.0)
    pad = tokenizer.pad_token_id
    history = []
    for step in tqdm(range(cfg.steps), desc=desc, disable=not progress):
        ro = rollout(model, tokenizer, step_problems(pool, cfg, step), cfg, gen, grade)
        model.train()
        with torch.no_grad():
            old_logp, mask, hidden = completion_logprobs(model, ro.prompts, ro.completions, pad_id=pad,
                                                         return_hidden=True, temperature=T)
            values = critic(hidden) * mask
            last = mask.long().sum(1) - 1
            token_rewards = torch.zeros_like(old_logp)
            if ref is not None:
                ref_logp, _ = completion_logprobs(ref, ro.prompts, ro.completions, pad_id=pad, temperature=T)
                token_rewards = -cfg.kl_coef * (old_logp - ref_logp) * mask
            token_rewards[torch.arange(len(last)), last] += ro.rewards
            adv, returns = gae(token_rewards, values, mask, cfg.gamma, cfg.gae_lambda)
            valid = adv[mask]
            adv = ((adv - valid.mean()) / (valid.std() + 1e-6)) * mask
        losses, vlosses, clips = [], [], []
        for idx in minibatch_indices(len(ro.completions), cfg, gen):
            rows = idx.tolist()
            logp, mb_mask, mb_hidden = completion_logprobs(model, [ro.prompts[i] for i in rows],
                                                           [ro.completions[i] for i in rows], pad_id=pad,
                                                           return_hidden=True, temperature=T)
            width = logp.shape[1]
            loss, frac = clipped_surrogate(logp, old_logp[idx, :width], adv[idx, :width], mb_mask, cfg.clip)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            v = critic(mb_hidden)
            vloss = (((v - returns[idx, :width]) ** 2) * mb_mask).sum() / mb_mask.sum().clamp(min=1)
            vopt.zero_grad(set_to_none=True)
            vloss.backward()
            vopt.step()
            losses.append(float(loss.detach()))
            vlosses.append(float(vloss.detach()))
            clips.append(frac)
        history.append({"step": step, "reward": float(ro.rewards.mean()), "loss": sum(losses) / len(losses),
                        "value_loss": sum(vlosses) / len(vlosses), "clip_frac": sum(clips) / len(clips)})
        if step % 10 == 0 or step == cfg.steps - 1:
            log.info("%s step %d reward %.3f value loss %.4f", desc, step, history[-1]["reward"],
                     history[-1]["value_loss"])
    model.eval()
    return history
