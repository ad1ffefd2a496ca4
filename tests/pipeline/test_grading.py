"""Answer extraction and equivalence (eapbench.pipeline.grading): a table of tricky cases plus properties."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eapbench.pipeline.grading import answers_equal, extract_answer, grade, last_boxed

# (completion, reference, marker, expected grade)
GRADE_CASES = [
    # fractions vs decimals
    ("so \\boxed{\\frac{1}{2}}", "0.5", None, True),
    ("so \\boxed{0.75}", "\\dfrac{3}{4}", None, True),
    ("so \\boxed{3/4}", "\\frac34", None, True),
    ("so \\boxed{0.33}", "\\frac{1}{3}", None, False),
    ("so \\boxed{2.9999999}", "3", None, True),  # numeric tolerance (rel 1e-6)
    ("so \\boxed{2.99}", "3", None, False),
    # LaTeX forms
    ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\sqrt{2}/2", None, True),
    ("\\boxed{\\dfrac{\\pi}{4}}", "\\frac{\\pi}{4}", None, True),
    ("\\boxed{x=5}", "5", None, True),
    ("\\boxed{10^{\\circ}}", "10", None, True),
    ("\\boxed{2\\sqrt{3}}", "\\sqrt{12}", None, True),
    ("\\boxed{2\\sqrt{3}}", "\\sqrt{3}", None, False),
    # thousands separators
    ("\\boxed{1,000}", "1000", None, True),
    ("\\boxed{1{,}234{,}567}", "1234567", None, True),
    ("The answer is: 12,500.", "12500", "The answer is", True),
    ("#### 1,200", "1200", "####", True),
    # negatives
    ("\\boxed{-3}", "-3", None, True),
    ("\\boxed{-3.0}", "-3", None, True),
    ("\\boxed{3}", "-3", None, False),
    ("\\boxed{-\\frac{1}{2}}", "-0.5", None, True),
    # units and currency
    ("\\boxed{\\$18}", "18", None, True),
    ("\\boxed{18 \\text{ dollars}}", "18", None, True),
    ("\\boxed{18 dollars}", "18", None, True),
    ("\\boxed{18\\text{ cm}^2}", "18", None, True),
    ("The answer is 72 apples.", "72", "The answer is", True),
    ("\\boxed{50\\%}", "50", None, True),
    ("\\boxed{19 dollars}", "18", None, False),
    # intervals and sets
    ("\\boxed{(1, 2]}", "(1,2]", None, True),
    ("\\boxed{(1, 2)}", "(1,2]", None, False),
    ("\\boxed{[-1, \\infty)}", "[-1,\\infty)", None, True),
    ("\\boxed{2, 1}", "1,2", None, True),
    # multiple boxes: the last one counts
    ("first \\boxed{3}, then corrected: \\boxed{5}", "5", None, True),
    ("first \\boxed{5}, then changed to \\boxed{3}", "5", None, False),
    ("\\boxed{5} and a cut-off \\boxed{7", "5", None, True),  # unclosed box ignored
    ("a box wins over the marker: The answer is 3. \\boxed{4}", "4", "The answer is", True),
    # no answer
    ("I do not know.", "5", None, False),
    ("The answer is 5", "5", None, False),  # marker not given
    ("", "5", "The answer is", False),
    ("\\boxed{}", "5", None, False),
    ("\\boxed{5", "5", None, False),
]


@pytest.mark.parametrize("completion, reference, marker, expected", GRADE_CASES)
def test_grade_table(completion, reference, marker, expected):
    assert grade(completion, reference, marker=marker) is expected


EXTRACT_CASES = [
    ("x \\boxed{42} y", None, "42"),
    ("\\boxed{\\frac{1}{2}}", None, "\\frac{1}{2}"),
    ("\\boxed{\\{1, 2\\}}", None, "\\{1, 2\\}"),  # escaped braces inside
    ("\\boxed{a} \\fbox{b}", None, "b"),
    ("\\boxed 7 is it", None, "7"),
    ("\\boxed {8}", None, "8"),
    ("The answer is: $\\frac{3}{4}$.", "The answer is", "\\frac{3}{4}"),
    ("the ANSWER IS 9\nmore text", "The answer is", "9"),
    ("The answer is 1. Wait. The answer is 2.", "The answer is", "2"),
    ("#### 72", "####", "72"),
    ("nothing here", "####", None),
    ("The answer is", "The answer is", None),
    ("\\boxed{}", None, None),
]


@pytest.mark.parametrize("completion, marker, expected", EXTRACT_CASES)
def test_extract_answer_table(completion, marker, expected):
    assert extract_answer(completion, marker) == expected


def test_last_boxed_nested_braces():
    assert last_boxed("\\boxed{\\frac{a}{\\sqrt{b}}}") == "\\frac{a}{\\sqrt{b}}"


def test_bad_types_raise_clearly():
    with pytest.raises(TypeError, match="completion must be a str"):
        extract_answer(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="reference must be a str"):
        grade("\\boxed{1}", 1)  # type: ignore[arg-type]


def test_grading_works_off_the_main_thread():
    # math-verify's signal-based timeouts fail off the main thread unless disabled
    results = {}

    def work():
        results["frac"] = grade("\\boxed{\\frac{1}{2}}", "0.5")
        results["sqrt"] = grade("\\boxed{2\\sqrt{3}}", "\\sqrt{12}")
        results["wrong"] = grade("\\boxed{2\\sqrt{3}}", "\\sqrt{11}")

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert results == {"frac": True, "sqrt": True, "wrong": False}


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=-10**9, max_value=10**9))
def test_integer_answers_property(n):
    assert grade(f"steps. \\boxed{{{n}}}", str(n))
    assert grade(f"steps. \\boxed{{{n:,}}}", str(n))  # thousands separators
    assert grade(f"#### {n}", str(n), marker="####")
    assert not grade(f"steps. \\boxed{{{n + 1}}}", str(n))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 999), st.integers(1, 999))
def test_fraction_equals_its_decimal(p, q):
    assert answers_equal(repr(p / q), f"\\frac{{{p}}}{{{q}}}")


@pytest.mark.perf
def test_bench_grade_mixed_answers(benchmark):
    """grade() over the table's mix of numeric, LaTeX and marker answers, math-verify memo cleared each round."""
    cases = [(c, r, m) for c, r, m, _ in GRADE_CASES]

    def run():
        _math_verify_cache_clear()
        return sum(grade(c, r, marker=m) for c, r, m in cases)

    assert benchmark(run) == sum(e for *_, e in GRADE_CASES)


def _math_verify_cache_clear():
    from eapbench.pipeline import grading

    grading._math_verify_equal.cache_clear()
