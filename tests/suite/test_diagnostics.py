"""The report's faithfulness, stability and robustness sections (eapbench.suite.diagnostics)."""

from __future__ import annotations

from eapbench.suite import diagnostics as D
from eapbench.suite.report import write_report


def _verdict(status, rel=0.1, lo=-0.05, hi=0.2):
    return {"status": status, "details": {"result": {"rel_change": rel, "ci_low": lo, "ci_high": hi}}}


def _result(alpha=0.3, robustness=None, faithfulness=None, stability=None):
    extra = {}
    if faithfulness is not None:
        extra["faithfulness"] = faithfulness
    if stability is not None:
        extra["stability"] = stability
    r = {"pair": "p", "method": "grpo", "method_class": "online", "family": "llama", "group": "mini",
         "dataset": "synthetic", "alpha": alpha, "metrics": {}, "counts": {}, "verdicts": {}, "selection": {},
         "extra": extra, "figures": {}, "provenance": {"models": {"base": {"path": "zoo:sft"}}}}
    if robustness is not None:
        r["robustness"] = robustness
    return r


CURVE = {"percents": [1, 10, 100], "f_signed": [0.0, 0.4, 1.0], "f_abs": [0.1, 0.5, 1.0], "cpr": 0.61, "cmd": 0.3}


def test_robustness_table_marks_settings_that_change_a_verdict():
    rob = {"qkv/EAP": {"C1": _verdict("pass"), "C3": _verdict("inconclusive")},
           "head/EAP": {"C1": _verdict("fail", -0.2, -0.3, -0.1), "C3": _verdict("inconclusive")},
           "qkv/EAP-IG": {"C1": _verdict("pass"), "C3": _verdict("inconclusive")}}
    md = D.robustness_markdown([_result(robustness=rob)])
    c1 = next(line for line in md.splitlines() if "| C1 |" in line)
    c3 = next(line for line in md.splitlines() if "| C3 |" in line)
    assert "**differs**" in c1 and "fail -20.0% [-30.0, -10.0]" in c1 and "**differs**" not in c3
    assert "1 of 2 claim verdicts depend on the setting" in md
    assert D.robustness_markdown([_result()]) is None  # nothing measured under other settings: no section


def test_faithfulness_table_and_errors():
    md = D.faithfulness_markdown([_result(faithfulness={"base": CURVE, "tuned": {"error": "no head support"}})])
    base = next(line for line in md.splitlines() if "| base |" in line)
    assert "zoo:sft" in base and "0.610" in base and "0.300" in base and "0.40" in base  # f(10%), signed
    assert "not computed: no head support" in md
    assert D.faithfulness_at(CURVE, 10.0, "abs") == 0.5 and D.faithfulness_at(CURVE, 5.0) is None


def test_stability_table():
    st = {"base": {"per_k": [{"percent": 5.0, "k": 3, "jaccard_mean": 0.5, "jaccard_low": 0.2, "jaccard_high": 1.0}]}}
    md = D.stability_markdown([_result(stability=st)])
    assert "| p / synthetic / α 0.3 | base | 5% | 3 | 0.500 [0.200, 1.000] |" in md


def test_report_writes_and_then_removes_the_sections(tmp_path):
    rob = {"qkv/EAP": {"C1": _verdict("pass")}, "head/EAP": {"C1": _verdict("pass")}}
    paths = write_report([_result(robustness=rob, faithfulness={"base": CURVE})], tmp_path)
    names = {p.name for p in paths["diagnostics"]}
    assert names == {"robustness.md", "faithfulness.md", "fig-faithfulness.png"}
    assert all((tmp_path / n).is_file() for n in names)
    write_report([_result()], tmp_path)  # a later report without them: the stale files go
    assert not any((tmp_path / n).exists() for n in names)
