"""Rebuild the whole mini zoo from nothing: data, tokenizer, sft, then grpo / grpo-t0.6 / ppo / dpo.

``python -m eapbench.zoo`` (wired as ``eapbench zoo train``) runs :func:`main`. Every run
is deterministic for its recipe and thread count on one machine (byte-identical weights): fixed
seeds, explicit generators, a fixed ``torch.set_num_threads`` per process. Another CPU rounds
floats differently, so its weight files differ while held-out accuracies and paired counts match. With ``--jobs 2`` the four post-training
runs go two at a time in separate single-threaded processes; each child depends only on
the stored ``sft`` checkpoint and its own seed, so the result is identical to ``--jobs 1``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..cache import atomic_write_text
from ..pipeline.synthetic import SyntheticConfig, generate_problems
from .card import LOG_FILE, write_card
from .model import ZooModelConfig, load_checkpoint, make_model, save_checkpoint
from .rl import PostTrainConfig
from .sft import SFTConfig, train_sft
from .task import PROMPT_TEMPLATE, accuracy, answer_text, grader, prompt_text
from .tokenizer import build_tokenizer

log = logging.getLogger(__name__)

MANIFEST_FILE = "zoo_build.json"

# name -> (method, sampling temperature)
CHILDREN: dict[str, tuple[str, float]] = {
    "grpo": ("grpo", 1.0),
    "grpo-t0.6": ("grpo", 0.6),
    "ppo": ("ppo", 1.0),
    "dpo": ("dpo", 1.0),
}


@dataclass(frozen=True)
class ZooRecipe:
    """Everything that determines the zoo (besides library versions and the thread count)."""

    sft_pool_size: int = 10000
    sft_pool_seed: int = 1000
    post_pool_seed: int = 1001
    heldout_seed: int = 0  # = eapbench.data's "synthetic" dataset (seed 0)
    heldout_size: int = 500
    heldout_reserved: int = 1000  # generate_problems(heldout_reserved, heldout_seed) never trained on
    tokenizer_texts: int = 4000
    vocab_size: int = 512
    init_seed: int = 0
    task: SyntheticConfig = field(default_factory=SyntheticConfig)
    model: ZooModelConfig = field(default_factory=ZooModelConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    post: PostTrainConfig = field(default_factory=PostTrainConfig)
    threads: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tiny_recipe() -> ZooRecipe:
    """A seconds-long recipe for tests: a 2-layer model, a few steps of everything."""
    return ZooRecipe(sft_pool_size=300, heldout_size=16, heldout_reserved=16, tokenizer_texts=300,
                     model=ZooModelConfig(n_layers=2, d_model=32, n_heads=2, n_kv_heads=1, d_mlp=64),
                     sft=SFTConfig(steps=30, batch_size=16, lr=1e-2, warmup_steps=3),
                     post=PostTrainConfig(steps=3, prompts_per_step=4, samples_per_prompt=4))


def problem_sets(recipe: ZooRecipe):
    """(sft pool, post-training pool, held-out), pairwise disjoint by question text.

    The held-out set is the first ``heldout_size`` of ``generate_problems(heldout_reserved, heldout_seed)``;
    no question of those ``heldout_reserved`` problems enters a training pool.
    """
    knobs = asdict(recipe.task)
    reserved = generate_problems(max(recipe.heldout_reserved, recipe.heldout_size), recipe.heldout_seed, **knobs)
    heldout = reserved[:recipe.heldout_size]
    seen = {p.question for p in reserved}
    sft_pool = generate_problems(recipe.sft_pool_size, recipe.sft_pool_seed, id_prefix="zoo-sft", exclude=seen,
                                 **knobs)
    seen |= {p.question for p in sft_pool}
    post_pool = generate_problems(recipe.post.problems_used(), recipe.post_pool_seed, exclude=seen,
                                  id_prefix="zoo-post", **knobs)
    return sft_pool, post_pool, heldout


def _evaluate(folder: Path, heldout, grade, threads: int) -> dict[str, Any]:
    model, tok = load_checkpoint(folder, dtype="float32")
    return {"heldout_accuracy": accuracy(model, tok, heldout, grade),
            "heldout_sampling_accuracy_t1": accuracy(model, tok, heldout, grade, temperature=1.0, seed=0),
            "heldout_n": len(heldout), "heldout_seed": heldout[0].meta["seed"] if heldout else None,
            "decoding": "greedy (heldout_accuracy); pure temperature-1.0 sampling, generator seed 0 "
                        "(heldout_sampling_accuracy_t1)", "evaluated": "stored bf16 weights loaded as float32"}


def _common_card(recipe: ZooRecipe, name: str, wall: float, load_before, grade_name: str) -> dict[str, Any]:
    return {"name": name, "prompt_template": PROMPT_TEMPLATE, "threads": recipe.threads,
            "wall_time_s": round(wall, 1), "cpu_count": os.cpu_count(),
            "timing_note": "wall time of this run; the load averages show what else the machine was doing",
            "load_average_at_start": list(load_before), "load_average_at_end": list(os.getloadavg()),
            "grader": grade_name, "stored_dtype": "bfloat16", "model_config": recipe.model.to_dict(),
            "data": {"sft_pool": [recipe.sft_pool_size, recipe.sft_pool_seed],
                     "post_pool": [recipe.post.problems_used(), recipe.post_pool_seed],
                     "heldout": [recipe.heldout_size, recipe.heldout_seed],
                     "heldout_reserved": recipe.heldout_reserved, "generator": "eapbench.pipeline.synthetic",
                     "knobs": asdict(recipe.task), "disjoint": "no training pool contains a question of "
                     "generate_problems(heldout_reserved, heldout_seed); the post pool excludes sft-pool questions"}}


def build_sft(recipe: ZooRecipe, out_dir: Path, progress: bool = True) -> dict[str, Any]:
    torch.set_num_threads(recipe.threads)
    grade, grade_name = grader()
    load0, t0 = os.getloadavg(), time.perf_counter()
    sft_pool, _, heldout = problem_sets(recipe)
    tok = build_tokenizer([prompt_text(p) + answer_text(p) for p in sft_pool[:recipe.tokenizer_texts]],
                          recipe.vocab_size)
    model = make_model(recipe.model, tok, recipe.init_seed)
    history = train_sft(model, tok, sft_pool, recipe.sft, progress=progress)
    folder = save_checkpoint(model, tok, out_dir / "sft")
    wall = time.perf_counter() - t0
    atomic_write_text(folder / LOG_FILE, json.dumps(history) + "\n")
    card = _common_card(recipe, "sft", wall, load0, grade_name)
    card.update({"parent": None, "method": "sft", "seed": recipe.sft.seed, "init_seed": recipe.init_seed,
                 "steps": recipe.sft.steps, "hyperparameters": recipe.sft.to_dict(),
                 "n_parameters": sum(p.numel() for p in model.parameters()),
                 "tokenizer": {"kind": "byte-level BPE, digits split", "vocab_size": len(tok),
                               "trained_on": f"first {recipe.tokenizer_texts} sft-pool prompt+answer texts"},
                 "train_loss_first": history[0]["loss"], "train_loss_last": history[-1]["loss"]})
    card.update(_evaluate(folder, heldout, grade, recipe.threads))
    write_card(folder, card)
    log.info("sft: held-out accuracy %.3f, %.0f s", card["heldout_accuracy"], wall)
    return card


def build_child(name: str, recipe: ZooRecipe, out_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Post-train one child of the stored ``sft`` checkpoint and write its folder and card."""
    from .dpo import sample_preferences, train_dpo
    from .grpo import train_grpo
    from .ppo import train_ppo

    if name not in CHILDREN:
        raise ValueError(f"unknown zoo child {name!r}; choose from {sorted(CHILDREN)}")
    torch.set_num_threads(recipe.threads)
    method, temperature = CHILDREN[name]
    cfg = replace(recipe.post, temperature=temperature)
    grade, grade_name = grader()
    load0, t0 = os.getloadavg(), time.perf_counter()
    _, post_pool, heldout = problem_sets(recipe)
    model, tok = load_checkpoint(out_dir / "sft", dtype="float32")
    extra: dict[str, Any] = {}
    if method == "grpo":
        history = train_grpo(model, tok, post_pool, cfg, grade, progress=progress, desc=name)
    elif method == "ppo":
        history = train_ppo(model, tok, post_pool, cfg, grade, progress=progress, desc=name)
    else:
        parent, _ = load_checkpoint(out_dir / "sft", dtype="float32")
        pairs = sample_preferences(parent, tok, post_pool, cfg, grade, progress=progress)
        del parent
        extra["n_pairs"] = sum(len(p.prompts) for p in pairs)
        history = train_dpo(model, tok, pairs, cfg, progress=progress)
    folder = save_checkpoint(model, tok, out_dir / name)
    wall = time.perf_counter() - t0
    atomic_write_text(folder / LOG_FILE, json.dumps(history) + "\n")
    card = _common_card(recipe, name, wall, load0, grade_name)
    used = ({k: v for k, v in cfg.to_dict().items() if k not in ("value_lr", "gae_lambda", "gamma", "dpo_beta")}
            | ({"value_lr": cfg.value_lr, "gae_lambda": cfg.gae_lambda, "gamma": cfg.gamma} if method == "ppo" else {})
            | ({"dpo_beta": cfg.dpo_beta} if method == "dpo" else {}))
    card.update({"parent": "sft", "method": method, "seed": cfg.seed, "steps": cfg.steps,
                 "optimizer_steps": sum(h.get("updates", cfg.minibatches) for h in history),
                 "hyperparameters": used, "completions_sampled": cfg.steps * cfg.prompts_per_step
                 * cfg.samples_per_prompt, **extra})
    rewards = [h["reward"] for h in history if "reward" in h]
    if rewards:
        k = max(1, len(rewards) // 5)
        card["train_reward_first_fifth"] = sum(rewards[:k]) / k
        card["train_reward_last_fifth"] = sum(rewards[-k:]) / k
    card.update(_evaluate(folder, heldout, grade, recipe.threads))
    write_card(folder, card)
    log.info("%s: held-out accuracy %.3f, %.0f s", name, card["heldout_accuracy"], wall)
    return card


def _worker_logging(level: int) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(processName)s %(name)s: %(message)s")


def build_zoo(recipe: ZooRecipe, out_dir: str | Path, *, jobs: int = 1, only: tuple[str, ...] | None = None,
              skip_sft: bool = False, progress: bool = True) -> dict[str, dict[str, Any]]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = tuple(only) if only else tuple(CHILDREN)
    t0, load0 = time.perf_counter(), os.getloadavg()
    cards: dict[str, dict[str, Any]] = {}
    if not skip_sft:
        cards["sft"] = build_sft(recipe, out_dir, progress)
    else:
        from .card import read_card

        cards["sft"] = read_card(out_dir / "sft")
    cards.update(build_children(build_child, names, recipe, out_dir, progress, jobs))
    write_manifest(out_dir / MANIFEST_FILE, recipe, cards, jobs=jobs, t0=t0, load0=load0,
                   partial={"skip_sft": skip_sft, "only": list(names)} if skip_sft or only else None)
    return cards


def build_children(build: Callable[..., dict[str, Any]], names: Sequence[str], recipe: Any, out_dir: Path,
                   progress: bool, jobs: int) -> dict[str, dict[str, Any]]:
    """``build(name, recipe, out_dir, progress)`` for each child: in this process with ``jobs <= 1``, else in
    ``jobs`` spawned worker processes. Returns name -> card."""
    if jobs <= 1:
        return {n: build(n, recipe, out_dir, progress) for n in names}
    import multiprocessing as mp

    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"),
                             initializer=_worker_logging, initargs=(logging.getLogger().level,)) as pool:
        futures = {n: pool.submit(build, n, recipe, out_dir, progress) for n in names}
        return {n: f.result() for n, f in futures.items()}


