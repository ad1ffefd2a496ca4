"""Held-out accuracy of a zoo's post-trained children against their parent, paired per problem.

``eapbench zoo eval [--out DIR] [--problems N]`` (or ``python -m eapbench.zoo.evaluate``) decodes the
held-out problems greedily with every checkpoint in ``DIR`` (the children that are there; the parent
``sft`` must be) and, for each child, counts the problems it
gained and lost against ``sft`` with an exact McNemar test (two-sided binomial test on the
discordant problems): the evidence behind "online RL beats its SFT parent".
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import NAMES, PARENT


@dataclass(frozen=True)
class PairedAccuracy:
    child: str
    accuracy: float
    parent_accuracy: float
    gained: int  # right by the child, wrong by the parent
    lost: int  # wrong by the child, right by the parent
    p_value: float  # exact McNemar, two-sided
    n: int

    def line(self) -> str:
        return (f"{self.child:10s} accuracy {self.accuracy:.3f} vs {PARENT} {self.parent_accuracy:.3f} "
                f"(n={self.n}): gained {self.gained}, lost {self.lost}, exact McNemar p = {self.p_value:.2g}")


def mcnemar_exact(gained: int, lost: int) -> float:
    """Two-sided exact McNemar p-value: binomial test of ``gained`` among the discordant pairs at 1/2."""
    from scipy.stats import binomtest

    if gained < 0 or lost < 0:
        raise ValueError(f"counts must be non-negative, got gained={gained}, lost={lost}")
    return 1.0 if gained + lost == 0 else float(binomtest(gained, gained + lost, 0.5).pvalue)


def paired(child: str, child_correct: torch.Tensor, parent_correct: torch.Tensor) -> PairedAccuracy:
    if child_correct.shape != parent_correct.shape:
        raise ValueError(f"{child}: {child_correct.numel()} results vs the parent's {parent_correct.numel()}")
    c, b = child_correct.bool(), parent_correct.bool()
    gained, lost = int((c & ~b).sum()), int((~c & b).sum())
    return PairedAccuracy(child, float(c.float().mean()), float(b.float().mean()), gained, lost,
                          mcnemar_exact(gained, lost), int(c.numel()))


class ZooEvalError(FileNotFoundError):
    """The zoo folder cannot be evaluated (no parent, or no child beside it): a one-line reason."""


def present_children(out_dir: str | Path) -> tuple[str, ...]:
    """The children of the zoo (``NAMES`` order) whose weights are in ``out_dir``."""
    from .model import WEIGHTS_FILE

    return tuple(n for n in NAMES if n != PARENT and (Path(out_dir) / n / WEIGHTS_FILE).is_file())


def first_problems(heldout: list, n_problems: int | None) -> list:
    """The first ``n_problems`` held-out problems (all of them for None)."""
    if n_problems is None:
        return heldout
    if n_problems < 1:
        raise ValueError(f"n_problems must be >= 1, got {n_problems}")
    return heldout[:n_problems]


def compare_to_parent(out_dir: str | Path, recipe=None, names: tuple[str, ...] | None = None,
                      n_problems: int | None = None) -> list[PairedAccuracy]:
    """Paired greedy held-out comparison of each child in ``out_dir`` with ``out_dir/sft``.

    ``names`` defaults to the children present in ``out_dir``; ``n_problems`` evaluates only the
    first that many held-out problems (default: the recipe's ``heldout_size``). A missing parent,
    or no child to compare, is a :class:`ZooEvalError`.
    """
    from .build import ZooRecipe, problem_sets
    from .model import WEIGHTS_FILE, load_checkpoint
    from .task import correct, grader

    out_dir = Path(out_dir)
    if not (out_dir / PARENT / WEIGHTS_FILE).is_file():
        raise ZooEvalError(f"{out_dir / PARENT} holds no {WEIGHTS_FILE}: the parent ({PARENT}) is needed to "
                           f"compare its children (build it with `python -m eapbench.zoo --out {out_dir}`)")
    names = tuple(names) if names is not None else present_children(out_dir)
    if not names:
        raise ZooEvalError(f"{out_dir} holds no child checkpoint ({', '.join(n for n in NAMES if n != PARENT)}) "
                           "to compare with its parent")
    recipe = recipe or ZooRecipe()
    heldout = first_problems(problem_sets(recipe)[2], n_problems)
    grade, _ = grader()

    def run(name: str) -> torch.Tensor:
        model, tok = load_checkpoint(out_dir / name)
        return correct(model, tok, heldout, grade)

    parent = run(PARENT)
    return [paired(n, run(n), parent) for n in names]


def main(argv: list[str] | None = None) -> int:
    import sys

    from . import default_checkpoint_dir

    if "--smol" in (sys.argv[1:] if argv is None else argv):  # the smol lineage (eapbench.zoo.smol)
        from .smol import eval_main

        return eval_main([a for a in (sys.argv[1:] if argv is None else argv) if a != "--smol"])
    ap = argparse.ArgumentParser(prog="eapbench zoo eval",
                                 description="Greedy held-out accuracy of each zoo child vs sft, paired per problem.")
    ap.add_argument("--out", type=Path, default=default_checkpoint_dir(),
                    help="zoo folder (default: the package's shipped checkpoints); the children found there "
                         "are compared with its sft")
    ap.add_argument("--problems", type=int, default=None, metavar="N",
                    help="only the first N held-out problems (default: all 500 of the recipe)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of lines")
    ap.add_argument("--smol", action="store_true",
                    help="compare the smol lineage (smol-grpo, smol-dpo vs smol-sft) instead")
    args = ap.parse_args(argv)
    if args.problems is not None and args.problems < 1:
        ap.error(f"--problems must be >= 1, got {args.problems}")
    torch.set_num_threads(1)  # the cards' accuracies were measured on one thread
    missing = [n for n in NAMES if n != PARENT and n not in present_children(args.out)]
    try:
        rows = compare_to_parent(args.out, n_problems=args.problems)
    except ZooEvalError as exc:
        print(f"eapbench zoo eval: {exc}", file=sys.stderr)
        return 2
    if missing:
        print(f"eapbench zoo eval: not in {args.out} (not evaluated): {', '.join(missing)}", file=sys.stderr)
    if args.json:
        import json

        print(json.dumps([asdict(r) for r in rows], indent=2))
    else:
        print("\n".join(r.line() for r in rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
