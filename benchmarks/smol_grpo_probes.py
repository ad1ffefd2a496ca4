"""The smol lineage's GRPO probes behind checkpoints/SMOL_ATTEMPTS.md ("Second session") and eapbench/zoo/README.md.

    python benchmarks/smol_grpo_probes.py overfit [LR] [STEPS]       # GRPO on the same 8 pool problems every step
    python benchmarks/smol_grpo_probes.py failures [N]               # where smol-sft fails: greedy vs 8 samples
    python benchmarks/smol_grpo_probes.py continue SRC OUT [SEED]    # 30 more GRPO steps from a smol-grpo adapter

``overfit`` (defaults lr 5e-4, 12 steps) prints the per-step training reward: the loop learns what it is shown.
``failures`` (default the first 160 held-out problems) prints smol-sft's greedy and sampled (T 0.7, 8 each)
accuracy, the histogram of per-problem pass counts and the sampled rate of each greedy failure.
``continue`` trains the adapter in SRC (e.g. a v3 ``smol-grpo``) for 30 steps on pool problems 960-1919 (the
steps after the recipe's 30 x 32), a fresh AdamW state, saves it to OUT and prints the paired held-out comparison
with the shipped smol-sft. All at 2 torch threads, as measured.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import torch

from eapbench.zoo import checkpoint_path, smol
from eapbench.zoo.evaluate import paired
from eapbench.zoo.task import encode_prompts, grader, rewards


def overfit(lr: float = 5e-4, steps: int = 12) -> None:
    r = smol.SmolRecipe()
    r = replace(r, post=replace(r.post, lr=lr, steps=steps, prompts_per_step=8))
    _, pool, _ = smol.problem_sets(r)
    grade, _ = grader()
    model, tok = smol.load_base(r)
    pm = smol.attach_lora(model, r, adapter=checkpoint_path("smol-sft"))
    h = smol.train_grpo_lora(pm, tok, list(pool[:8]) * steps, r, grade, progress=False)
    print("reward per step", [round(x["reward"], 3) for x in h])
    print("seconds per step", [x["step_s"] for x in h])


def failures(n: int = 160, group: int = 8) -> None:
    from eapbench.models import load_model

    r = smol.SmolRecipe()
    held = smol.problem_sets(r)[2][:n]
    grade, _ = grader()
    folder = checkpoint_path("smol-sft")
    model, tok = load_model(str(folder), dtype="bfloat16")
    prompts = encode_prompts(tok, held)
    gen = torch.Generator().manual_seed(0)
    rates = []
    for i in range(0, len(held), 20):
        comps = smol.sample_groups(model, prompts[i:i + 20], group, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
                                   temperature=0.7, generator=gen, max_new_tokens=r.max_new_tokens)
        rows = [p for p in held[i:i + 20] for _ in range(group)]
        rates += rewards(tok, comps, rows, grade).view(-1, group).mean(1).tolist()
    greedy = smol.correct_of(folder, held, r, grade)
    print("greedy", float(greedy.float().mean()), "sampled", sum(rates) / len(rates))
    print("pass counts", sorted(Counter(round(x * group) for x in rates).items()))
    print("sampled rate of each greedy failure", sorted(rates[i] for i in range(len(held)) if not greedy[i]))


def continue_grpo(src: Path, out: Path, seed: int = 1, more: int = 30) -> None:
    r = smol.SmolRecipe()
    done = r.post.steps
    longer = replace(r, post=replace(r.post, steps=done + more, seed=seed))
    _, pool, held = smol.problem_sets(longer)
    grade, _ = grader()
    model, tok = smol.load_base(r)
    pm = smol.attach_lora(model, r, adapter=src)
    t0 = time.perf_counter()
    h = smol.train_grpo_lora(pm, tok, pool[done * r.post.prompts_per_step:],
                             replace(longer, post=replace(longer.post, steps=more)), grade, progress=False)
    smol.save_adapter(pm, out, r.base)
    (out / "training_log.json").write_text(json.dumps(h))
    del pm, model
    child = smol.correct_of(out, held, r, grade)
    parent = smol._parent_correct(checkpoint_path("smol-sft"), held, r, grade)
    print(paired(out.name, child, parent), f"{time.perf_counter() - t0:.0f} s")


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(2)
    if not argv or argv[0] not in ("overfit", "failures", "continue") or (argv[0] == "continue" and len(argv) < 3):
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] == "overfit":
        overfit(*(float(argv[1]),) if len(argv) > 1 else (), *(int(argv[2]),) if len(argv) > 2 else ())
    elif argv[0] == "failures":
        failures(*(int(argv[1]),) if len(argv) > 1 else ())
    else:
        continue_grpo(Path(argv[1]), Path(argv[2]), *(int(argv[3]),) if len(argv) > 3 else ())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
