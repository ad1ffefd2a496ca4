"""scripts/gpu_check.py, the prepared GPU check, keeps working where there is no GPU: ``--device cpu
--quick`` runs every section's code path at toy sizes and writes its JSON; asking for CUDA where there
is none is a one-line error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"


def test_quick_cpu_run_covers_every_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    report = json.loads(out.read_text())
    sections = report["sections"]
    assert set(sections) == {"oracle", "smollm2", "shapes", "generation", "suite"}
    failed = {k: v.get("error") or v.get("summary") for k, v in sections.items() if not v.get("ok")}
    assert proc.returncode == 0 and not failed, (failed, proc.stdout[-3000:], proc.stderr[-3000:])
    assert report["quick"] and report["environment"]["device"] == "cpu"
    assert all(v["max_rel_error"] <= 1e-5 for v in sections["oracle"]["families"].values())
    rows = sections["shapes"]["rows"]
    assert {r["model"] for r in rows} == {"llama3-8b", "qwen2-7b"} and any(r["checkpointing"] for r in rows)
    for r in rows:
        assert r["attribute_peak"] > 0 and r["estimate"] > 0 and r["time_vs_bound"] > 0
    assert sections["generation"]["tokens_per_s"] > 0
    assert "wrote" in proc.stdout and "time_vs_bound=" in proc.stdout  # the printed table


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: run the real check instead")
def test_cuda_without_a_gpu_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cuda", "--out", str(tmp_path / "x.json")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "torch sees no CUDA device" in proc.stderr and "Traceback" not in proc.stderr
