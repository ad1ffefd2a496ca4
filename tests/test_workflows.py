"""The GitHub workflows: both pass actionlint (syntax, expressions, runner labels), and the CPU
workflow runs the README's contract as written -- the same set-up and test commands as .ci/run,
which is what this project's CI executes; its set-up resolves (pip --dry-run) and its test
commands collect."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
ACTIVATE = ". .venv/bin/activate && "


def actionlint() -> str:
    exe = shutil.which("actionlint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    assert exe, "actionlint is not installed: it comes with the test extra (pip install -e '.[test]')"
    return exe


@pytest.mark.parametrize("name", ["ci.yml", "gpu-claims.yml"])
def test_workflow_passes_actionlint(name):
    res = subprocess.run([actionlint(), "-config-file", str(ROOT / ".github" / "actionlint.yaml"), str(WORKFLOWS / name)],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr


def test_actionlint_catches_a_broken_expression(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text((WORKFLOWS / "ci.yml").read_text().replace("${{ github.ref }}", "${{ github.nosuchthing( }}"))
    res = subprocess.run([actionlint(), str(bad)], capture_output=True, text=True)
    assert res.returncode != 0 and "bad.yml" in res.stdout


def contract_commands() -> list[str]:
    """The README's first code block: the set-up command and the two test commands."""
    block = re.search(r"```\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip()]


def ci_workflow_commands() -> list[str]:
    steps = yaml.safe_load((WORKFLOWS / "ci.yml").read_text())["jobs"]["cpu"]["steps"]
    return [s["run"].strip().removeprefix(ACTIVATE) for s in steps if "run" in s]


def ci_run_commands() -> list[str]:
    lines = [l.strip() for l in (ROOT / ".ci" / "run").read_text().splitlines()]
    return [l for l in lines if l and not l.startswith(("#", "set ", "cd ")) and not l.startswith(". .venv")]


def test_cpu_workflow_runs_the_readme_contract_as_ci_does():
    readme = contract_commands()
    assert len(readme) == 3 and readme[1:] == ["pytest suites/", "pytest tests/"]
    assert ci_workflow_commands() == readme
    # .ci/run spells the venv step out on its own lines; the rest is the same command text
    run = ci_run_commands()
    assert run[0] == "python3 -m venv .venv"
    assert ["python3 -m venv .venv && . .venv/bin/activate && " + run[1], *run[2:]] == readme


def test_cpu_workflow_setup_resolves_and_test_commands_collect():
    setup = ci_workflow_commands()[0].split(" && ")
    pip = [c for c in setup if c.startswith("pip install")]
    assert pip, setup
    for cmd in pip:  # as written, without installing anything
        res = subprocess.run([sys.executable, "-m", *shlex.split(cmd)[:2], "--dry-run", "-q", *shlex.split(cmd)[2:]],
                             capture_output=True, text=True, cwd=ROOT, timeout=600)
        assert res.returncode == 0, f"{cmd}: {res.stderr[-2000:]}"
    for cmd in ci_workflow_commands()[1:]:
        res = subprocess.run([sys.executable, "-m", *cmd.split(), "--collect-only", "-q", "-p", "no:cacheprovider"],
                             capture_output=True, text=True, cwd=ROOT, timeout=600)
        assert res.returncode == 0, f"{cmd} --collect-only: {res.stdout[-2000:]}{res.stderr[-2000:]}"
        assert re.search(r"\d+ tests? collected", res.stdout), res.stdout[-500:]
