"""One entry point from (model pair, dataset, α values) to the inputs :func:`eapbench.attribute` needs.

:func:`prepare_pair` loads the dataset, checks that both models share one tokenizer, has each
model answer every problem (greedy, cached: :mod:`eapbench.generate`), grades the answers
(:mod:`eapbench.grading`) and runs the paired protocol (:mod:`eapbench.selection`) once per
α. Generations are cached on disk, so asking for other α values, or running again, decodes
nothing new. Models are loaded one at a time and released after generating.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Any, Sequence

from .data import load_dataset
from .generate import GenerationRun, generate, load_tokenizer
from .grading import answers_equal, extract_answer
from .prompts import get_template
from ..records import ModelSpec, Problem
from .selection import ModelAnswer, PairedSelection, SelectionConfig, select_pair

log = logging.getLogger(__name__)

__all__ = ["prepare_pair", "grade_run", "tokenizer_differences", "check_same_tokenizer", "TokenizerMismatchError"]

WHY_ONE_TOKENIZER = (
    "The paired protocol compares the two models on the same problems token for token: it keeps problems "
    "whose prompts have the same length in tokens, and truncates both answers at the same T_cut tokens. With "
    "different tokenizers those token counts measure different text, so the two models' edge scores would be "
    "computed on inputs that are not comparable.")


class TokenizerMismatchError(ValueError):
    """The two models of a pair tokenize differently (see :data:`WHY_ONE_TOKENIZER`)."""


def tokenizer_differences(a: Any, b: Any) -> list[str]:
    """Human-readable differences between two tokenizers' vocabularies and special tokens (empty: same).

    Padding tokens are not compared: padding is masked and never scored.
    """
    diffs: list[str] = []
    va, vb = a.get_vocab(), b.get_vocab()
    if va != vb:
        only_a = sorted(set(va) - set(vb))[:5]
        only_b = sorted(set(vb) - set(va))[:5]
        moved = sorted(t for t in set(va) & set(vb) if va[t] != vb[t])[:5]
        diffs.append(f"vocabularies differ (sizes {len(va)} vs {len(vb)}; only in base e.g. {only_a}, "
                     f"only in tuned e.g. {only_b}, different ids e.g. {moved})")
    for attr in ("bos_token", "eos_token", "unk_token"):
        ta, tb = getattr(a, attr, None), getattr(b, attr, None)
        ia, ib = getattr(a, f"{attr}_id", None), getattr(b, f"{attr}_id", None)
        if (ta, ia) != (tb, ib):
            diffs.append(f"{attr} differs ({ta!r}/{ia} vs {tb!r}/{ib})")
    return diffs


def check_same_tokenizer(base_tok: Any, tuned_tok: Any, *, allow_mismatch: bool = False,
                         names: tuple[str, str] = ("base", "tuned")) -> list[str]:
    """Raise :class:`TokenizerMismatchError` unless the tokenizers agree (or ``allow_mismatch``)."""
    diffs = tokenizer_differences(base_tok, tuned_tok)
    if diffs and not allow_mismatch:
        raise TokenizerMismatchError(
            f"{names[0]} and {names[1]} use different tokenizers: {'; '.join(diffs)}. {WHY_ONE_TOKENIZER} "
            "If you accept that: `eapbench compare --allow-tokenizer-mismatch`, the pair key "
            "`allow_tokenizer_mismatch: true` (suite --pair), or allow_tokenizer_mismatch=True (Python).")
    if diffs:
        log.warning("tokenizers of %s and %s differ (%s); proceeding because allow_tokenizer_mismatch=True",
                    names[0], names[1], "; ".join(diffs))
    return diffs


def grade_run(run: GenerationRun, problems: Sequence[Problem], *, marker: str | None = None) -> list[ModelAnswer]:
    """Grade every generation of ``run`` against its problem's reference answer."""
    by_id = run.by_id()
    answers = []
    for p in problems:
        g = by_id[p.id]
        pred = extract_answer(g.text, marker)
        answers.append(ModelAnswer(problem_id=p.id, prompt_ids=g.prompt_ids, answer_ids=g.answer_ids,
                                   answered=pred is not None,
                                   correct=pred is not None and answers_equal(pred, p.answer)))
    return answers


