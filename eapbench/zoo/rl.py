"""What every post-training method shares: the budget config, the prompt schedule, rollouts.

All post-training runs (GRPO, PPO, DPO) consume the same problems in the same order:
step ``s`` uses problems ``[s*B, (s+1)*B)`` of the post-training pool, each sampled
``G`` times, and performs ``minibatches`` optimiser steps. That is the "same problems,
comparable optimisation budget" the zoo's comparison rests on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from collections.abc import Callable, Sequence

import torch

from ..records import Problem
from .task import encode_prompts, rewards, sample


@dataclass(frozen=True)
class PostTrainConfig:
    steps: int = 60
    prompts_per_step: int = 16
    samples_per_prompt: int = 8
    temperature: float = 1.0
    lr: float = 5e-5
    minibatches: int = 2
    clip: float = 0.2
    grad_clip: float = 1.0
    seed: int = 0
    kl_coef: float = 0.1  # GRPO: k3 penalty in the loss; PPO: per-token penalty in the reward
    # PPO only
    value_lr: float = 1e-3
    gae_lambda: float = 0.95
    gamma: float = 1.0
    # DPO only
    dpo_beta: float = 0.1

    def __post_init__(self) -> None:
        if self.samples_per_prompt < 2:
            raise ValueError(f"samples_per_prompt must be >= 2 (group baselines and preference pairs "
                             f"need two samples), got {self.samples_per_prompt}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 for sampling, got {self.temperature}")
        n = self.prompts_per_step * self.samples_per_prompt
        if self.minibatches < 1 or n % self.minibatches:
            raise ValueError(f"minibatches ({self.minibatches}) must divide prompts_per_step * "
                             f"samples_per_prompt ({n})")

    def to_dict(self) -> dict:
        return asdict(self)

    def problems_used(self) -> int:
        return self.steps * self.prompts_per_step


def step_problems(pool: Sequence[Problem], cfg: PostTrainConfig, step: int) -> list[Problem]:
    if len(pool) < cfg.problems_used():
        raise ValueError(f"post-training pool has {len(pool)} problems but {cfg.steps} steps x "
                         f"{cfg.prompts_per_step} prompts need {cfg.problems_used()}")
    return list(pool[step * cfg.prompts_per_step:(step + 1) * cfg.prompts_per_step])


@dataclass(frozen=True)
class Rollout:
    """One step's samples: ``G`` consecutive rows per problem."""

    problems: list[Problem]  # one per row
    prompts: list[list[int]]
    completions: list[list[int]]
    rewards: torch.Tensor  # float32 [n]


def rollout(model, tokenizer, problems: Sequence[Problem], cfg: PostTrainConfig, generator: torch.Generator,
            grade: Callable[[str, str], bool]) -> Rollout:
    rows = [p for p in problems for _ in range(cfg.samples_per_prompt)]
    prompts = [ids for ids in encode_prompts(tokenizer, problems) for _ in range(cfg.samples_per_prompt)]
    comps = sample(model, prompts, eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id,
                   temperature=cfg.temperature, generator=generator)
    return Rollout(rows, prompts, comps, rewards(tokenizer, comps, rows, grade))


def minibatch_indices(n: int, cfg: PostTrainConfig, generator: torch.Generator) -> list[torch.Tensor]:
    return list(torch.randperm(n, generator=generator).chunk(cfg.minibatches))


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token unbiased, non-negative KL(pi || ref) estimate on sampled tokens (Schulman's k3)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
                      clip: float) -> tuple[torch.Tensor, float]:
    """PPO's clipped objective as a loss, averaged over valid tokens; also the clipped fraction.

    ``adv`` is per token ``[n, C]`` (broadcast a per-sequence advantage before calling).
    """
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - clip, 1 + clip) * adv
    per_token = -torch.minimum(unclipped, clipped)
    denom = mask.sum().clamp(min=1)
    loss = (per_token * mask).sum() / denom
    frac = float((((ratio - 1).abs() > clip) & mask).sum() / denom)
    return loss, frac
