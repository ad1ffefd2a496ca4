"""Is an SFT parent too sharp for post-training? Accuracy after one step along the RL gradient.

``python -m eapbench.zoo.sharpness [FOLDER]`` samples one rollout batch from the checkpoint
(32 post-training problems x 8 samples at T = 1), forms the GRPO policy gradient of the
grader's reward (group-normalised advantages), and reports held-out greedy accuracy after a
step of norm ``eps`` along it and along a random direction. A parent whose accuracy *falls*
along the reward-ascent direction at small ``eps`` is too sharp for RL-sized steps: an SFT
schedule annealed to lr 0 produced one (see :mod:`eapbench.zoo.sft`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .rl import PostTrainConfig, rollout

EPS: tuple[float, ...] = (0.0, 0.01, 0.03, 0.1)


def step_accuracies(folder: str | Path, eps: tuple[float, ...] = EPS, recipe=None, n_problems: int = 32,
                    seed: int = 0) -> dict[str, list[tuple[float, float]]]:
    """``{"rl-gradient": [(eps, accuracy), ...], "random": [...]}`` for the checkpoint in ``folder``."""
    from .build import ZooRecipe, problem_sets
    from .model import load_checkpoint
    from .task import accuracy, completion_logprobs, grader
    from .grpo import group_advantages

    recipe = recipe or ZooRecipe()
    _, post, heldout = problem_sets(recipe)
    grade, _ = grader()
    model, tok = load_checkpoint(folder)
    cfg = PostTrainConfig(prompts_per_step=n_problems, samples_per_prompt=8, temperature=1.0, steps=1)
    ro = rollout(model, tok, post[:n_problems], cfg, torch.Generator().manual_seed(seed), grade)
    adv = group_advantages(ro.rewards, cfg.samples_per_prompt)
    logp, mask = completion_logprobs(model, ro.prompts, ro.completions, pad_id=tok.pad_token_id)
    (-(adv[:, None] * logp * mask).sum() / mask.sum().clamp(min=1)).backward()
    params = list(model.parameters())
    ascent = [-p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]
    gen = torch.Generator().manual_seed(seed + 1)
    directions = {"rl-gradient": ascent, "random": [torch.randn(p.shape, generator=gen) for p in params]}
    base = [p.detach().clone() for p in params]
    out: dict[str, list[tuple[float, float]]] = {}
    for name, d in directions.items():
        norm = torch.sqrt(sum((x.double() ** 2).sum() for x in d)).item()
        if norm == 0:
            raise ValueError(f"{folder}: the {name} direction is zero (no reward signal in the rollout batch)")
        out[name] = []
        for e in eps:
            with torch.no_grad():
                for p, b, x in zip(params, base, d):
                    p.copy_(b + (e / norm) * x)
            out[name].append((float(e), accuracy(model, tok, heldout, grade)))
    return out


def main(argv: list[str] | None = None) -> int:
    from . import checkpoint_path

    ap = argparse.ArgumentParser(prog="python -m eapbench.zoo.sharpness", description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", nargs="?", type=Path, default=None, help="checkpoint folder (default: the shipped sft)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    folder = args.folder or checkpoint_path("sft")
    for name, rows in step_accuracies(folder).items():
        print(f"{name:12s} " + "  ".join(f"eps {e:g}: {a:.3f}" for e, a in rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
