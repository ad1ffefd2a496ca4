"""The paired sample protocol (SPEC §4): which problems, and how much of each answer, get attributed.

Input: for each model of a pair, its graded greedy answers (:class:`ModelAnswer`, one per
problem, same problems in both lists). Steps, each recorded in :class:`SelectionReport`:

1. ``answered``: both models gave an extractable final answer (reported; implied by step 2);
2. ``both_correct``: both answers are correct (counts ``correct_base``/``correct_tuned`` too);
3. ``refer = min(mean T_base, mean T_tuned)`` over the both-correct set (T = answer tokens,
   EOS excluded);
4. ``equal_prompt_len``: the prompts tokenize to the same length for both models;
5. ``length_band``: ``β·refer ≤ (T_base + T_tuned)/2 ≤ γ·refer``;
6. ``length_ratio``: ``|T_base − T_tuned| / ((T_base + T_tuned)/2) ≤ δ``;
7. ``sampled``: N problems drawn with ``random.Random(seed).sample`` (all of them when fewer
   remain), kept in dataset order;
8. ``T_cut = max(⌊α·refer⌋, 1)``, shared by both models; each model's input is its prompt +
   its own answer[:T_cut]. An answer shorter than T_cut is used whole (slice semantics); how
   many were is reported (``short_base``/``short_tuned``).

The sample does not depend on α, so every α sees the same problems. Zero problems left after
any step raises :class:`EmptySelectionError`, which names the step and carries the report.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from ..records import AttributionInputs

__all__ = ["ModelAnswer", "SelectionConfig", "SelectionReport", "PairedSelection", "EmptySelectionError",
           "select_pair", "t_cut_for", "COUNT_STEPS"]

COUNT_STEPS = ("problems", "answered_base", "answered_tuned", "answered", "correct_base", "correct_tuned",
               "both_correct", "equal_prompt_len", "length_band", "length_ratio", "sampled")


@dataclass(frozen=True)
class ModelAnswer:
    """One model's graded answer to one problem, as tokens."""

    problem_id: str
    prompt_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]  # generated answer, EOS excluded
    answered: bool  # a final answer could be extracted
    correct: bool

    def __post_init__(self) -> None:
        if self.correct and not self.answered:
            raise ValueError(f"problem {self.problem_id}: an answer cannot be correct without being answered")

    @property
    def n_answer(self) -> int:
        return len(self.answer_ids)


@dataclass(frozen=True)
class SelectionConfig:
    """The protocol's knobs (SPEC §4 defaults)."""

    n_samples: int = 100
    seed: int = 42
    beta: float = 0.5
    gamma: float = 1.5
    delta: float = 0.5

    def __post_init__(self) -> None:
        if self.n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {self.n_samples}")
        if not 0 <= self.beta <= self.gamma:
            raise ValueError(f"need 0 <= beta <= gamma, got beta={self.beta}, gamma={self.gamma}")
        if self.delta < 0:
            raise ValueError(f"delta must be >= 0, got {self.delta}")


@dataclass(frozen=True)
class SelectionReport:
    """Counts after every step and the numbers that fixed the inputs (SPEC §4: a claim built on few samples says so)."""

    counts: dict[str, int]  # keys from COUNT_STEPS, in order, as far as the selection got
    config: SelectionConfig
    alpha: float | None = None
    refer: float | None = None  # min(mean T_base, mean T_tuned) over both-correct
    t_cut: int | None = None
    mean_t_base: float | None = None  # over both-correct
    mean_t_tuned: float | None = None
    short_base: int = 0  # sampled answers shorter than t_cut (used whole)
    short_tuned: int = 0
    base: str = ""
    tuned: str = ""
    dataset: str = ""
    stopped_at: str | None = None  # the step that left zero problems, if any
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.counts.get("sampled", 0)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["config"] = asdict(self.config)
        d.update(d["config"])  # beta, gamma, delta, n_samples, seed also at the top level
        return d

    def summary(self) -> str:
        steps = ", ".join(f"{k}={v}" for k, v in self.counts.items())
        tail = f"; refer={self.refer:.1f}" if self.refer is not None else ""
        tail += f", alpha={self.alpha}, t_cut={self.t_cut}" if self.t_cut is not None else ""
        return f"{self.base} vs {self.tuned} on {self.dataset}: {steps}{tail}"


class EmptySelectionError(ValueError):
    """No problem survived a step of the paired protocol; ``.report`` has the counts, ``.step`` the step."""

    def __init__(self, step: str, report: SelectionReport, hint: str) -> None:
        self.step, self.report = step, report
        super().__init__(f"paired selection left no problem after '{step}' ({report.summary()}). {hint}")


@dataclass(frozen=True)
class PairedSelection:
    """The pair's attribution inputs at one α and the report of how they were chosen."""

    base: AttributionInputs
    tuned: AttributionInputs
    report: SelectionReport

    def to_dict(self) -> dict[str, Any]:
        return {"report": self.report.to_dict(), "problem_ids": list(self.base.problem_ids),
                "t_cut": self.base.t_cut, "base_model": self.base.model, "tuned_model": self.tuned.model}


def t_cut_for(alpha: float, refer: float) -> int:
    """T_cut = max(⌊α·refer⌋, 1)."""
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if not refer > 0:
        raise ValueError(f"refer must be > 0, got {refer}")
    return max(math.floor(alpha * refer), 1)


