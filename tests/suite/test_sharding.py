"""Dividing a run (eapbench.suite.sharding) and joining its reports (eapbench.suite.merge)."""

from __future__ import annotations

import copy
import json

import pytest

from eapbench import cli
from eapbench.suite import options as O
from eapbench.suite import pairs as P
from eapbench.suite.merge import MergeError, merge_reports
from eapbench.suite.report import read_report, write_report
from eapbench.suite.sharding import parse_shard, shard_pairs, worker_gpus


def test_parse_shard():
    assert parse_shard("2/4") == (2, 4) and parse_shard(" 1 / 1 ") == (1, 1)
    for bad in ("0/2", "3/2", "1", "a/b", "1/0"):
        with pytest.raises(ValueError, match="write I/N"):
            parse_shard(bad)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 12])
def test_shards_are_disjoint_cover_every_pair_and_ignore_input_order(n):
    pairs = list(P.REGISTRY.values())
    shards = [shard_pairs(pairs, i, n) for i in range(1, n + 1)]
    ids = [p.id for s in shards for p in s]
    assert sorted(ids) == sorted(p.id for p in pairs) and len(ids) == len(set(ids))
    assert [shard_pairs(list(reversed(pairs)), i, n) for i in range(1, n + 1)] == shards
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_worker_gpus():
    gpus = ["0", "1", "2", "3"]
    assert [worker_gpus(f"gw{k}", 4, gpus) for k in range(4)] == [["0"], ["1"], ["2"], ["3"]]
    assert [worker_gpus(f"gw{k}", 2, gpus) for k in range(2)] == [["0", "1"], ["2", "3"]]  # --device-map groups
    assert [worker_gpus(f"gw{k}", 3, ["5", "7"]) for k in range(3)] == [["5"], ["7"], ["5"]]
    assert worker_gpus("gw0", 2, []) == []
    with pytest.raises(ValueError, match="xdist worker"):
        worker_gpus("master", 2, gpus)


def test_placement_options_are_checked():
    O.check_placement(None, None)
    O.check_placement("auto", "0=70GiB,cpu=200GiB")
    with pytest.raises(O.OptionError, match="--device-map everywhere: unknown; use one of auto"):
        O.check_placement("everywhere", None)
    with pytest.raises(O.OptionError, match="add --device-map auto"):
        O.check_placement(None, "0=70GiB")
    with pytest.raises(O.OptionError, match="--max-memory .*DEVICE=SIZE"):
        O.check_placement("auto", "70GiB")


def result(pair, alpha, value=1.0):
    m = {"base": value, "tuned": 1.1 * value, "rel_change": 0.1, "ci_low": 0.05, "ci_high": 0.15, "n": 40}
    return {"pair": pair, "dataset": "synthetic", "alpha": alpha, "method": "grpo", "method_class": "online",
            "metrics": {"intensity": m}, "counts": {"sampled": 40},
            "config": {"n_samples": 100, "seed": 42, "device": "cpu", "dtype": "float32", "dataset": "synthetic",
                       "alpha": alpha},
            "verdicts": {"C1": {"status": "pass", "expectation": "increase", "message": "x", "details": {"result": m}}},
            "figures": {"sources": ["e"], "destinations": ["l"], "edge_mask": [[True]], "mean_abs_base": [[1.0]],
                        "mean_abs_tuned": [[1.1]], "entropy_per_node_base": [0.5], "entropy_per_node_tuned": [0.6],
                        "n": 40}}


def shard(tmp_path, name, results, expected, **kw):
    write_report(results, tmp_path / name, expected=expected, with_figures=False, **kw)
    return tmp_path / name


def test_merge_counts_a_case_once_and_restores_figure_data(tmp_path):
    a = shard(tmp_path, "a", [result("p", 0.3), result("q", 0.3)], ["p-synthetic-a0.3"],
              skipped={"q": "q: in shard 2/2 (this run: --shard 1/2)", "z": "z: needs a CUDA GPU"})
    b = shard(tmp_path, "b", [result("q", 0.3)], ["q-synthetic-a0.3"])
    paths = merge_reports([a, b], tmp_path / "m", with_figures=False)
    merged = read_report(tmp_path / "m")
    assert paths["complete"] and [r["pair"] for r in merged["results"]] == ["p", "q"]
    assert merged["skipped"] == {"z": "z: needs a CUDA GPU"}  # the shard skip is gone: q was measured
    assert merged["results"][0]["figures"]["mean_abs_tuned"] == [[1.1]]


def test_merge_refuses_copies_that_disagree_and_marks_missing_cases(tmp_path):
    a = shard(tmp_path, "a", [result("p", 0.3)], ["p-synthetic-a0.3"])
    b = shard(tmp_path, "b", [result("p", 0.3, value=1.01)], ["p-synthetic-a0.3"])
    with pytest.raises(MergeError, match="case p-synthetic-a0.3 differs between .* intensity.base"):
        merge_reports([a, b], tmp_path / "m")
    close = shard(tmp_path, "c", [result("p", 0.3, value=1.0 + 1e-7)], ["p-synthetic-a0.3"])  # within tolerance
    assert merge_reports([a, close], tmp_path / "m2", with_figures=False)["complete"]
    partial = shard(tmp_path, "d", [], ["r-synthetic-a0.5"], partial_reason="interrupted")
    paths = merge_reports([a, partial], tmp_path / "m3", with_figures=False)
    assert not paths["complete"] and paths["missing_cases"] == ["r-synthetic-a0.5"]
    assert "interrupted" in paths["partial_reason"]
    with pytest.raises(MergeError, match="cannot also be an input"):
        merge_reports([a], a)
    with pytest.raises(MergeError, match="no report folders"):
        merge_reports([], tmp_path / "m4")


def test_report_merge_command(tmp_path, capsys):
    a = shard(tmp_path, "a", [result("p", 0.3)], ["p-synthetic-a0.3"])
    assert cli.main(["report", "merge", str(a), "--out", str(tmp_path / "m"), "--no-figures"]) == 0
    assert "p                    C1 increase" in capsys.readouterr().out
    partial = shard(tmp_path, "d", [], ["r-synthetic-a0.5"])
    assert cli.main(["report", "merge", str(a), str(partial), "--out", str(tmp_path / "m2"), "--no-figures"]) == 1
    assert "PARTIAL: 1 of 2 cases not measured" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert cli.main(["report", "merge", str(tmp_path / "empty"), "--out", str(tmp_path / "m3")]) == 2
    err = capsys.readouterr().err
    assert "holds no results.json: not an eapbench report folder" in err and "Traceback" not in err
    bad = copy.deepcopy(json.loads((a / "results.json").read_text()))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_bytes(b"\xff\x00" + json.dumps(bad).encode())
    assert cli.main(["report", "merge", str(tmp_path / "broken"), "--out", str(tmp_path / "m4")]) == 2
    assert "is not valid JSON" in capsys.readouterr().err
