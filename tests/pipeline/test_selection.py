"""The paired protocol (eapbench.pipeline.selection) on hand-made records whose survivors are worked out by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eapbench.pipeline.selection import (EmptySelectionError, ModelAnswer, SelectionConfig, select_pair, t_cut_for)


def ans(pid: str, prompt_len: int, n_answer: int, correct: bool = True, answered: bool | None = None,
        first_token: int = 100) -> ModelAnswer:
    return ModelAnswer(problem_id=pid, prompt_ids=tuple(range(1, prompt_len + 1)),
                       answer_ids=tuple(range(first_token, first_token + n_answer)),
                       answered=correct if answered is None else answered, correct=correct)


def hand_made():
    # (id, base prompt len, tuned prompt len, T_base, T_tuned, base correct, tuned correct, tuned answered)
    rows = [
        ("p0", 5, 5, 10, 10, True, True, True),     # survives everything
        ("p1", 5, 5, 10, 10, False, True, True),    # base wrong (but answered)
        ("p2", 5, 5, 10, 10, True, False, False),   # tuned gave no answer
        ("p3", 5, 6, 10, 10, True, True, True),     # prompt lengths differ
        ("p4", 5, 5, 2, 2, True, True, True),       # mean 2 below beta*refer
        ("p5", 5, 5, 30, 30, True, True, True),     # mean 30 above gamma*refer
        ("p6", 5, 5, 6, 14, True, True, True),      # mean 10 but |6-14|/10 = 0.8 > delta
        ("p7", 5, 5, 12, 8, True, True, True),      # mean 10, |12-8|/10 = 0.4 <= delta
    ]
    base = [ans(r[0], r[1], r[3], r[5], answered=True, first_token=100) for r in rows]
    tuned = [ans(r[0], r[2], r[4], r[6], answered=r[7], first_token=500) for r in rows]
    return base, tuned


def test_every_filter_on_hand_made_records():
    base, tuned = hand_made()
    sel = select_pair(base, tuned, [0.5, 0.03], base_name="B", tuned_name="T", dataset="toy")
    rep = sel[0.5].report
    # both-correct: p0 p3 p4 p5 p6 p7; T_base 10,10,2,30,6,12 (mean 70/6); T_tuned 10,10,2,30,14,8 (mean 74/6)
    assert rep.mean_t_base == pytest.approx(70 / 6)
    assert rep.mean_t_tuned == pytest.approx(74 / 6)
    assert rep.refer == pytest.approx(70 / 6)
    # band [0.5, 1.5] * 11.67 = [5.83, 17.5]
    assert rep.counts == {"problems": 8, "answered_base": 8, "answered_tuned": 7, "answered": 7,
                          "correct_base": 7, "correct_tuned": 7, "both_correct": 6, "equal_prompt_len": 5,
                          "length_band": 3, "length_ratio": 2, "sampled": 2}
    assert sel[0.5].base.problem_ids == ("p0", "p7") == sel[0.5].tuned.problem_ids
    assert rep.t_cut == 5 == math.floor(0.5 * 70 / 6)
    assert sel[0.03].report.t_cut == 1  # floor(0.35) = 0 -> at least 1
    assert sel[0.03].base.problem_ids == sel[0.5].base.problem_ids  # the sample does not depend on alpha
    assert (rep.alpha, rep.base, rep.tuned, rep.dataset, rep.config.seed) == (0.5, "B", "T", "toy", 42)


def test_inputs_are_prompt_plus_own_answer_truncated():
    base, tuned = hand_made()
    sel = select_pair(base, tuned, [0.5])[0.5]
    p7_base = base[7].prompt_ids + base[7].answer_ids[:5]
    p7_tuned = tuned[7].prompt_ids + tuned[7].answer_ids[:5]
    assert sel.base.input_ids[1] == p7_base and sel.tuned.input_ids[1] == p7_tuned
    assert sel.base.prompt_lengths == (5, 5) and sel.base.t_cut == 5
    ids, attn, loss = sel.base.tensors(pad_token_id=0)
    assert loss.sum(dim=1).tolist() == [5, 5]  # the loss mask covers exactly the T_cut answer tokens
    assert ids[0, 5:10].tolist() == [100, 101, 102, 103, 104]


def test_short_answers_are_used_whole_and_counted():
    base = [ans("a", 3, 4), ans("b", 3, 10)]
    tuned = [ans("a", 3, 5), ans("b", 3, 9)]
    # refer = min(7, 7) = 7; band [3.5, 10.5]; ratios 0.22, 0.105
    sel = select_pair(base, tuned, [1.0])[1.0]
    assert sel.report.t_cut == 7
    assert (sel.report.short_base, sel.report.short_tuned) == (1, 1)
    assert len(sel.base.input_ids[0]) == 3 + 4 and len(sel.base.input_ids[1]) == 3 + 7


@pytest.mark.parametrize("alpha, refer, expected", [
    (0.03, 100, 3), (0.1, 9, 1), (0.5, 70 / 6, 5), (0.3, 19.9, 5), (0.5, 1000, 500), (1.0, 3.999, 3)])
def test_t_cut(alpha, refer, expected):
    assert t_cut_for(alpha, refer) == expected


def test_t_cut_rejects_bad_alpha():
    with pytest.raises(ValueError, match="alpha must be > 0"):
        t_cut_for(0, 10)
    with pytest.raises(ValueError, match="every alpha must be a positive number"):
        select_pair(*hand_made(), [0.1, -1])


def test_sampling_is_seeded_subset_in_dataset_order():
    base = [ans(f"q{i}", 4, 10) for i in range(50)]
    tuned = [ans(f"q{i}", 4, 11) for i in range(50)]
    cfg = SelectionConfig(n_samples=10, seed=42)
    a = select_pair(base, tuned, [0.1], config=cfg)[0.1]
    b = select_pair(base, tuned, [0.1], config=cfg)[0.1]
    c = select_pair(base, tuned, [0.1], config=SelectionConfig(n_samples=10, seed=7))[0.1]
    assert a.report.counts["sampled"] == 10 and a.report.counts["length_ratio"] == 50
    assert a.base.problem_ids == b.base.problem_ids  # deterministic
    assert a.base.problem_ids != c.base.problem_ids  # the seed matters
    order = [int(p[1:]) for p in a.base.problem_ids]
    assert order == sorted(order) and len(set(order)) == 10


@pytest.mark.parametrize("step, base, tuned, config", [
    ("answered", [ans("a", 3, 5, correct=False, answered=False)], [ans("a", 3, 5)], SelectionConfig()),
    ("both_correct", [ans("a", 3, 5, correct=False, answered=True)], [ans("a", 3, 5)], SelectionConfig()),
    ("equal_prompt_len", [ans("a", 3, 5)], [ans("a", 4, 5)], SelectionConfig()),
    ("length_band", [ans("a", 3, 10), ans("b", 3, 20)], [ans("a", 3, 10), ans("b", 3, 20)],
     SelectionConfig(beta=0.9, gamma=0.9)),  # refer 15, band [13.5, 13.5]
    ("length_ratio", [ans("a", 3, 10)], [ans("a", 3, 12)], SelectionConfig(delta=0.0)),
])
def test_empty_after_any_filter_names_the_filter(step, base, tuned, config):
    with pytest.raises(EmptySelectionError, match=f"after '{step}'") as err:
        select_pair(base, tuned, [0.1], config=config)
    assert err.value.step == step and err.value.report.stopped_at == step
    assert err.value.report.counts[step] == 0
    assert list(err.value.report.counts)[-1] == step  # counts up to the failing step


def test_mismatched_answer_lists_rejected():
    with pytest.raises(ValueError, match="same problems in the same order"):
        select_pair([ans("a", 3, 5)], [ans("b", 3, 5)], [0.1])


def test_report_to_dict_is_plain():
    rep = select_pair(*hand_made(), [0.5])[0.5].report
    d = rep.to_dict()
    assert d["counts"]["sampled"] == 2 and d["seed"] == 42 and d["config"]["delta"] == 0.5
    assert d["t_cut"] == 5 and d["alpha"] == 0.5
    assert (d["beta"], d["gamma"], d["n_samples"]) == (0.5, 1.5, 100)
    import json

    assert json.loads(json.dumps(d)) == d


# ---------------------------------------------------------------- oracle: the same protocol in pandas

def _oracle(rows, beta, gamma, delta):
    df = pd.DataFrame(rows, columns=["id", "pb", "pt", "tb", "tt", "cb", "ct"])
    both = df[df.cb & df.ct]
    if both.empty:
        return None
    refer = min(both.tb.mean(), both.tt.mean())
    s = both[both.pb == both.pt]
    mean = (s.tb + s.tt) / 2
    s = s[(mean >= beta * refer) & (mean <= gamma * refer)]
    s = s[(s.tb - s.tt).abs() <= delta * (s.tb + s.tt) / 2]
    return refer, list(s.id)


row = st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 40), st.integers(1, 40),
                st.booleans(), st.booleans())


@settings(max_examples=150, deadline=None)
@given(st.lists(row, min_size=1, max_size=30), st.floats(0.1, 1.0), st.floats(1.0, 3.0), st.floats(0.0, 1.0))
def test_matches_pandas_oracle(rows, beta, gamma, delta):
    rows = [(f"r{i}",) + r for i, r in enumerate(rows)]
    base = [ans(r[0], r[1], r[3], r[5]) for r in rows]
    tuned = [ans(r[0], r[2], r[4], r[6]) for r in rows]
    expected = _oracle(rows, beta, gamma, delta)
    cfg = SelectionConfig(n_samples=1000, beta=beta, gamma=gamma, delta=delta)
    if expected is None or not expected[1]:
        with pytest.raises(EmptySelectionError):
            select_pair(base, tuned, [0.3], config=cfg)
        return
    sel = select_pair(base, tuned, [0.3], config=cfg)[0.3]
    assert sel.report.refer == pytest.approx(expected[0])
    assert list(sel.base.problem_ids) == expected[1]
    assert sel.report.t_cut == max(math.floor(0.3 * expected[0]), 1)


@pytest.mark.perf
def test_bench_select_pair_5000_problems(benchmark):
    """Paired selection over a MATH-sized answer set (5000 problems, 4 alphas)."""
    import random as _random

    rng = _random.Random(0)
    base = [ans(f"q{i}", 20, rng.randint(50, 400), rng.random() < 0.6) for i in range(5000)]
    tuned = [ans(f"q{i}", 20, rng.randint(50, 400), rng.random() < 0.7) for i in range(5000)]
    out = benchmark(select_pair, base, tuned, [0.03, 0.1, 0.3, 0.5])
    assert out[0.5].report.counts["sampled"] == 100
