"""The suite's wiring: verdict → pytest outcome (pass, fail with interval, xfail, --strict), and
options → selected/skipped pairs with reasons."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

from eapbench.suite.claims import ClaimVerdict
from eapbench.suite.measurement import RunConfig

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
    claims = types.SimpleNamespace(deviation=lambda pair, claim, setting=None: known)
    runner = types.SimpleNamespace(verdict=lambda *a: v, claims=claims, config=RunConfig())
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
                     "--report": None, "--no-suite-cache": False, "--regen-variant": False, "--shard": None,
                     "--device-map": None, "--max-memory": None, "--memory-budget": None,
                     "--backend": "hf", "--gen-token-budget": None, "--attribution": "eap", "--ig-steps": 5,
                     "--robustness": False, "--no-faithfulness": False, "--share-scores": False, **opts}

    def getoption(self, name):
        return self.opts[name]

    def getini(self, name):
        return False


def test_options_select_and_skip_with_reasons(tmp_path):
    for side in ("b", "c"):
        (tmp_path / side).mkdir()
        (tmp_path / side / "config.json").write_text("{}")
    user = f"name=u,base={tmp_path / 'b'},tuned={tmp_path / 'c'},method=dpo,template=chat"
    suite = suite_conftest.build_suite(Config(**{"--pairs": "paper", "--pair": [user], "--alphas": "0.1,0.3"}))
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


def test_a_pair_asked_for_by_name_that_cannot_run_is_a_usage_error(tmp_path):
    # a user pair (--pair) whose hub weights are not here: an error naming the pair, not a skip
    with pytest.raises(pytest.UsageError, match=r"--pair name=h,base=x/b,tuned=x/c,method=grpo: pair 'h' cannot "
                                                r"run here: needs weights of x/b \(`hf download x/b`\)"):
        suite_conftest.build_suite(Config(**{"--pairs": "none", "--pair": ["name=h,base=x/b,tuned=x/c,method=grpo"]}))
    # a registered pair named by id that needs a GPU
    with pytest.raises(pytest.UsageError, match=r"--pairs qwen25-dpo: pair 'qwen25-dpo' cannot run here: needs a "
                                                r"CUDA GPU.*--device cuda"):
        suite_conftest.build_suite(Config(**{"--pairs": "qwen25-dpo"}))
    # missing local folders: said once per path
    with pytest.raises(pytest.UsageError, match=r"pair 'x' cannot run here: needs a model at /no/such \(no such "
                                                r"folder\); fix the pair"):
        suite_conftest.build_suite(Config(**{"--pairs": "none",
                                             "--pair": ["name=x,base=/no/such,tuned=/no/such,method=grpo"]}))


@pytest.mark.parametrize("opts,match", [
    ({"--batch-size": 0}, r"--batch-size 0: must be >= 1"),
    ({"--threads": -1}, r"--threads -1: must be >= 0"),
    ({"--n-samples": 0}, r"--n-samples 0: must be >= 1"),
    ({"--n-resamples": 10}, r"--n-resamples 10: must be >= 100"),
    ({"--limit": 0}, r"--limit 0: must be >= 1"),
    ({"--alphas": "0.3,1.5"}, r"--alphas 1.5: an answer fraction alpha must be in \(0, 1\]"),
    ({"--alphas": "abc"}, r"--alphas 'abc': not a number"),
    ({"--datasets": "gsm9k"}, r"--datasets gsm9k: unknown dataset"),
    ({"--device": "tpu"}, r"--device 'tpu': unknown device"),
])
def test_bad_numbers_are_usage_errors(opts, match):
    with pytest.raises(pytest.UsageError, match=match):
        suite_conftest.build_suite(Config(**opts))


def test_backend_option_is_checked_and_reaches_the_run_config(monkeypatch):
    from eapbench.pipeline import generate as G

    with pytest.raises(pytest.UsageError, match=r"^--backend vllm: vLLM runs on CUDA GPUs only"):
        suite_conftest.build_suite(Config(**{"--backend": "vllm"}))
    with pytest.raises(pytest.UsageError, match=r"^--gen-token-budget 0: must be >= 1"):
        suite_conftest.build_suite(Config(**{"--gen-token-budget": 0}))
    suite = suite_conftest.build_suite(Config(**{"--backend": "auto", "--gen-token-budget": 2048}))
    assert suite.runner.config.backend == "hf" and suite.runner.config.gen_token_budget == 2048
    monkeypatch.setattr(G, "vllm_unavailable", lambda device="cuda": None)  # vLLM and a GPU, faked
    assert suite_conftest.build_suite(Config(**{"--backend": "vllm"})).runner.config.backend == "vllm"


def test_broken_weights_of_a_selected_pair_are_a_usage_error(tmp_path):
    import shutil

    from eapbench.zoo import checkpoint_path

    for side in ("b", "c"):
        shutil.copytree(checkpoint_path("sft"), tmp_path / side)
    w = tmp_path / "c" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    with pytest.raises(pytest.UsageError, match=r"the tuned model of pair 'u' has broken weights: .* is truncated"):
        suite_conftest.build_suite(Config(**{"--pairs": "none", "--pair": [
            f"name=u,base={tmp_path / 'b'},tuned={tmp_path / 'c'},method=grpo"]}))


def _collect_suite(*args: str):
    import os
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "suites"), "-q", "-p", "no:cacheprovider",
                           "--collect-only", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_suite_refuses_named_pairs_and_devices_it_cannot_use():
    r = _collect_suite("--pairs", "none", "--pair", "name=x,base=/no/such,tuned=/no/such,method=grpo", "--strict")
    assert r.returncode == 4, r.stdout[-2000:]  # pytest's usage error, not "95 skipped"
    assert "ERROR: --pair name=x,base=/no/such,tuned=/no/such,method=grpo: pair 'x' cannot run here" in r.stderr
    if not __import__("torch").cuda.is_available():
        r = _collect_suite("--pairs", "mini-grpo", "--device", "cuda")
        assert r.returncode == 4 and "ERROR: --device cuda: CUDA is not available here" in r.stderr
        assert len(r.stderr.strip().splitlines()) <= 3 and "Traceback" not in r.stderr + r.stdout


def test_known_deviation_is_an_xfail_that_cannot_go_stale():
    with pytest.raises(pytest.xfail.Exception, match=r"known deviation.*\(why\).*\[-2.0%, \+20.0%\]"):
        claims_suite.check(*fake_suite("fail", known="why"), "C1")
    with pytest.raises(pytest.fail.Exception, match=r"p-d-a0.3: .*\[-2.0%"):
        claims_suite.check(*fake_suite("fail", strict=True, known="why"), "C1")
    with pytest.raises(pytest.fail.Exception, match="listed under known_deviations.*remove that entry"):
        claims_suite.check(*fake_suite("pass", known="why"), "C1")


# --- issue 15: regeneration only with canonical settings; a non-canonical stored baseline is not skipped

def test_regen_with_other_settings_is_refused_before_measuring():
    opts = {"--pairs": "mini-grpo", "--alphas": "0.3", "--limit": 100, "--n-samples": 30, "--n-resamples": 199,
            "--regen-baselines": True}
    with pytest.raises(pytest.UsageError, match=r"n_samples: canonical 100, this run 30.*n_resamples: canonical "
                                                r"9999, this run 199.*limit: canonical 500, this run 100.*--regen-variant"):
        suite_conftest.build_suite(Config(**opts))
    for other in ({"--threads": 2}, {"--alphas": "0.2"}, {"--datasets": "gsm8k"}, {"--dtype": "bfloat16"},
                  {"--gen-batch-size": 8}, {"--batch-size": 4}):
        with pytest.raises(pytest.UsageError, match="canonical"):
            suite_conftest.build_suite(Config(**{"--pairs": "mini-grpo", "--regen-baselines": True, **other}))
    # restricting to the pair's own datasets / alphas, or naming its own values, stays canonical
    suite = suite_conftest.build_suite(Config(**{"--pairs": "mini-grpo,mini-dpo", "--alphas": "0.5", "--datasets": "synthetic",
                                                 "--limit": 500, "--dtype": "float32", "--regen-baselines": True}))
    assert suite.regen and not suite.noncanonical(suite_conftest.Case(suite.selected[0], "synthetic", 0.5))
    # --regen-variant: accepted, the run knows it is not canonical
    suite = suite_conftest.build_suite(Config(**{**opts, "--n-resamples": 9999, "--regen-variant": True}))
    assert set(suite.noncanonical(suite_conftest.Case(suite.selected[0], "synthetic", 0.3))) == {"n_samples", "limit"}


def _baseline_suite(tmp_path, *, regen=False, variant=False, **cfg):
    import json

    from eapbench.suite import pairs as P
    from eapbench.suite.claims import load_claims
    from eapbench.suite.measurement import RunConfig

    stored = json.loads((ROOT / "baselines/mini-grpo/synthetic/alpha-0.3.json").read_text())
    config = {**stored["config"], **cfg}
    m = types.SimpleNamespace(pair="mini-grpo", dataset="synthetic", alpha=0.3, metrics=stored["metrics"],
                              counts=stored["counts"], config=config, provenance=stored["provenance"])
    runner = types.SimpleNamespace(measure=lambda *a: m, config=RunConfig(**cfg), claims=load_claims())
    suite = suite_conftest.Suite(runner, (), {}, False, regen, None, baselines=tmp_path, regen_variant=variant)
    return suite, suite_conftest.Case(P.get_pair("mini-grpo"), "synthetic", 0.3)


def test_regen_variant_writes_beside_and_a_canonical_run_fails_on_a_noncanonical_baseline(tmp_path):
    baselines_suite = _load("suite_test_baselines", "suites/test_baselines.py")
    check = baselines_suite.test_matches_baseline
    canonical_file = tmp_path / "mini-grpo/synthetic/alpha-0.3.json"
    check(*_baseline_suite(tmp_path, regen=True))  # canonical regeneration: the canonical file
    before = canonical_file.read_bytes()
    check(*_baseline_suite(tmp_path, regen=True, variant=True, n_samples=30, limit=100))
    variant = tmp_path / "mini-grpo/synthetic/variants/limit-100_n_samples-30/alpha-0.3.json"
    assert variant.is_file() and canonical_file.read_bytes() == before  # beside, not over
    with pytest.raises(pytest.fail.Exception, match="non-canonical"):  # never over, even if asked directly
        check(*_baseline_suite(tmp_path, regen=True, n_samples=30, limit=100))
    assert canonical_file.read_bytes() == before
    check(*_baseline_suite(tmp_path, n_samples=30, limit=100))  # the same settings later: compared with the variant
    with pytest.raises(pytest.skip.Exception, match=r"n_resamples: canonical 9999, this run 999.*--regen-variant"):
        check(*_baseline_suite(tmp_path, n_resamples=999))  # other settings, no variant stored: not comparable
    # the old failure: a non-canonical file stored over the canonical one; a default run now fails on it
    canonical_file.write_bytes(variant.read_bytes())
    with pytest.raises(pytest.fail.Exception, match=r"is not canonical.*n_samples: stored 30, this run 100.*"
                                                    r"pytest suites/ --pairs mini-grpo --datasets synthetic --alphas 0.3 --regen-baselines"):
        check(*_baseline_suite(tmp_path))


# --- issue 15: -n N (pytest-xdist) and partial runs; real subprocess runs of the mini suite. They share the
# measurement cache ($EAPBENCH_CACHE): cheap once the mini pairs have been measured (about a minute cold).

MINI_CASES = sorted(f"{p}-synthetic-a{a}" for p in ("mini-grpo", "mini-ppo", "mini-dpo", "mini-grpo-t0.6")
                    for a in ("0.3", "0.5"))


def _run_suite(*args, cwd=ROOT, env_extra=None):
    import os
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "pytest", "suites/", "-p", "no:cacheprovider", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def _report_cases(folder):
    import json

    data = json.loads((folder / "results.json").read_text())
    return data, sorted(f"{r['pair']}-{r['dataset']}-a{r['alpha']:g}" for r in data["results"])


def test_xdist_run_prints_the_summary_and_writes_the_whole_report(tmp_path):
    import json

    pytest.importorskip("xdist")
    proc = _run_suite("-n", "2", "-k", "intensity", "--report", str(tmp_path / "rep"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "eapbench verdicts" in out and "mini-ppo             C1 increase" in out  # printed by the controller
    assert "mini-dpo             C6 exception" in out  # verdicts that workers computed reach the summary
    data, cases = _report_cases(tmp_path / "rep")
    assert cases == MINI_CASES and data["complete"] is True and data["missing_cases"] == []
    assert all(r["verdicts"] for r in data["results"])
    for r in data["results"]:  # zoo models recorded by name and weights hash, not this machine's folder
        models = r["provenance"]["models"]
        assert models["base"]["path"] == "zoo:sft" and models["tuned"]["path"] == "zoo:" + r["pair"][len("mini-"):]
        assert len(models["tuned"]["sha256"]["model.safetensors"]) == 64 and str(ROOT) not in json.dumps(models)
    assert "PARTIAL" not in out and not (tmp_path / "rep" / "table1.md").read_text().startswith("**PARTIAL")


def test_interrupted_or_deselected_run_writes_a_report_marked_partial(tmp_path):
    plugin = tmp_path / "plugins"
    plugin.mkdir()
    (plugin / "ctrl_c_after_first.py").write_text(
        "def pytest_runtest_teardown(item):\n    raise KeyboardInterrupt\n")
    proc = _run_suite("--pairs", "mini-grpo,mini-ppo", "-p", "ctrl_c_after_first", "--report", str(tmp_path / "rep"),
                      env_extra={"PYTHONPATH": str(plugin)})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]  # interrupted
    data, cases = _report_cases(tmp_path / "rep")
    # the first test (the mini-grpo a0.3 baseline check) measured mini-grpo at 0.3 (with a cold cache also at
    # 0.5, measured together; a warm cache loads only the case asked for), then Ctrl-C: mini-ppo is missing
    assert cases in (["mini-grpo-synthetic-a0.3"], ["mini-grpo-synthetic-a0.3", "mini-grpo-synthetic-a0.5"])
    missing = [c for c in ("mini-grpo-synthetic-a0.3", "mini-grpo-synthetic-a0.5", "mini-ppo-synthetic-a0.3",
                           "mini-ppo-synthetic-a0.5") if c not in cases]
    assert data["complete"] is False and data["missing_cases"] == missing
    assert data["partial_reason"].startswith("interrupted")
    head = f"PARTIAL: {len(missing)} of 4 cases not measured (interrupted"
    assert (tmp_path / "rep" / "table1.md").read_text().startswith("**" + head)
    assert head in out and "-- PARTIAL" in out

    proc = _run_suite("--pairs", "mini-grpo,mini-ppo", "-k", "mini-ppo", "--report", str(tmp_path / "rep2"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    data, cases = _report_cases(tmp_path / "rep2")
    assert cases == ["mini-ppo-synthetic-a0.3", "mini-ppo-synthetic-a0.5"]
    assert data["complete"] is False
    assert data["missing_cases"] == ["mini-grpo-synthetic-a0.3", "mini-grpo-synthetic-a0.5"]
    assert "deselected (-k/-m)" in data["partial_reason"] and "PARTIAL: 2 of 4 cases" in out


def test_shards_merged_equal_one_xdist_run(tmp_path):
    """Issue 11: `--shard 1/2` and `--shard 2/2` (CI matrix jobs, array tasks) merged with
    `eapbench report merge` give the 8 mini cases of one `-n 2` run, values and verdicts equal."""
    import json

    from eapbench import cli

    pytest.importorskip("xdist")
    whole = _run_suite("-n", "2", "--report", str(tmp_path / "all"))
    assert whole.returncode == 0, (whole.stdout + whole.stderr)[-3000:]
    shards = [_run_suite("--shard", f"{i}/2", "--report", str(tmp_path / f"s{i}")) for i in (1, 2)]
    for proc in shards:
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
        assert "skipped: in shard" in proc.stdout
    assert cli.main(["report", "merge", str(tmp_path / "s1"), str(tmp_path / "s2"), "--out", str(tmp_path / "m")]) == 0
    a, a_cases = _report_cases(tmp_path / "all")
    m, m_cases = _report_cases(tmp_path / "m")
    assert a_cases == m_cases == MINI_CASES and a["complete"] and m["complete"]
    by_case = lambda d: {(r["pair"], r["alpha"]): r for r in d["results"]}
    for key, r in by_case(a).items():
        other = by_case(m)[key]
        assert other["metrics"] == r["metrics"] and other["counts"] == r["counts"]
        assert {c: v["status"] for c, v in other["verdicts"].items()} == {c: v["status"] for c, v in r["verdicts"].items()}
    assert m["merged_from"] == [str(tmp_path / "s1"), str(tmp_path / "s2")]
    assert not any("--shard" in why for why in m["skipped"].values())
    assert (tmp_path / "m" / "forest.png").is_file()
    figs = json.loads((tmp_path / "m" / "figure_data.json").read_text())  # every case's Fig. 2/3b redrawn
    assert sorted(figs) == MINI_CASES and len(list((tmp_path / "m").glob("fig2-edge-change-*.png"))) == 8
