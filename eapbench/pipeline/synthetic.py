"""Deterministic synthetic multi-step arithmetic word problems (the mini zoo's task).

Each problem is a short templated story: a starting quantity followed by 2-4 operations
(add, subtract, multiply by a small factor), ending in a question about the final amount.
The reference ``solution`` is one equation per step and the boxed answer, e.g.
``5+8=13. 13-2=11. \\boxed{11}`` -- the form the mini models are trained to produce after
the prompt ``"Problem: {question}\\nSolution:"`` (the completion is ``" " + solution``).

Problems depend only on ``(n, seed, knobs)``: the generator uses its own
``random.Random(seed)`` and never global state, so the same call always returns the same
list on every machine and Python version >= 3.10.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..records import Problem

NAMES = ("Tom", "Ana", "Ben", "Mia", "Leo", "Sara", "Max", "Eva", "Sam", "Lily", "Omar", "Nina")
ITEMS = ("apples", "coins", "books", "stamps", "marbles", "pencils", "cards", "shells", "eggs", "toys")

_ADD = ("{name} buys {b} more {item}.", "{name} finds {b} more {item}.",
        "{name} gets {b} more {item} from a friend.", "{name} wins {b} more {item}.")
_SUB = ("{name} gives away {b} {item}.", "{name} loses {b} {item}.",
        "{name} sells {b} {item}.", "{name} gives {b} {item} to a friend.")
_MUL = {2: ("The number of {item} {name} has doubles.", "{name} ends up with twice as many {item}."),
        3: ("The number of {item} {name} has triples.", "{name} ends up with three times as many {item}.")}
_START = ("{name} has {a} {item}.", "{name} starts with {a} {item}.")
_QUESTION = ("How many {item} does {name} have now?", "How many {item} does {name} have at the end?")


@dataclass(frozen=True)
class SyntheticConfig:
    """Difficulty knobs. Every intermediate value stays within ``[0, max_value]``."""

    min_steps: int = 2
    max_steps: int = 4
    max_start: int = 20
    max_operand: int = 9
    max_value: int = 50
    p_multiply: float = 0.1

    def __post_init__(self) -> None:
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError(f"need 1 <= min_steps <= max_steps, got min_steps={self.min_steps}, "
                             f"max_steps={self.max_steps}")
        if self.max_start < 2 or self.max_operand < 2:
            raise ValueError(f"max_start and max_operand must be >= 2, got {self.max_start}, {self.max_operand}")
        if self.max_value < self.max_start + self.max_operand:
            raise ValueError(f"max_value={self.max_value} must be >= max_start + max_operand "
                             f"= {self.max_start + self.max_operand} so that an addition always fits")
        if not 0.0 <= self.p_multiply <= 1.0:
            raise ValueError(f"p_multiply must be in [0, 1], got {self.p_multiply}")


def _one(rng: random.Random, cfg: SyntheticConfig) -> tuple[str, str, int, list[str]]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    value = rng.randint(2, cfg.max_start)
    sentences = [rng.choice(_START).format(name=name, a=value, item=item)]
    equations: list[str] = []
    ops: list[str] = []
    for _ in range(rng.randint(cfg.min_steps, cfg.max_steps)):
        choices = []
        if value + 1 <= cfg.max_value:
            choices.append("add")
        if value >= 2:
            choices.append("sub")
        mul_ok = [k for k in (2, 3) if value * k <= cfg.max_value and value >= 2]
        if mul_ok and rng.random() < cfg.p_multiply:
            op = "mul"
        else:
            op = rng.choice(choices)
        if op == "add":
            b = rng.randint(1, min(cfg.max_operand, cfg.max_value - value))
            new, eq, tpl = value + b, f"{value}+{b}={value + b}.", rng.choice(_ADD)
        elif op == "sub":
            b = rng.randint(1, min(cfg.max_operand, value - 1))
            new, eq, tpl = value - b, f"{value}-{b}={value - b}.", rng.choice(_SUB)
        else:
            b = rng.choice(mul_ok)
            new, eq, tpl = value * b, f"{value}*{b}={value * b}.", rng.choice(_MUL[b])
        sentences.append(tpl.format(name=name, b=b, item=item))
        equations.append(eq)
        ops.append(op)
        value = new
    sentences.append(rng.choice(_QUESTION).format(name=name, item=item))
    solution = " ".join(equations) + f" \\boxed{{{value}}}"
    return " ".join(sentences), solution, value, ops


def generate_problems(n: int, seed: int, *, min_steps: int = 2, max_steps: int = 4,
                      max_start: int = 20, max_operand: int = 9, max_value: int = 50,
                      p_multiply: float = 0.1, exclude: frozenset[str] | set[str] = frozenset(),
                      id_prefix: str = "synthetic") -> list[Problem]:
    """``n`` distinct problems, deterministic per ``(seed, knobs)``; a prefix of any larger ``n``.

    The defaults are the mini zoo's training distribution. The zoo holds out
    ``generate_problems(1000, 0)`` (what ``eapbench.data.load_dataset("synthetic")`` returns) from
    every training pool, so seed 0 is the evaluation set.

    ``answer`` is the final integer as a string; ``solution`` the reference equations ending
    in ``\\boxed{answer}``. Questions in ``exclude`` (e.g. a training set's) are skipped, so
    held-out sets can be made disjoint from training sets.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    cfg = SyntheticConfig(min_steps, max_steps, max_start, max_operand, max_value, p_multiply)
    rng = random.Random(f"eapbench-synthetic-{seed}")
    out: list[Problem] = []
    seen: set[str] = set()
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 20 * n + 1000:
            raise ValueError(f"could not draw {n} distinct problems with these knobs ({len(out)} found); "
                             "widen max_operand/max_steps or lower n")
        question, solution, value, ops = _one(rng, cfg)
        if question in seen or question in exclude:
            continue
        seen.add(question)
        out.append(Problem(id=f"{id_prefix}-{seed}-{len(out)}", question=question, answer=str(value),
                           source="synthetic", solution=solution,
                           meta={"steps": len(ops), "ops": ops, "seed": seed}))
    return out


def verify_solution(problem: Problem) -> bool:
    """Check a reference solution's arithmetic: every equation holds and chains into the boxed answer."""
    import re

    if problem.solution is None:
        return False
    eqs = re.findall(r"(\d+)([+\-*])(\d+)=(\d+)\.", problem.solution)
    boxed = re.search(r"\\boxed\{(-?\d+)\}$", problem.solution)
    if not eqs or boxed is None:
        return False
    prev = None
    for a, op, b, c in eqs:
        a, b, c = int(a), int(b), int(c)
        if prev is not None and a != prev:
            return False
        if {"+": a + b, "-": a - b, "*": a * b}[op] != c:
            return False
        prev = c
    return str(prev) == boxed.group(1) == problem.answer
