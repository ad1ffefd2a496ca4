"""The suite's files come from its own checkout, wherever the package is installed (issue 15).

``pytest suites/`` reads and writes ``<checkout>/baselines`` (suites/conftest.py passes it); without a
checkout (``eapbench compare`` from anywhere) the hand-written expectations and paper reference come
from the copies shipped in the package, which must equal the checkout's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import eapbench
from eapbench.suite import locations as L

ROOT = Path(__file__).resolve().parents[2]

PROBE = r'''
import importlib.util, json, sys
from pathlib import Path
import eapbench
from eapbench.suite import baselines as B, claims as C
out = {"package": eapbench.__file__,
       "default": {"baselines": str(B.BASELINE_DIR), "expectations": str(C.EXPECTATIONS_FILE),
                   "claims_source": C.load_claims().source, "paper": str(B.PAPER_REFERENCE_FILE)}}
spec = importlib.util.spec_from_file_location("suite_conftest", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
sys.modules["suite_conftest"] = mod
spec.loader.exec_module(mod)
opts = json.loads(sys.argv[2])
class Config:
    def getoption(self, name):
        return opts[name]
    def getini(self, name):
        return False
suite = mod.build_suite(Config())
out["suite"] = {"baselines": str(suite.baselines), "module_baselines": str(B.BASELINE_DIR),
                "tolerances": str(B.TOLERANCES_FILE), "paper": str(B.PAPER_REFERENCE_FILE), "root": str(B.ROOT),
                "claims_source": suite.runner.claims.source,
                "path": str(B.baseline_path("mini-grpo", "synthetic", 0.3, root=suite.baselines)),
                "default_path": str(B.baseline_path("mini-grpo", "synthetic", 0.3))}
print(json.dumps(out))
'''


def test_suite_uses_its_checkout_when_the_package_is_installed_elsewhere(tmp_path):
    """A non-editable install: the package copied to a site-packages-like folder, run from outside any checkout."""
    from test_suite_wiring import Config

    site = tmp_path / "site-packages"
    shutil.copytree(Path(eapbench.__file__).parent, site / "eapbench",
                    ignore=shutil.ignore_patterns("__pycache__", "checkpoints"))
    (site / "eapbench" / "zoo" / "checkpoints").symlink_to(Path(eapbench.__file__).parent / "zoo" / "checkpoints")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", PROBE, str(ROOT / "suites" / "conftest.py"), json.dumps(Config().opts)],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(out["package"]).resolve().is_relative_to(site.resolve())  # really the copy
    # outside a checkout: expectations and paper reference from the copies shipped in the package
    packaged = site / "eapbench" / "suite" / "data"
    assert out["default"]["expectations"] == out["default"]["claims_source"] == str(packaged / "expectations.yaml")
    assert out["default"]["paper"] == str(packaged / "paper_reference.yaml")
    # the suite: everything from the checkout that holds suites/
    base = ROOT / "baselines"
    s = out["suite"]
    assert s["baselines"] == s["module_baselines"] == str(base)
    assert s["tolerances"] == str(base / "tolerances.yaml") and s["paper"] == str(base / "paper_reference.yaml")
    assert s["claims_source"] == str(base / "expectations.yaml") and s["root"] == str(ROOT)  # git commit of the checkout
    assert s["path"] == s["default_path"] == str(base / "mini-grpo" / "synthetic" / "alpha-0.3.json")


def test_checkout_is_found_from_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "co" / "baselines").mkdir(parents=True)
    (tmp_path / "co" / "suites").mkdir()
    (tmp_path / "co" / "baselines" / "expectations.yaml").write_text("claims: {}\n")
    (tmp_path / "co" / "deep" / "er").mkdir(parents=True)
    assert L.find_checkout(tmp_path / "co" / "deep" / "er") == tmp_path / "co"
    monkeypatch.chdir(tmp_path / "co" / "deep")
    assert L.baselines_dir() == tmp_path / "co" / "baselines"
    assert L.hand_written("expectations.yaml") == tmp_path / "co" / "baselines" / "expectations.yaml"
    # a hand-written file the checkout lacks: the packaged copy
    assert L.hand_written("paper_reference.yaml") == L.PACKAGED / "paper_reference.yaml"


@pytest.mark.parametrize("name", L.SHIPPED)
def test_packaged_copies_equal_the_checkouts_files(name):
    assert (L.PACKAGED / name).read_bytes() == (ROOT / "baselines" / name).read_bytes(), (
        f"eapbench/suite/data/{name} (shipped for `eapbench compare` outside a checkout) differs from "
        f"baselines/{name}; copy it: cp baselines/{name} eapbench/suite/data/{name}")
