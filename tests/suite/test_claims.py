"""Claims as data: the expectations file, judging intervals, and the cross-pair C6."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from eapbench.suite import claims as C

SUITE = Path(__file__).resolve().parents[2] / "suites" / "test_claims.py"


def res(lo, hi, rel=None, n=50, base=1.0):
    rel = (lo + hi) / 2 if rel is None else rel
    return {"base": base, "tuned": base * (1 + rel), "rel_change": rel, "ci_low": lo, "ci_high": hi,
            "n": n, "n_resamples": 999, "seed": 0, "confidence": 0.95, "metric": "m"}


@pytest.fixture(scope="module")
def claims():
    return C.load_claims()


def test_expectations_file_states_the_paper_claims(claims):
    assert [c.id for c in claims] == ["C1", "C2", "C3", "C4", "C5", "C6"]
    assert claims.method_class("grpo") == claims.method_class("ppo") == "online"
    assert claims.method_class("dpo") == "offline"
    online = {c.id: c.expectation("online") for c in claims}
    assert online == {"C1": "increase", "C2": "increase", "C3": "decrease", "C4": "increase",
                      "C5": "increase", "C6": None}
    assert claims.get("C3").expectation("offline") == "decrease"
    assert claims.get("C6").expectation("offline") == "exception"
    assert claims.metrics == ("intensity", "complexity", "kurtosis", "diversity", "output_entropy")


def test_every_claim_has_a_suite_test(claims):
    tree = ast.parse(SUITE.read_text())
    marked = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            for d in node.decorator_list:
                if isinstance(d, ast.Call) and getattr(d.func, "attr", "") == "claim":
                    marked[d.args[0].value] = node.name
    assert marked == {c.id: f"test_{c.test}" for c in claims}


def test_metric_names_are_known_to_stats(claims):
    from eapbench.analysis import stats

    assert set(claims.metrics) <= set(stats.NAMED_METRICS)


@pytest.mark.parametrize("kind, lo, hi, status", [
    ("increase", 0.01, 0.2, "pass"), ("increase", -0.2, -0.01, "fail"), ("increase", -0.1, 0.1, "inconclusive"),
    ("decrease", -0.3, -0.1, "pass"), ("decrease", 0.1, 0.3, "fail"), ("decrease", -0.1, 0.1, "inconclusive"),
    ("no_increase", -0.1, 0.3, "pass"), ("no_increase", -0.3, -0.1, "pass"), ("no_increase", 0.01, 0.3, "fail"),
])
def test_judge_directional(claims, kind, lo, hi, status):
    v = C.judge(claims.get("C1"), kind, res(lo, hi))
    assert v.status == status
    assert f"{100 * lo:+.1f}%" in v.message and f"{100 * hi:+.1f}%" in v.message  # the interval is in the message


@pytest.mark.parametrize("lo, hi, status", [(-0.04, 0.04, "pass"), (0.06, 0.2, "fail"), (-0.3, -0.06, "fail"),
                                            (-0.02, 0.08, "inconclusive")])
def test_judge_unchanged_band(claims, lo, hi, status):
    c4 = claims.get("C4")
    assert c4.band == 0.05
    assert C.judge(c4, "unchanged", res(lo, hi)).status == status


def test_judge_too_few_samples_and_none(claims):
    for kind in ("increase", "no_increase", "unchanged"):
        assert C.judge(claims.get("C4"), kind, res(0.5, 0.9, n=3)).status == "inconclusive"
    v = C.judge(claims.get("C2"), "none", res(0.1, 0.2))
    assert v.status == "not_judged" and "+10.0%" in v.message


@given(st.floats(-2, 2), st.floats(0, 2))
def test_increase_verdict_follows_interval(lo, width):
    hi = lo + width
    v = C.judge(C.load_claims().get("C1"), "increase", res(lo, hi))
    expected = "pass" if lo > 0 else "fail" if hi < 0 else "inconclusive"
    assert v.status == expected


def _case(i_lo, i_hi, c_lo, c_hi, k_lo, k_hi):
    return {"intensity": res(i_lo, i_hi), "complexity": res(c_lo, c_hi), "kurtosis": res(k_lo, k_hi)}


def test_dpo_exception(claims):
    online = {"rl-a": _case(0.2, 0.4, 0.1, 0.3, -0.4, -0.2), "rl-b": _case(0.1, 0.3, 0.1, 0.3, -0.4, -0.2)}
    ok = _case(-0.05, 0.05, -0.1, 0.1, -0.3, -0.1)
    v = C.judge_dpo_exception(claims, ok, online)
    assert v.status == "pass" and v.details["below"] == ["rl-a", "rl-b"]
    # the online signature present -> fail
    assert C.judge_dpo_exception(claims, _case(0.05, 0.08, 0.1, 0.2, -0.3, -0.1), online).status == "fail"
    # kurtosis rises -> fail
    assert C.judge_dpo_exception(claims, _case(-0.05, 0.05, -0.1, 0.1, 0.1, 0.3), online).status == "fail"
    # C1 interval overlaps an online pair's -> inconclusive
    v = C.judge_dpo_exception(claims, _case(-0.05, 0.15, -0.1, 0.1, -0.3, -0.1), online)
    assert v.status == "inconclusive" and v.details["overlap"] == ["rl-b"]
    # C1 interval entirely above an online pair's -> fail
    v = C.judge_dpo_exception(claims, _case(0.35, 0.5, -0.1, 0.1, -0.3, -0.1), {"rl-b": online["rl-b"]})
    assert v.status == "fail" and v.details["above"] == ["rl-b"]
    # nothing to compare with -> inconclusive, saying so
    v = C.judge_dpo_exception(claims, ok, {})
    assert v.status == "inconclusive" and "no online-RL pair" in v.message


def test_malformed_expectations_are_named(tmp_path):
    f = tmp_path / "e.yaml"
    f.write_text("method_classes: {grpo: online}\nclaims:\n  C1: {test: t, metric: intensity, expect: {online: up}}\n")
    with pytest.raises(ValueError, match="C1 expects 'up'"):
        C.load_claims(f)
    with pytest.raises(FileNotFoundError, match="hand-written"):
        C.load_claims(tmp_path / "missing.yaml")
    with pytest.raises(KeyError, match="method 'rloo' has no class"):
        C.load_claims().method_class("rloo")


def test_known_deviations_are_read_and_validated(tmp_path, claims):
    for pair, entries in claims.known_deviations.items():
        assert set(entries) <= {c.id for c in claims} and all(entries.values())
    f = tmp_path / "e.yaml"
    f.write_text("method_classes: {grpo: online}\nclaims:\n  C1: {test: t, metric: intensity, expect: {online: increase}}\n"
                 "known_deviations: {p: {C9: why}}\n")
    with pytest.raises(ValueError, match="known_deviations must map"):
        C.load_claims(f)
    f.write_text("method_classes: {grpo: online}\nclaims:\n  C1: {test: t, metric: intensity, expect: {online: increase}}\n"
                 "known_deviations: {p: {C1: why}}\n")
    assert C.load_claims(f).deviation("p", "C1") == "why" and C.load_claims(f).deviation("p", "C2") is None


def test_known_deviations_per_attribution_setting(tmp_path, claims):
    """A setting with its own list (known_deviations_under) uses it; any other setting the paper's list."""
    head = "method_classes: {grpo: online}\nclaims:\n  C1: {test: t, metric: intensity, expect: {online: increase}}\n" \
           "  C3: {test: t3, metric: kurtosis, expect: {online: decrease}}\n"
    f = tmp_path / "e.yaml"
    f.write_text(head + "known_deviations: {p: {C1: paper}}\nknown_deviations_under: {qkv/EAP-IG: {p: {C3: ig}}}\n")
    cs = C.load_claims(f)
    assert cs.deviation("p", "C1") == "paper" and cs.deviation("p", "C1", "head/EAP") == "paper"
    assert cs.deviation("p", "C1", "qkv/EAP-IG") is None and cs.deviation("p", "C3", "qkv/EAP-IG") == "ig"
    f.write_text(head + "known_deviations_under: {qkv/EAP-IG: {p: {C9: why}}}\n")
    with pytest.raises(ValueError, match=r"known_deviations_under\[qkv/EAP-IG\] must map"):
        C.load_claims(f)
    assert "mini-ppo" in claims.known_deviations_under["qkv/EAP-IG"]  # the shipped file's EAP-IG entries
