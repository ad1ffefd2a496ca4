"""Report layout: Table-1 Markdown, results JSON, figures, terminal summary lines."""

from __future__ import annotations

import json

import numpy as np

from eapbench.suite import report as R


def result(pair, method, alpha, rel, status="pass"):
    def m(base, r):
        return {"base": base, "tuned": base * (1 + r), "rel_change": r, "ci_low": r - 0.05, "ci_high": r + 0.05,
                "n": 100, "n_resamples": 999, "seed": 0, "confidence": 0.95, "metric": ""}
    metrics = {"intensity": m(1.1e-3, rel), "complexity": m(0.17, rel), "kurtosis": m(357.0, -0.3),
               "diversity": m(0.4, 0.07), "output_entropy": m(0.5, 0.2)}
    verdicts = {c: {"claim": c, "status": status, "message": f"{c} message", "expectation": "increase",
                    "details": {"result": metrics[k]}}
                for c, k in (("C1", "intensity"), ("C2", "complexity"), ("C3", "kurtosis"))}
    src, dst = ["input", "a0", "m0"], ["a0<q>", "a0<k>", "a0<v>", "m0", "logits"]
    mask = np.array([[1, 1, 1, 1, 1], [0, 0, 0, 1, 1], [0, 0, 0, 0, 1]], bool)
    g = np.random.default_rng(0)
    figures = {"sources": src, "destinations": dst, "edge_mask": mask.tolist(),
               "mean_abs_base": (g.random(mask.shape) * mask).tolist(),
               "mean_abs_tuned": (g.random(mask.shape) * mask).tolist(),
               "entropy_per_node_base": [0.5, 0.4, 0.0], "entropy_per_node_tuned": [0.6, 0.5, 0.0], "n": 100}
    return {"pair": pair, "method": method, "method_class": "online", "dataset": "math", "alpha": alpha,
            "metrics": metrics, "verdicts": verdicts, "counts": {"problems": 500, "sampled": 100},
            "selection": {"t_cut": 12, "refer": 120.5}, "config": {}, "provenance": {}, "figures": figures}


def test_markdown_table1_layout_and_paper_column():
    from eapbench.suite.baselines import paper_reference

    rows = [result("deepseek-math-grpo", "grpo", 0.1, 0.19), result("mini-grpo", "grpo", 0.3, 0.1, "fail")]
    md = R.markdown_table(rows, paper_reference())
    assert "| Pair | Method | Dataset | α | n | Act. Intens. | Info. Complex. | Dist. Kurt. |" in md
    assert "| deepseek-math-grpo | grpo | math | 0.1 | 100 | 1.10e-03 → 1.31e-03 (+19.0% [+14.0%, +24.0%]) **PASS**" in md
    assert "**FAIL**" in md
    # eapbench's relative change beside the paper's (+19.1% for DeepSeek-Math MATH a=0.1)
    assert "| deepseek-math-grpo | math | 0.1 | +19.0% | +19.1% |" in md
    assert "counts" in md and "problems 500, sampled 100" in md



def test_markdown_table_marks_known_deviations_in_every_column():
    row = result("mini-dpo", "dpo", 0.3, 0.5, "fail")
    row["verdicts"]["C1"]["known_deviation"] = "recorded"
    row["verdicts"]["C6"] = {"claim": "C6", "status": "fail", "message": "C6 message", "known_deviation": "recorded"}
    md = R.markdown_table([row])
    line1 = next(x for x in md.splitlines() if x.startswith("| mini-dpo | dpo |"))
    assert line1.count("**FAIL** (known deviation)") == 1  # C1 only: C2/C3 carry no known deviation
    line6 = next(x for x in md.splitlines() if x.startswith("| mini-dpo | math | 0.3 |"))
    assert line6.endswith("| **FAIL** (known deviation) |")

def test_summary_one_line_per_pair_and_claim():
    rows = [result("a", "grpo", 0.1, 0.2), result("a", "grpo", 0.3, 0.2), result("b", "grpo", 0.1, 0.2)]
    lines = R.summary_lines(rows, {"deepseek-math-grpo": "needs a CUDA GPU"})
    assert len(lines) == 2 * 3 + 1
    assert lines[0].startswith("a") and "C1" in lines[0] and "math a0.1 PASS +20.0% [+15.0%, +25.0%]" in lines[0]
    assert "math a0.3" in lines[0]
    assert lines[-1].startswith("deepseek-math-grpo") and "needs a CUDA GPU" in lines[-1]


