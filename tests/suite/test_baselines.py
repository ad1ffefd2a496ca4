"""Stored baselines: round trip, corrupt files, tolerances, and that a perturbed value is caught."""

from __future__ import annotations

import copy
import json

import pytest

from eapbench.suite import baselines as B

STORED = sorted(B.BASELINE_DIR.glob("*/*/alpha-*.json"))


def record(**over):
    metrics = {"intensity": {"base": 1.10e-3, "tuned": 1.31e-3, "rel_change": 0.1909, "ci_low": 0.12,
                             "ci_high": 0.25, "n": 100},
               "kurtosis": {"base": 357.0, "tuned": 223.0, "rel_change": -0.375, "ci_low": -0.5,
                            "ci_high": -0.2, "n": 100}}
    r = B.make_record(pair="p", dataset="synthetic", alpha=0.3, metrics=metrics,
                      counts={"answered": 1000, "both_correct": 400, "sampled": 100},
                      config={"n_samples": 100, "seed": 42, "granularity": "qkv", "device": "cpu", "dtype": "float32"},
                      provenance={"git_commit": "abc", "device": "cpu", "dtype": "float32"})
    r.update(over)
    return r


def test_round_trip_and_path(tmp_path):
    path = B.baseline_path("mini-grpo", "synthetic", 0.3, root=tmp_path)
    assert path == tmp_path / "mini-grpo" / "synthetic" / "alpha-0.3.json"
    B.write_baseline(path, record())
    assert B.read_baseline(path) == json.loads(json.dumps(record()))
    assert B.compare(B.read_baseline(path), record(), B.load_tolerance("cpu", "float32")) == []


def test_corrupt_or_foreign_file_is_a_clear_error(tmp_path):
    p = tmp_path / "alpha-0.3.json"
    p.write_text("{not json")
    with pytest.raises(B.BaselineError, match="not valid JSON.*regenerate"):
        B.read_baseline(p)
    p.write_text(json.dumps({"schema": 99}))
    with pytest.raises(B.BaselineError, match="schema 99"):
        B.read_baseline(p)
    r = record()
    r["metrics"]["intensity"]["tuned"] = "high"
    p.write_text(json.dumps(r))
    with pytest.raises(B.BaselineError, match="metric 'intensity' must hold numbers"):
        B.read_baseline(p)


def test_tolerances_per_device_and_dtype(tmp_path):
    cpu = B.load_tolerance("cpu", "float32")
    gpu = B.load_tolerance("cuda:0", "bfloat16")
    assert cpu.key == "cpu-float32" and gpu.key == "cuda-bfloat16"
    assert gpu.value_rtol > cpu.value_rtol and gpu.change_atol > cpu.change_atol
    assert B.load_tolerance("xpu", "float8").key == "default"
    bad = tmp_path / "t.yaml"
    bad.write_text("cpu-float32: {value_rtol: x}\n")
    with pytest.raises(B.BaselineError, match="cpu-float32.*needs numeric counts_rtol"):
        B.load_tolerance("cpu", "float32", bad)
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(B.BaselineError, match="not valid YAML"):
        B.load_tolerance("cpu", "float32", bad)


def test_each_number_on_its_own_scale():
    """Values: relative. Changes and bounds: absolute in units of the change (a change near 0 gets the
    same slack as a large one). Histogram metrics: their own, wider scales."""
    tol = B.Tolerance(value_rtol=1e-4, value_atol=0.0, change_atol=5e-4, histogram_value_rtol=2e-3,
                      histogram_change_atol=3e-3)
    assert tol.allows("intensity", "base", 1.00009, 1.0) and not tol.allows("intensity", "base", 1.00011, 1.0)
    assert tol.allows("intensity", "ci_low", 0.0004, 0.0) and not tol.allows("intensity", "ci_low", 0.0006, 0.0)
    assert tol.allows("intensity", "rel_change", 10.0004, 10.0)  # not 1e-4 * 10 = 1e-3 either
    assert not tol.allows("intensity", "rel_change", 10.0006, 10.0)
    assert tol.allows("complexity", "ci_high", 0.0829, 0.0809) and not tol.allows("complexity", "ci_high", 0.085, 0.0809)
    assert tol.allows("complexity", "base", 1.0019, 1.0) and not tol.allows("complexity", "base", 1.0021, 1.0)
    assert "±0.0005 absolute" in tol.describe("kurtosis", "ci_low")
    assert "rtol=0.002 (histogram metric)" in tol.describe("complexity", "tuned")
    with pytest.raises(ValueError, match="no tolerance scale for field 'n'"):
        tol.bound("intensity", "n", 1.0)


