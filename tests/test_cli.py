"""The eapbench command: compare end to end (pipeline and loader faked), pairs listing, zoo forwarding."""

from __future__ import annotations

import json
import sys
import types

import pytest

from eapbench import cli

from test_runner import fake  # noqa: F401  (fixture: pipeline and loader faked)


def test_compare_writes_report_and_exit_code(fake, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("EAPBENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "report"
    rc = cli.main(["compare", "--base", "tiny/base", "--tuned", "tiny/rl", "--dataset", "synthetic", "--alpha", "0.3",
                   "--method", "grpo", "--template", "mini", "--n-resamples", "200", "--report", str(out),
                   "--no-figures"])
    text = capsys.readouterr().out
    data = json.loads((out / "results.json").read_text())
    statuses = [v["status"] for v in data["results"][0]["verdicts"].values()]
    assert rc == (1 if "fail" in statuses else 0)
    assert set(data["results"][0]["verdicts"]) == {"C1", "C2", "C3", "C4", "C5"}
    assert "user-pair" in text and "C1 increase" in text and "report:" in text
    assert (out / "table1.md").is_file()
    assert fake.prepare_calls == [("tiny/base", "tiny/rl", "synthetic", (0.3,))]


def test_compare_missing_local_model_is_a_clear_error(tmp_path, capsys):
    rc = cli.main(["compare", "--base", str(tmp_path / "nope"), "--tuned", "org/x", "--dataset", "gsm8k",
                   "--alpha", "0.3"])
    assert rc == 2 and "no such folder" in capsys.readouterr().err


def test_compare_bad_method(capsys):
    rc = cli.main(["compare", "--base", "a/b", "--tuned", "a/c", "--dataset", "gsm8k", "--alpha", "0.3",
                   "--method", "magic"])
    assert rc == 2 and "unknown method 'magic'" in capsys.readouterr().err


def test_pairs_listing(capsys):
    assert cli.main(["pairs", "paper"]) == 0
    out = capsys.readouterr().out
    assert "deepseek-math-grpo" in out and "cannot run here" in out


def test_zoo_forwarding(monkeypatch):
    seen = []
    fake = types.ModuleType("eapbench.zoo.build")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "eapbench.zoo.build", fake)
    import eapbench.zoo as zoo

    monkeypatch.setattr(zoo, "build", fake, raising=False)
    assert cli.main(["zoo", "train", "--tiny", "--jobs", "1"]) == 0
    assert seen == [["--tiny", "--jobs", "1"]]
    assert cli.main(["zoo", "bake"]) == 2
    fake_eval = types.ModuleType("eapbench.zoo.evaluate")
    fake_eval.main = lambda argv: seen.append(("eval", argv)) or 0
    monkeypatch.setitem(sys.modules, "eapbench.zoo.evaluate", fake_eval)
    monkeypatch.setattr(zoo, "evaluate", fake_eval, raising=False)
    assert cli.main(["zoo", "eval", "--json"]) == 0
    assert seen[-1] == ("eval", ["--json"])