def prepare_pair(base: ModelSpec, tuned: ModelSpec, dataset: str, alphas: Sequence[float], *,
                 n_samples: int = 100, seed: int = 42, beta: float = 0.5, gamma: float = 1.5, delta: float = 0.5,
                 limit: int | None = None, device: str = "cpu", dtype: str = "float32", batch_size: int = 8,
                 allow_tokenizer_mismatch: bool = False, cache: bool = True,
                 data_dir: str | os.PathLike | None = None, source: str | None = None, backend: str = "hf",
                 progress: bool = True, device_map: str | None = None,
                 max_memory: str | None = None, gen_token_budget: int | None = None) -> dict[float, PairedSelection]:
    """The pair's attribution inputs per α (SPEC §4), with a report of every count.

    ``limit`` keeps the first problems of the dataset; ``source``/``data_dir`` choose where the
    dataset comes from (:func:`eapbench.data.load_dataset`). Each model decodes at most
    ``spec.max_new_tokens`` tokens with its own template; answers are graded with the template's
    marker. ``backend`` (hf, vllm, auto) and ``gen_token_budget`` (hf batches packed by length under
    it): :func:`eapbench.pipeline.generate.generate`; each side's backend, decoded tokens, seconds
    and tokens/s go into the report's ``generation`` entry. Raises :class:`TokenizerMismatchError`
    for a pair with different tokenizers (unless ``allow_tokenizer_mismatch``) and :class:`eapbench.selection.EmptySelectionError` when a step
    leaves no problem.
    """
    config = SelectionConfig(n_samples=n_samples, seed=seed, beta=beta, gamma=gamma, delta=delta)
    data = load_dataset(dataset, source=source, data_dir=data_dir, limit=limit)
    problems = list(data.problems)
    tokenizers = (load_tokenizer(base), load_tokenizer(tuned))
    diffs = check_same_tokenizer(*tokenizers, allow_mismatch=allow_tokenizer_mismatch,
                                 names=(base.label, tuned.label))

    runs: list[GenerationRun] = []
    graded: list[list[ModelAnswer]] = []
    for spec, tok in zip((base, tuned), tokenizers):
        run = generate(spec, problems, dataset=dataset, tokenizer=tok, batch_size=batch_size, device=device,
                       dtype=dtype, backend=backend, cache=cache, progress=progress, device_map=device_map,
                       max_memory=max_memory, token_budget=gen_token_budget)
        answers = grade_run(run, problems, marker=get_template(spec.template).marker)
        log.info("%s on %s: %d/%d correct (%d newly generated, %d cached)", spec.label, dataset,
                 sum(a.correct for a in answers), len(answers), run.n_generated, run.n_cached)
        runs.append(run)
        graded.append(answers)

    selections = select_pair(graded[0], graded[1], alphas, config=config, base_name=base.label,
                             tuned_name=tuned.label, dataset=dataset)
    provenance: dict[str, Any] = {
        "dataset": data.to_dict(),
        "generation": {
            side: {"key": r.key, "settings": r.settings, "n_generated": r.n_generated, "n_cached": r.n_cached,
                   "fingerprint": r.fingerprint, "unfinished": sum(not g.finished for g in r.generations),
                   "batch_size": batch_size, "token_budget": gen_token_budget, **r.stats()}
            for side, r in zip(("base", "tuned"), runs)},
        "tokenizer_differences": diffs,
    }
    selections = {a: replace(sel, report=replace(sel.report, extra={**sel.report.extra, **provenance}))
                  for a, sel in selections.items()}
    first = next(iter(selections.values()))
    log.info("paired selection: %s", first.report.summary())
    return selections
