"""DPO: offline preference optimisation on pairs sampled once from the parent, never refreshed.

The same problems and sampling budget as the online methods: for every step's ``B``
problems the *parent* (frozen ``sft``) is sampled ``G`` times up front, before any update;
each problem yields ``min(#correct, #incorrect)`` (chosen = correct, rejected = incorrect)
pairs. Training then walks the steps in order, splitting each step's pairs into the same
number of minibatches, with the DPO loss ``-log sigmoid(beta * (Δ_chosen - Δ_rejected))``
where ``Δ = log pi(y|x) - log pi_ref(y|x)`` (Rafailov et al. 2023). Steps whose problems
gave no pair make no update (recorded).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..records import Problem
from .rl import PostTrainConfig, rollout, step_problems
from .task import completion_logprobs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreferencePairs:
    """Pairs of one step: prompt, chosen and rejected completions, reference log-probs."""

    prompts: list[list[int]]
    chosen: list[list[int]]
    rejected: list[list[int]]
    ref_chosen: torch.Tensor  # summed log-probs under the parent [n_pairs]
    ref_rejected: torch.Tensor


def make_pairs(rewards: torch.Tensor, group_size: int) -> list[tuple[int, int]]:
    """(chosen row, rejected row) pairs within each group of ``group_size`` consecutive rows."""
    pairs = []
    for g in range(rewards.numel() // group_size):
        rows = range(g * group_size, (g + 1) * group_size)
        good = [r for r in rows if rewards[r] > 0.5]
        bad = [r for r in rows if rewards[r] <= 0.5]
        pairs.extend(zip(good, bad))
    return pairs


@torch.no_grad()
def sample_preferences(parent, tokenizer, pool: Sequence[Problem], cfg: PostTrainConfig,
                       grade: Callable[[str, str], bool], progress: bool = True) -> list[PreferencePairs]:
    """Sample the parent once over every step's problems and build that step's pairs."""
    gen = torch.Generator().manual_seed(cfg.seed)
    out = []
    for step in tqdm(range(cfg.steps), desc="dpo: sampling pairs", disable=not progress):
        ro = rollout(parent, tokenizer, step_problems(pool, cfg, step), cfg, gen, grade)
        pairs = make_pairs(ro.rewards, cfg.samples_per_prompt)
        prompts = [ro.prompts[c] for c, _ in pairs]
        chosen = [ro.completions[c] for c, _ in pairs]
        rejected = [ro.completions[r] for _, r in pairs]
        if pairs:
            lc, mc = completion_logprobs(parent, prompts, chosen, pad_id=tokenizer.pad_token_id)
            lr, mr = completion_logprobs(parent, prompts, rejected, pad_id=tokenizer.pad_token_id)
            ref_c, ref_r = lc.sum(1), lr.sum(1)
        else:
            ref_c = ref_r = torch.zeros(0)
        out.append(PreferencePairs(prompts, chosen, rejected, ref_c, ref_r))
    return out


def dpo_loss(pol_c: torch.Tensor, pol_r: torch.Tensor, ref_c: torch.Tensor, ref_r: torch.Tensor,
             beta: float) -> torch.Tensor:
    return -F.logsigmoid(beta * ((pol_c - ref_c) - (pol_r - ref_r))).mean()


def train_dpo(model, tokenizer, pairs: Sequence[PreferencePairs], cfg: PostTrainConfig,
              progress: bool = True) -> list[dict]:
    """Train ``model`` in place on the fixed ``pairs``; returns per-step history."""
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))
    pad = tokenizer.pad_token_id
    history = []
    model.train()
    for step, pp in enumerate(tqdm(pairs, desc="dpo", disable=not progress)):
        n = len(pp.prompts)
        if n == 0:
            history.append({"step": step, "pairs": 0, "loss": None, "chosen_logp_shift": None,
                            "rejected_logp_shift": None,
                            "updates": 0})
            continue
        losses, lc_all, lr_all = [], [], []
        chunks = [c for c in torch.randperm(n, generator=gen).chunk(min(cfg.minibatches, n)) if len(c)]
        for idx in chunks:
            rows = idx.tolist()
            prompts = [pp.prompts[i] for i in rows]
            lc, _ = completion_logprobs(model, prompts, [pp.chosen[i] for i in rows], pad_id=pad)
            lr, _ = completion_logprobs(model, prompts, [pp.rejected[i] for i in rows], pad_id=pad)
            pol_c, pol_r = lc.sum(1), lr.sum(1)
            loss = dpo_loss(pol_c, pol_r, pp.ref_chosen[idx], pp.ref_rejected[idx], cfg.dpo_beta)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            losses.append(float(loss.detach()))
            lc_all.append(float((pol_c - pp.ref_chosen[idx]).mean().detach()))
            lr_all.append(float((pol_r - pp.ref_rejected[idx]).mean().detach()))
        history.append({"step": step, "pairs": n, "loss": sum(losses) / len(losses),
                        "chosen_logp_shift": sum(lc_all) / len(lc_all),
                        "rejected_logp_shift": sum(lr_all) / len(lr_all), "updates": len(chunks)})
        if step % 10 == 0 or step == len(pairs) - 1:
            log.info("dpo step %d pairs %d loss %.4f", step, n, history[-1]["loss"])
    model.eval()
    return history