def test_write_report_files(tmp_path):
    rows = [result("mini-grpo", "grpo", 0.3, 0.1), result("mini-dpo", "dpo", 0.3, -0.01)]
    paths = R.write_report(rows, tmp_path, skipped={"x": "why"})
    data = json.loads((tmp_path / "results.json").read_text())
    assert len(data["results"]) == 2 and data["skipped"] == {"x": "why"}
    assert "figures" not in data["results"][0]
    assert (tmp_path / "table1.md").read_text().count("mini-grpo") >= 3
    names = sorted(p.name for p in paths["figures"])
    assert names == sorted(["fig2-edge-change-mini-dpo-math-a0.3.png", "fig2-edge-change-mini-grpo-math-a0.3.png",
                            "fig3b-output-entropy-mini-dpo-math-a0.3.png", "fig3b-output-entropy-mini-grpo-math-a0.3.png",
                            "fig3a-diversity.png", "forest.png"])
    assert sorted(json.loads((tmp_path / "figure_data.json").read_text())) == ["mini-dpo-math-a0.3", "mini-grpo-math-a0.3"]
    for p in paths["figures"]:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000


def test_reused_folder_loses_the_previous_reports_files_but_keeps_foreign_ones(tmp_path):
    R.write_report([result("mini-grpo", "grpo", 0.3, 0.1), result("mini-dpo", "dpo", 0.3, -0.01)], tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "fig-user.png").write_bytes(b"png")
    (tmp_path / "sub").mkdir()
    R.write_report([result("mini-ppo", "ppo", 0.5, 0.1)], tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["results.json", "table1.md", "figure_data.json", "fig2-edge-change-mini-ppo-math-a0.5.png",
                            "fig3b-output-entropy-mini-ppo-math-a0.5.png", "fig3a-diversity.png", "forest.png",
                            "notes.txt", "fig-user.png", "sub"])  # no mini-grpo / mini-dpo figure left over
    assert "mini-grpo" not in (tmp_path / "table1.md").read_text()
    # a report without figures removes the earlier figures too (they would describe other results)
    R.write_report([result("mini-ppo", "ppo", 0.5, 0.1)], tmp_path, with_figures=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig-user.png", "figure_data.json", "notes.txt",
                                                         "results.json", "sub", "table1.md"]


def test_report_files_get_normal_permissions(tmp_path):
    import os
    import stat

    from eapbench.cache import atomic_write_text

    old = os.umask(0o022)
    try:
        paths = R.write_report([result("mini-grpo", "grpo", 0.3, 0.1)], tmp_path / "r")
        for p in (paths["json"], paths["markdown"], *paths["figures"]):
            assert stat.S_IMODE(p.stat().st_mode) == 0o644, p
        os.umask(0o077)
        assert stat.S_IMODE(atomic_write_text(tmp_path / "private.txt", "x").stat().st_mode) == 0o600
        os.chmod(tmp_path / "r" / "table1.md", 0o664)  # a replaced file keeps the mode it had
        R.write_report([result("mini-grpo", "grpo", 0.3, 0.1)], tmp_path / "r", with_figures=False)
        assert stat.S_IMODE((tmp_path / "r" / "table1.md").stat().st_mode) == 0o664
    finally:
        os.umask(old)


def test_partial_report_is_marked(tmp_path):
    rows = [result("mini-grpo", "grpo", 0.3, 0.1)]
    expected = ["mini-dpo-math-a0.3", "mini-grpo-math-a0.3", "mini-grpo-math-a0.5"]
    paths = R.write_report(rows, tmp_path, expected=expected, partial_reason="interrupted", with_figures=False)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["complete"] is False and paths["complete"] is False
    assert data["missing_cases"] == ["mini-dpo-math-a0.3", "mini-grpo-math-a0.5"]
    assert data["expected_cases"] == expected and data["partial_reason"] == "interrupted"
    first = (tmp_path / "table1.md").read_text().splitlines()[0]
    assert first.startswith("**PARTIAL: 2 of 3 cases not measured (interrupted): mini-dpo-math-a0.3, mini-grpo-math-a0.5")
    # all expected cases there: complete, no mark
    R.write_report(rows, tmp_path, expected=["mini-grpo-math-a0.3"], partial_reason="x", with_figures=False)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["complete"] is True and data["missing_cases"] == [] and "partial_reason" not in data
    assert not (tmp_path / "table1.md").read_text().startswith("**PARTIAL")