def test_perturbed_value_beyond_tolerance_fails_naming_value_stored_and_tolerance():
    tol = B.load_tolerance("cpu", "float32")
    stored = record()
    within = copy.deepcopy(stored)
    within["metrics"]["intensity"]["tuned"] *= 1 + tol.value_rtol / 2
    assert B.compare(stored, within, tol) == []
    beyond = copy.deepcopy(stored)
    beyond["metrics"]["intensity"]["tuned"] *= 1 + 10 * tol.value_rtol
    problems = B.compare(stored, beyond, tol, where="baselines/p/synthetic/alpha-0.3.json")
    assert len(problems) == 1
    msg = problems[0]
    assert "intensity.tuned" in msg and f"{beyond['metrics']['intensity']['tuned']:.6g}" in msg
    assert "stored 0.00131" in msg and "rtol=0.0001, cpu-float32" in msg and "alpha-0.3.json" in msg
    counts = copy.deepcopy(stored)
    counts["counts"]["both_correct"] = 399
    assert any("count both_correct = 399 differs from stored 400" in p for p in B.compare(stored, counts, tol))


def test_verdict_changes_and_borderline_endpoints_are_said():
    tol = B.load_tolerance("cpu", "float32")
    stored = record()
    assert B.verdict_changes(stored, stored) == [] and B.borderline(stored, tol) == []
    near = copy.deepcopy(stored)
    near["metrics"]["intensity"]["ci_low"] = 0.0002  # within change_atol of 0
    assert B.compare(stored, near, tol) != []  # moved by 0.12: out of tolerance
    (line,) = B.borderline(near, tol)
    assert line.startswith("intensity.ci_low = +0.00020 is within tolerance") and "borderline" in line
    crossed = copy.deepcopy(near)
    crossed["metrics"]["intensity"]["ci_low"] = -0.0001
    (change,) = B.verdict_changes(near, crossed)
    assert "lies across +0" in change and "lay above it" in change
    # boundaries per metric: kurtosis judged against ±0.05 as well
    assert B.verdict_changes(stored, stored, {"kurtosis": (-0.05, 0.0)}) == []
    moved = copy.deepcopy(stored)
    moved["metrics"]["kurtosis"]["ci_high"] = -0.04
    assert any(c.startswith("kurtosis:") for c in B.verdict_changes(stored, moved, {"kurtosis": (-0.05, 0.0)}))


@pytest.mark.skipif(not STORED, reason="no stored baselines yet: create them with `pytest suites/ --regen-baselines`")
@pytest.mark.parametrize("path", STORED, ids=[str(p.relative_to(B.BASELINE_DIR)) for p in STORED])
def test_stored_baselines_catch_a_perturbation(path):
    """Each real stored baseline: itself passes; a value moved beyond its tolerance fails, named."""
    stored = B.read_baseline(path)
    tol = B.load_tolerance(stored["provenance"]["device"], stored["provenance"]["dtype"])
    assert B.compare(stored, stored, tol) == []
    for metric, values in stored["metrics"].items():
        for field in B.VALUE_FIELDS:
            s = float(values[field])
            moved = copy.deepcopy(stored)
            moved["metrics"][metric][field] = s + 2 * tol.bound(metric, field, s)
            problems = B.compare(moved, stored, tol, where=str(path))  # stored file perturbed, run unchanged
            assert len(problems) == 1, problems
            assert problems[0].startswith(f"{metric}.{field} = {s:.6g} differs from stored "
                                          f"{moved['metrics'][metric][field]:.6g}")
            assert tol.describe(metric, field) in problems[0]


def test_config_mismatch_is_reported():
    other = record(config={**record()["config"], "n_samples": 50})
    assert "n_samples: stored 100, this run 50" in B.config_mismatch(record(), other)
    assert B.config_mismatch(record(), record()) is None


def test_provenance_and_paper_reference():
    prov = B.provenance("cpu", "float32")
    assert {"git_commit", "versions", "created", "device", "dtype"} <= set(prov)
    assert prov["versions"]["torch"]
    pv = B.paper_values("deepseek-math-grpo", "math", 0.1)
    assert pv["intensity"][:2] == (1.10e-3, 1.31e-3)
    assert pv["intensity"][2] == pytest.approx((1.31e-3 - 1.10e-3) / 1.10e-3)
    assert pv["kurtosis"][2] < 0
    assert B.paper_values("qwen25-dpo", "college_math", 0.03) == {"complexity": (8.01e-2, 2.17e-1, pytest.approx(1.709, abs=1e-3))}
    assert B.paper_values("mini-grpo", "synthetic", 0.3) == {}


def test_config_mismatch_reads_a_missing_attribution_key_as_plain_eap():
    """Baselines stored before --method existed hold no "attribution" key: they are plain-EAP records."""
    from eapbench.suite.baselines import config_mismatch

    old = {"config": {"granularity": "qkv"}}
    assert config_mismatch(old, {"config": {"granularity": "qkv", "attribution": "eap"}}) is None
    why = config_mismatch(old, {"config": {"granularity": "qkv", "attribution": "eap-ig", "ig_steps": 5}})
    assert "attribution: stored 'eap', this run 'eap-ig'" in why and "ig_steps: stored None, this run 5" in why