_HINTS = {
    "answered": "Neither model (or not both) produced an extractable final answer: check the template's "
                "answer marker, max_new_tokens (answers cut off before the box), or the grader.",
    "both_correct": "No problem is answered correctly by both models: use more problems (limit), a dataset the "
                    "models can solve, or check the grading.",
    "equal_prompt_len": "The two models' prompts never tokenize to the same length: the pair likely uses "
                        "different templates or tokenizers.",
    "length_band": "No pair's mean answer length lies within [beta, gamma] x refer; widen beta/gamma.",
    "length_ratio": "Every remaining pair's answer lengths differ by more than delta; raise delta.",
}


def select_pair(base: Sequence[ModelAnswer], tuned: Sequence[ModelAnswer], alphas: Sequence[float], *,
                config: SelectionConfig = SelectionConfig(), base_name: str = "", tuned_name: str = "",
                dataset: str = "") -> dict[float, PairedSelection]:
    """Run the paired protocol and return one :class:`PairedSelection` per α (same problems for all α)."""
    alphas = list(alphas)
    if not alphas:
        raise ValueError("alphas is empty; give at least one truncation fraction, e.g. (0.1,)")
    for a in alphas:
        if not (isinstance(a, (int, float)) and a > 0):
            raise ValueError(f"every alpha must be a positive number, got {a!r}")
    b_ids = [a.problem_id for a in base]
    if b_ids != [a.problem_id for a in tuned]:
        raise ValueError("base and tuned answers must cover the same problems in the same order "
                         f"({len(base)} vs {len(tuned)} answers)")
    if len(set(b_ids)) != len(b_ids):
        raise ValueError("duplicate problem ids in the answers")

    counts: dict[str, int] = {"problems": len(base)}
    partial = dict(config=config, base=base_name, tuned=tuned_name, dataset=dataset)

    def check(step: str, n: int, **extra: Any) -> None:
        counts[step] = n
        if n == 0:
            raise EmptySelectionError(step, SelectionReport(counts=dict(counts), stopped_at=step, **partial, **extra),
                                      _HINTS.get(step, ""))

    if not base:
        raise EmptySelectionError("problems", SelectionReport(counts=dict(counts), stopped_at="problems", **partial),
                                  "There are no problems to select from.")
    pairs = list(zip(base, tuned))
    counts["answered_base"] = sum(b.answered for b in base)
    counts["answered_tuned"] = sum(t.answered for t in tuned)
    check("answered", sum(b.answered and t.answered for b, t in pairs))
    counts["correct_base"] = sum(b.correct for b in base)
    counts["correct_tuned"] = sum(t.correct for t in tuned)
    pairs = [(b, t) for b, t in pairs if b.correct and t.correct]
    check("both_correct", len(pairs))

    mean_b = sum(b.n_answer for b, _ in pairs) / len(pairs)
    mean_t = sum(t.n_answer for _, t in pairs) / len(pairs)
    refer = min(mean_b, mean_t)
    stats = dict(refer=refer, mean_t_base=mean_b, mean_t_tuned=mean_t)
    if refer <= 0:
        counts["length_band"] = 0
        raise EmptySelectionError("length_band", SelectionReport(counts=dict(counts), stopped_at="length_band",
                                                                 **partial, **stats),
                                  "Both-correct answers have zero tokens (refer = 0).")

    pairs = [(b, t) for b, t in pairs if len(b.prompt_ids) == len(t.prompt_ids)]
    check("equal_prompt_len", len(pairs), **stats)
    lo, hi = config.beta * refer, config.gamma * refer
    pairs = [(b, t) for b, t in pairs if lo <= (b.n_answer + t.n_answer) / 2 <= hi]
    check("length_band", len(pairs), **stats)
    pairs = [(b, t) for b, t in pairs
             if abs(b.n_answer - t.n_answer) <= config.delta * (b.n_answer + t.n_answer) / 2]
    check("length_ratio", len(pairs), **stats)

    if len(pairs) > config.n_samples:
        position = {pid: i for i, pid in enumerate(b_ids)}
        chosen = random.Random(config.seed).sample(range(len(pairs)), config.n_samples)
        pairs = sorted((pairs[i] for i in chosen), key=lambda bt: position[bt[0].problem_id])
    counts["sampled"] = len(pairs)

    out: dict[float, PairedSelection] = {}
    for alpha in alphas:
        t_cut = t_cut_for(alpha, refer)
        report = SelectionReport(counts=dict(counts), alpha=float(alpha), t_cut=t_cut,
                                 short_base=sum(b.n_answer < t_cut for b, _ in pairs),
                                 short_tuned=sum(t.n_answer < t_cut for _, t in pairs), **partial, **stats)
        meta = {"alpha": float(alpha), "refer": refer, "dataset": dataset}
        out[alpha] = PairedSelection(
            base=_inputs([b for b, _ in pairs], t_cut, base_name, meta),
            tuned=_inputs([t for _, t in pairs], t_cut, tuned_name, meta),
            report=report)
    return out


def _inputs(answers: Sequence[ModelAnswer], t_cut: int, model: str, meta: dict[str, Any]) -> AttributionInputs:
    return AttributionInputs(
        problem_ids=tuple(a.problem_id for a in answers),
        input_ids=tuple(tuple(a.prompt_ids) + tuple(a.answer_ids[:t_cut]) for a in answers),
        prompt_lengths=tuple(len(a.prompt_ids) for a in answers),
        t_cut=t_cut, model=model, meta=dict(meta))