def write_manifest(path: Path, recipe: Any, cards: dict[str, dict[str, Any]], *, jobs: int, t0: float,
                   load0: tuple[float, ...], partial: dict[str, Any] | None) -> None:
    """The build's manifest: recipe, parallelism, wall time since ``t0``, machine load, each card's accuracy."""
    manifest = {"recipe": recipe.to_dict(), "jobs": jobs, "threads_per_process": recipe.threads,
                "total_wall_time_s": round(time.perf_counter() - t0, 1), "cpu_count": os.cpu_count(),
                "load_average_at_start": list(load0), "load_average_at_end": list(os.getloadavg()),
                "heldout_accuracy": {n: c["heldout_accuracy"] for n, c in cards.items()},
                "wall_time_s": {n: c["wall_time_s"] for n, c in cards.items()}}
    if partial is not None:
        manifest["partial"] = partial
    atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    from . import default_checkpoint_dir

    ap = argparse.ArgumentParser(prog="eapbench zoo train",
                                 description="Rebuild the mini model zoo (sft, grpo, grpo-t0.6, ppo, dpo) "
                                             "deterministically on CPU.")
    ap.add_argument("--out", type=Path, default=default_checkpoint_dir(),
                    help="output folder (default: the package's shipped checkpoints)")
    ap.add_argument("--jobs", type=int, default=2, help="post-training runs in parallel (processes); default 2")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per process (recorded in the cards; changes floating-point results)")
    ap.add_argument("--only", nargs="+", choices=sorted(CHILDREN), help="post-train only these children")
    ap.add_argument("--skip-sft", action="store_true", help="reuse the sft checkpoint already in --out")
    ap.add_argument("--post-seed", type=int, default=None, help="seed of the post-training runs (default 0)")
    ap.add_argument("--tiny", action="store_true", help="a seconds-long smoke-test recipe (not the shipped zoo)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--smol", action="store_true",
                    help="build the smol lineage instead (LoRA SFT/GRPO/DPO of SmolLM2-135M-Instruct; "
                         "see `eapbench zoo train --smol --help`)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import sys

    if "--smol" in (sys.argv[1:] if argv is None else argv):  # the smol lineage (eapbench.zoo.smol)
        from .smol import main as smol_main

        return smol_main([a for a in (sys.argv[1:] if argv is None else argv) if a != "--smol"])
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.jobs < 1 or args.threads < 1:
        raise SystemExit("--jobs and --threads must be >= 1")
    recipe = tiny_recipe() if args.tiny else ZooRecipe()
    recipe = replace(recipe, threads=args.threads)
    if args.post_seed is not None:
        recipe = replace(recipe, post=replace(recipe.post, seed=args.post_seed))
    cards = build_zoo(recipe, args.out, jobs=args.jobs, only=tuple(args.only) if args.only else None,
                      skip_sft=args.skip_sft, progress=not args.quiet)
    for name, card in cards.items():
        print(f"{name:10s} held-out accuracy {card['heldout_accuracy']:.3f}  wall {card['wall_time_s']:.0f} s")
    return 0
