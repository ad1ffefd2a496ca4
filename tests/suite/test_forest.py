"""The forest plot and Fig. 3a: what each row shows, the paper's direction, and axes that show 1-3%."""

from __future__ import annotations

import math

import matplotlib.image as mpimg

from eapbench.suite.claims import load_claims
from eapbench.suite.forest import diversity_plot, expected_region, forest_plot, forest_rows


def result(pair, alpha, rel, lo, hi, status, kind="increase", known=None, div=(0.95, 0.97)):
    res = {"base": 1.0, "tuned": 1.0 + rel, "rel_change": rel, "ci_low": lo, "ci_high": hi, "n": 50}
    return {"pair": pair, "dataset": "synthetic", "alpha": alpha,
            "metrics": {"intensity": res, "diversity": {"base": div[0], "tuned": div[1],
                                                        "rel_change": div[1] / div[0] - 1, "ci_low": -0.01,
                                                        "ci_high": 0.05, "n": 50}},
            "verdicts": {"C1": {"status": status, "expectation": kind, "known_deviation": known,
                                "details": {"result": res}},
                         "C6": {"status": "fail", "expectation": "exception", "details": {"c1": {}}}}}


RESULTS = [result("b-pair", 0.5, 0.1, 0.05, 0.2, "pass"), result("a-pair", 0.3, -0.2, -0.3, -0.1, "fail", known="x"),
           result("a-pair", 0.1, 0.0, -0.1, 0.1, "inconclusive", kind="unchanged")]


def test_rows_per_claim_sorted_with_verdicts_and_known_deviations():
    rows = forest_rows(RESULTS)
    assert list(rows) == ["C1"]  # C6 has no single interval
    labels = [r["label"] for r in rows["C1"]]
    assert labels == ["a-pair · synthetic · α 0.1", "a-pair · synthetic · α 0.3", "b-pair · synthetic · α 0.5"]
    assert [r["status"] for r in rows["C1"]] == ["inconclusive", "fail", "pass"]
    assert [r["known"] for r in rows["C1"]] == [False, True, False]
    assert rows["C1"][1]["low"] == -0.3 and rows["C1"][1]["high"] == -0.1


def test_expected_region_follows_the_claim_kind_and_band():
    assert expected_region("increase", 0.05) == (0.0, math.inf)
    assert expected_region("decrease", 0.05) == (-math.inf, 0.0)
    assert expected_region("unchanged", 0.05) == (-0.05, 0.05)
    assert expected_region("no_increase", 0.02) == (-math.inf, 0.02)
    assert expected_region("none", 0.05) is None


def test_plots_are_written(tmp_path):
    p = forest_plot(RESULTS, tmp_path / "forest.png", load_claims())
    img = mpimg.imread(p)
    assert img.shape[0] > 200 and img.shape[1] > 400
    assert forest_plot([], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
    assert diversity_plot(RESULTS, tmp_path / "fig3a.png").is_file()


def test_fig3a_axis_shows_one_percent_differences(tmp_path, monkeypatch):
    """A 1% diversity difference must take a visible share of the axis (the paper's effects are 1-3%)."""
    import matplotlib.figure

    seen = {}
    real_savefig = matplotlib.figure.Figure.savefig

    def spy(fig, *a, **k):
        seen["ylim"] = fig.axes[0].get_ylim()
        return real_savefig(fig, *a, **k)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    diversity_plot([result("p", 0.3, 0, 0, 0, "pass", div=(0.960, 0.9696))], tmp_path / "f.png")
    lo, hi = seen["ylim"]
    assert lo > 0.5 and (0.9696 - 0.960) / (hi - lo) > 0.3
