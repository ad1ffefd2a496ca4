"""The suite's wiring: verdict → pytest outcome (pass, fail with interval, xfail, --strict), and
options → selected/skipped pairs with reasons."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

from eapbench.suite.claims import ClaimVerdict

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str, rel: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / rel)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


claims_suite = _load("suite_test_claims", "suites/test_claims.py")
suite_conftest = _load("suite_conftest", "suites/conftest.py")


def fake_suite(status: str, strict: bool = False, known: str | None = None):
    v = ClaimVerdict("C1", status, "C1 Activation Intensity 1 -> 1.1: intensity +10.0% [-2.0%, +20.0%], n=50", "increase")
    claims = types.SimpleNamespace(deviation=lambda pair, claim: known)
    runner = types.SimpleNamespace(verdict=lambda *a: v, claims=claims)
    case = types.SimpleNamespace(pair="p", dataset="d", alpha=0.3, id="p-d-a0.3")
    return types.SimpleNamespace(runner=runner, strict=strict), case


def test_pass_returns():
    claims_suite.check(*fake_suite("pass"), "C1")


def test_fail_fails_with_interval():
    with pytest.raises(pytest.fail.Exception, match=r"p-d-a0.3: .*\[-2.0%, \+20.0%\]"):
        claims_suite.check(*fake_suite("fail"), "C1")


def test_inconclusive_xfails_with_numbers_and_fails_under_strict():
    with pytest.raises(pytest.xfail.Exception, match=r"\+10.0% \[-2.0%, \+20.0%\], n=50"):
        claims_suite.check(*fake_suite("inconclusive"), "C1")
    with pytest.raises(pytest.fail.Exception, match="inconclusive \\(--strict\\)"):
        claims_suite.check(*fake_suite("inconclusive", strict=True), "C1")


def test_not_judged_skips_with_numbers():
    with pytest.raises(pytest.skip.Exception, match=r"\+10.0%"):
        claims_suite.check(*fake_suite("not_judged"), "C1")


class Config:
    def __init__(self, **opts):
        self.opts = {"--pairs": "mini", "--pair": [], "--alphas": None, "--datasets": None, "--device": "cpu",
                     "--n-samples": 100, "--granularity": "qkv", "--dtype": None, "--n-resamples": 9999,
                     "--batch-size": 8, "--gen-batch-size": None, "--threads": 1, "--limit": None, "--data-dir": None, "--regen-baselines": False,
                     "--report": None, "--no-suite-cache": False, **opts}

    def getoption(self, name):
        return self.opts[name]

    def getini(self, name):
        return False


def test_options_select_and_skip_with_reasons(tmp_path):
    for side in ("b", "c"):
        (tmp_path / side).mkdir()
        (tmp_path / side / "config.json").write_text("{}")
    user = f"name=u,base={tmp_path / 'b'},tuned={tmp_path / 'c'},method=dpo,template=chat"
    suite = suite_conftest.build_suite(Config(**{"--pairs": "paper", "--pair": [user, "name=h,base=x/b,tuned=x/c,method=grpo"],
                                                 "--alphas": "0.1,0.3"}))
    assert "`hf download x/b`" in suite.skipped["h"]  # a user pair whose hub weights are not here
    # on this CPU machine the paper pairs cannot run: each is skipped with the GPU reason and the command
    for pid in ("deepseek-math-grpo", "mistral-ppo", "distill-qwen-grpo", "qwen25-dpo"):
        assert "CUDA GPU" in suite.skipped[pid] and "--pairs paper --device cuda" in suite.skipped[pid]
    assert "not selected (--pairs paper)" in suite.skipped["mini-grpo"]
    user = suite.runner.pairs["u"]
    assert [p.id for p in suite.selected] == ["u"] and suite.runner.cases(user) == [("gsm8k", 0.1), ("gsm8k", 0.3)]
    assert all(p.id != "deepseek-math-grpo" for p in suite.selected)


def test_bad_pair_option_is_a_usage_error():
    with pytest.raises(pytest.UsageError, match="unknown method"):
        suite_conftest.build_suite(Config(**{"--pair": ["name=u,base=a/b,tuned=a/c,method=magic"]}))
    with pytest.raises(pytest.UsageError, match="unknown pair 'minis'"):
        suite_conftest.build_suite(Config(**{"--pairs": "minis"}))


def test_known_deviation_is_an_xfail_that_cannot_go_stale():
    with pytest.raises(pytest.xfail.Exception, match=r"known deviation.*\(why\).*\[-2.0%, \+20.0%\]"):
        claims_suite.check(*fake_suite("fail", known="why"), "C1")
    with pytest.raises(pytest.fail.Exception, match=r"p-d-a0.3: .*\[-2.0%"):
        claims_suite.check(*fake_suite("fail", strict=True, known="why"), "C1")
    with pytest.raises(pytest.fail.Exception, match="listed under known_deviations.*remove that entry"):
        claims_suite.check(*fake_suite("pass", known="why"), "C1")
