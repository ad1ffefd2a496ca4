"""The session runner on tiny random models: metrics equal direct computation, work is done once
(per pair and dataset, for all α), measurements come back from disk, verdicts cover every claim."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

import eapbench
from eapbench.suite import pairs as P
from eapbench.analysis import stats
from eapbench.engine.attribution import score_inputs
from eapbench.records import AttributionInputs
from eapbench.suite.runner import RunConfig, Runner
from eapbench.pipeline.selection import EmptySelectionError, SelectionConfig, SelectionReport

from tiny_models import tiny_model

ALPHAS = (0.3, 0.5)
N = 12


def inputs(seed: int, t_cut: int, name: str) -> AttributionInputs:
    g = np.random.default_rng(seed)
    rows, plens = [], []
    for _ in range(N):
        p = int(g.integers(3, 6))
        rows.append(tuple(int(x) for x in g.integers(2, 40, size=p + t_cut)))
        plens.append(p)
    return AttributionInputs(tuple(f"q{i}" for i in range(N)), tuple(rows), tuple(plens), t_cut, model=name)


class Fake:
    """Stands in for the pipeline and the model loader; counts calls."""

    def __init__(self, empty: bool = False):
        self.prepare_calls, self.load_calls, self.empty = [], [], empty
        self.models = {}

    def prepare_pair(self, base, tuned, dataset, alphas, **kw):
        self.prepare_calls.append((base.path, tuned.path, dataset, tuple(alphas)))
        cfg = SelectionConfig(n_samples=kw["n_samples"])
        if self.empty:
            raise EmptySelectionError("both_correct", SelectionReport(counts={"problems": 5, "both_correct": 0},
                                                                      config=cfg, stopped_at="both_correct"), "")
        out = {}
        for a in alphas:
            t = max(int(a * 8), 1)
            rep = SelectionReport(counts={"problems": 40, "both_correct": 20, "sampled": N}, config=cfg,
                                  alpha=a, refer=8.0, t_cut=t)
            sel = types.SimpleNamespace(base=inputs(1, t, base.path), tuned=inputs(2, t, tuned.path), report=rep)
            out[a] = sel
        return out

    def load_model(self, path, **kw):
        self.load_calls.append(path)
        if path not in self.models:
            seed = sum(map(ord, path)) % 1000
            self.models[path] = tiny_model("llama", seed=seed, dtype=torch.float32)
        return self.models[path], types.SimpleNamespace(pad_token_id=0, eos_token_id=1)


@pytest.fixture
def fake(monkeypatch):
    f = Fake()
    monkeypatch.setattr("eapbench.pipeline.paired.prepare_pair", f.prepare_pair)
    monkeypatch.setattr("eapbench.models.load_model", f.load_model)
    return f


def pair(name, method, tuned):
    return P.pair_from_mapping({"name": name, "base": "tiny/base", "tuned": tuned, "method": method,
                                "datasets": ["synthetic"], "alphas": list(ALPHAS)})


PAIRS = (pair("t-grpo", "grpo", "tiny/grpo"), pair("t-dpo", "dpo", "tiny/dpo"))
CFG = RunConfig(n_resamples=300, batch_size=5, progress=False)


def test_measurement_matches_direct_computation_and_is_shared(fake, tmp_path):
    runner = Runner(PAIRS, CFG, cache_root=tmp_path)
    m = runner.measure("t-grpo", "synthetic", 0.3)
    assert fake.prepare_calls == [("tiny/base", "tiny/grpo", "synthetic", ALPHAS)]
    assert fake.load_calls == ["tiny/base", "tiny/grpo"]  # each model once, for both alphas
    # oracle: the same steps done by hand
    sel = fake.prepare_pair(PAIRS[0].base, PAIRS[0].tuned, "synthetic", ALPHAS, n_samples=100)[0.3]
    b = score_inputs(fake.models["tiny/base"], sel.base, pad_token_id=0, batch_size=5, progress=False)
    t = score_inputs(fake.models["tiny/grpo"], sel.tuned, pad_token_id=0, batch_size=5, progress=False)
    for name in ("intensity", "complexity", "kurtosis", "diversity", "output_entropy"):
        want = stats.paired_bootstrap(name, b.scores, t.scores, b.graph.edge_mask, n_resamples=300, seed=0,
                                      progress=False).to_dict()
        got = m.metrics[name]
        for k in ("base", "tuned", "rel_change", "ci_low", "ci_high", "n"):
            # the runner scores with 1 thread, this oracle with torch's default: float32 sums differ ~1e-7
            assert got[k] == pytest.approx(want[k], rel=1e-5), (name, k)
    assert m.counts == {"problems": 40, "both_correct": 20, "sampled": N}
    assert m.config["n_resamples"] == 300 and m.config["alpha"] == 0.3 and m.config["dtype"] == "float32"
    assert m.provenance["git_commit"] and m.provenance["versions"]["torch"]
    mask = np.asarray(m.figures["edge_mask"])
    assert np.allclose(np.asarray(m.figures["mean_abs_base"])[mask], b.scores.abs().mean(0)[b.graph.edge_mask].numpy())
    # the other alpha and every claim reuse the work
    runner.measure("t-grpo", "synthetic", 0.5)
    runner.verdicts("t-grpo", "synthetic", 0.3)
    assert len(fake.prepare_calls) == 2 and len(fake.load_calls) == 2  # the second prepare call is the oracle


def test_disk_cache_and_verdicts(fake, tmp_path):
    first = Runner(PAIRS, CFG, cache_root=tmp_path)
    v = first.verdicts("t-dpo", "synthetic", 0.5)
    assert set(v) == {"C1", "C2", "C3", "C4", "C5", "C6"}  # C6 measured t-grpo too
    assert {c[1] for c in fake.prepare_calls} == {"tiny/dpo", "tiny/grpo"}
    assert set(first.verdicts("t-grpo", "synthetic", 0.5)) == {"C1", "C2", "C3", "C4", "C5"}
    for verdict in v.values():
        assert verdict.status in ("pass", "fail", "inconclusive", "not_judged") and verdict.message
    assert "t-grpo" in v["C6"].message
    calls = len(fake.prepare_calls)
    second = Runner(PAIRS, CFG, cache_root=tmp_path)
    again = second.verdicts("t-dpo", "synthetic", 0.5)
    assert len(fake.prepare_calls) == calls  # everything came from disk
    assert {k: x.message for k, x in again.items()} == {k: x.message for k, x in v.items()}
    results = second.results()
    assert {r["pair"] for r in results} == {"t-dpo", "t-grpo"} and all(r["verdicts"] for r in results)
    # a different option is a different measurement
    Runner(PAIRS, RunConfig(n_resamples=301, batch_size=5, progress=False), cache_root=tmp_path).measure(
        "t-dpo", "synthetic", 0.5)
    assert len(fake.prepare_calls) == calls + 1


def test_empty_selection_is_inconclusive_with_counts(monkeypatch, tmp_path, fake):
    fake.empty = True
    runner = Runner(PAIRS[:1], CFG, cache_root=tmp_path)
    v = runner.verdict("t-grpo", "synthetic", 0.3, "C1")
    assert v.status == "inconclusive" and "both_correct 0" in v.message


def test_interrupted_attribution_resumes_from_saved_batches(monkeypatch, tmp_path, caplog):
    """Issue 15: a run interrupted during attribution keeps its finished batches; the rerun computes
    only the missing ones, logs how many it reused, gives the uninterrupted run's numbers exactly,
    and a finished run leaves no partial files behind."""
    import logging

    import eapbench.engine.attribution as attribution

    real = attribution.attribute
    calls = []

    def counting(*a, **k):
        calls.append(1)
        if len(calls) == interrupt_at:
            raise KeyboardInterrupt  # what Ctrl-C (or a killed job) does mid-run
        return real(*a, **k)

    monkeypatch.setattr(attribution, "attribute", counting)
    per_run = -(-N // CFG.batch_size)  # 3 batches per model and alpha; 2 models x 2 alphas = 12 batches

    def run(cache):
        monkeypatch.setenv("EAPBENCH_CACHE", str(cache))
        f = Fake()
        monkeypatch.setattr("eapbench.pipeline.paired.prepare_pair", f.prepare_pair)
        monkeypatch.setattr("eapbench.models.load_model", f.load_model)
        return Runner(PAIRS, CFG, cache_root=cache / "suite").measure("t-grpo", "synthetic", 0.3)

    interrupt_at = None
    want = run(tmp_path / "clean")
    assert len(calls) == 4 * per_run
    assert list((tmp_path / "clean" / "attribution").rglob("*")) == []  # finished: partial files removed

    calls.clear()
    interrupt_at = 2 * per_run + 2  # the tuned model's second batch at the first alpha
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut")
    assert len(list((tmp_path / "cut" / "attribution").rglob("batch-*.pt"))) == 2 * per_run + 1

    calls.clear()
    interrupt_at = None
    with caplog.at_level(logging.INFO, logger="eapbench.engine.attribution"):
        got = run(tmp_path / "cut")
    assert len(calls) == 4 * per_run - (2 * per_run + 1)  # only the missing batches
    assert "resumed 3 of 3 batches" in caplog.text and "resumed 1 of 3 batches" in caplog.text
    assert got.metrics == want.metrics and got.figures == want.figures  # bit-identical numbers
    assert list((tmp_path / "cut" / "attribution").rglob("batch-*.pt")) == []


@pytest.mark.parametrize("content", [b"\x80\xff garbage \x00", b"[]", b'{"pair": 1}'], ids=["binary", "list", "dict"])
def test_corrupt_cached_measurement_is_named_dropped_and_remeasured(fake, tmp_path, caplog, content):
    import logging

    first = Runner(PAIRS[:1], CFG, cache_root=tmp_path).measure("t-grpo", "synthetic", 0.3)
    path = Runner(PAIRS[:1], CFG, cache_root=tmp_path).store.path(PAIRS[0], "synthetic", 0.3)
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING):
        again = Runner(PAIRS[:1], CFG, cache_root=tmp_path).measure("t-grpo", "synthetic", 0.3)
    assert str(path) in caplog.text and len(fake.prepare_calls) == 2
    assert again.metrics == first.metrics and _stored_metrics(path) == again.metrics


def _stored_metrics(path):
    import json

    return json.loads(path.read_text())["metrics"]


def test_concurrent_sessions_measure_a_pair_once(fake, monkeypatch, tmp_path):
    """Two sessions on one cache (pytest-xdist workers): the second waits for the first's measurement."""
    import threading
    import time

    def slow_prepare(*a, **kw):
        time.sleep(0.5)  # both sessions ask while the first is still measuring
        return fake.prepare_pair(*a, **kw)

    monkeypatch.setattr("eapbench.pipeline.paired.prepare_pair", slow_prepare)
    runners = [Runner(PAIRS, CFG, cache_root=tmp_path) for _ in range(2)]
    got = {}
    threads = [threading.Thread(target=lambda i=i: got.setdefault(i, runners[i].measure("t-grpo", "synthetic", 0.3)))
               for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(fake.prepare_calls) == 1  # measured once; the other session read it from disk
    assert got[0].metrics == got[1].metrics


def test_results_without_measuring_leave_out_what_was_not_measured(fake, tmp_path):
    runner = Runner(PAIRS, CFG, cache_root=tmp_path / "empty")
    runner.measure("t-dpo", "synthetic", 0.3)
    calls = len(fake.prepare_calls)
    results = runner.results(measure=False)  # e.g. at the end of an interrupted session
    assert len(fake.prepare_calls) == calls  # nothing new measured
    assert [r["alpha"] for r in results] == [0.3, 0.5] and {r["pair"] for r in results} == {"t-dpo"}
    res = results[0]
    assert "C6" not in res["verdicts"] and "t-grpo-synthetic-a0.3" in res["verdicts_unavailable"]["C6"]
    assert {"C1", "C2", "C3", "C4", "C5"} <= set(res["verdicts"])
    assert runner.expected_cases() == ["t-grpo-synthetic-a0.3", "t-grpo-synthetic-a0.5", "t-dpo-synthetic-a0.3",
                                       "t-dpo-synthetic-a0.5"]


def test_abandoned_resume_folders_are_pruned(monkeypatch, tmp_path):
    import os
    import time

    from eapbench.suite.measure import prune_stale_resume_dirs

    monkeypatch.setenv("EAPBENCH_CACHE", str(tmp_path))
    old, fresh = tmp_path / "attribution" / "old", tmp_path / "attribution" / "fresh"
    for folder in (old, fresh):
        folder.mkdir(parents=True)
        (folder / "batch-x.pt").write_bytes(b"x")
    past = time.time() - 31 * 86400
    for f in (old / "batch-x.pt", old):
        os.utime(f, (past, past))
    assert prune_stale_resume_dirs() == [old]
    assert not old.exists() and (fresh / "batch-x.pt").is_file()


def test_generation_backend_and_tokens_per_s_reach_the_provenance(fake, monkeypatch, tmp_path):
    """Issue 14.3: the run's backend and token budget go to prepare_pair; each side's generation figures
    (backend, tokens decoded, seconds, tokens/s) are in the measurement's provenance."""
    import dataclasses

    seen = []

    def prepare(*a, **kw):
        seen.append(kw)
        out = fake.prepare_pair(*a, **kw)
        gen = {side: {"backend": kw["backend"], "backends": {kw["backend"]: 40}, "n_generated": 40, "n_cached": 0,
                      "n_new_tokens": 900, "seconds": 3.0, "load_seconds": 1.0, "tokens_per_s": 300.0,
                      "batch_size": kw["batch_size"], "token_budget": kw["gen_token_budget"], "key": "k"}
               for side in ("base", "tuned")}
        for sel in out.values():
            sel.report = dataclasses.replace(sel.report, extra={**sel.report.extra, "generation": gen})
        return out

    monkeypatch.setattr("eapbench.pipeline.paired.prepare_pair", prepare)
    cfg = dataclasses.replace(CFG, backend="vllm", gen_token_budget=4096)
    m = Runner(PAIRS, cfg, cache_root=tmp_path).measure("t-grpo", "synthetic", 0.3)
    assert seen[0]["backend"] == "vllm" and seen[0]["gen_token_budget"] == 4096
    g = m.provenance["generation"]
    assert g["base"]["tokens_per_s"] == 300.0 and g["tuned"]["backend"] == "vllm" and "key" not in g["base"]
    assert g["base"]["token_budget"] == 4096 and g["base"]["n_new_tokens"] == 900
    assert "backend" not in m.config and m.config["gen_token_budget"] == 4096  # shared cache: not in the key


def test_faithfulness_and_stability_ride_along_equal_to_direct_computation(fake, tmp_path):
    """Issue 13: each side's faithfulness curve (on the case's inputs, from its mean scores) and top-k
    stability are in the measurement's extras, equal to calling the library directly."""
    from eapbench.analysis.stability import topk_stability
    from eapbench.engine.faithfulness import faithfulness_curve

    m = Runner(PAIRS[:1], CFG, cache_root=tmp_path).measure("t-grpo", "synthetic", 0.3)
    sel = fake.prepare_pair(PAIRS[0].base, PAIRS[0].tuned, "synthetic", ALPHAS, n_samples=100)[0.3]
    model = fake.models["tiny/base"]
    s = score_inputs(model, sel.base, pad_token_id=0, batch_size=5, progress=False)
    want = faithfulness_curve(model, sel.base, s.scores.mean(0), s.graph, pad_token_id=0, batch_size=5, progress=False)
    got = m.extra["faithfulness"]["base"]
    assert got["percents"] == list(want.percents)
    assert got["cpr"] == pytest.approx(want.cpr, abs=1e-4) and got["cmd"] == pytest.approx(want.cmd, abs=1e-4)
    assert set(m.extra["faithfulness"]) == {"base", "tuned"}
    st = topk_stability(s.edge_vectors(), n_resamples=300, seed=0, progress=False).to_dict()
    assert [e["k"] for e in m.extra["stability"]["base"]["per_k"]] == [e["k"] for e in st["per_k"]]
    assert m.extra["stability"]["base"]["jaccard_mean"] == pytest.approx(st["jaccard_mean"], abs=0.05)
    off = Runner(PAIRS[:1], RunConfig(n_resamples=300, batch_size=5, progress=False, faithfulness=False),
                 cache_root=tmp_path).measure("t-grpo", "synthetic", 0.3)
    assert "faithfulness" not in off.extra and off.metrics == m.metrics  # extras only: the metrics are the same


def test_robustness_measures_each_setting_once_and_head_sums_to_qkv(fake, tmp_path):
    """Issue 13: the same case under qkv/EAP, head/EAP and qkv/EAP-IG, verdicts per setting; the head
    variant's mean scores summed over heads are the qkv variant's; results carry the table's data."""
    from eapbench.suite.runner import ROBUSTNESS_VARIANTS

    runner = Runner(PAIRS, CFG, cache_root=tmp_path)
    assert runner.variant("qkv/EAP") is runner  # the run's own settings
    by = runner.robustness("t-grpo", "synthetic", 0.3)
    assert list(by) == list(ROBUSTNESS_VARIANTS)
    assert all(set(v) == {"C1", "C2", "C3", "C4", "C5"} for v in by.values())
    head = runner.variant("head/EAP").measure("t-grpo", "synthetic", 0.3)
    ig = runner.variant("qkv/EAP-IG").measure("t-grpo", "synthetic", 0.3)
    qkv = runner.measure("t-grpo", "synthetic", 0.3)
    assert head.config["granularity"] == "head" and ig.config["attribution"] == "eap-ig" and ig.config["ig_steps"] == 5
    assert "ig_steps" not in qkv.config  # not part of a plain-EAP key
    np.testing.assert_allclose(head.figures["mean_base"], qkv.figures["mean_base"], rtol=0, atol=1e-6)
    assert ig.metrics["intensity"]["base"] != qkv.metrics["intensity"]["base"]
    row = next(r for r in runner.results() if r["pair"] == "t-grpo" and r["alpha"] == 0.3)
    assert set(row["robustness"]) == set(ROBUSTNESS_VARIANTS)
    assert row["robustness"]["head/EAP"]["C1"]["status"] == by["head/EAP"]["C1"].status
    # a second session finds every variant on disk
    calls = len(fake.prepare_calls)
    Runner(PAIRS, CFG, cache_root=tmp_path).robustness("t-grpo", "synthetic", 0.3)
    assert len(fake.prepare_calls) == calls


def test_share_scores_attributes_a_shared_model_once_per_sample(fake, tmp_path, monkeypatch):
    """Issue 14.4: with share_scores the base model both pairs share is attributed once per sample; the
    metrics equal the unshared run's within the baseline tolerances; provenance says what was shared."""
    monkeypatch.setenv("EAPBENCH_CACHE", str(tmp_path / "cache"))
    cfg = RunConfig(n_resamples=300, batch_size=5, progress=False, share_scores=True)
    runner = Runner(PAIRS, cfg, cache_root=tmp_path / "suite")
    first = runner.measure("t-grpo", "synthetic", 0.3)
    second = runner.measure("t-dpo", "synthetic", 0.3)  # the same base model and (fake) inputs
    assert first.provenance["attribution_plan"]["base"]["shared_samples"] == 0
    assert second.provenance["attribution_plan"]["base"]["shared_samples"] == N
    assert second.provenance["attribution_plan"]["tuned"]["shared_samples"] == 0
    assert second.provenance["placement"]["share_scores"] is True
    plain = Runner(PAIRS, CFG, cache_root=tmp_path / "plain").measure("t-dpo", "synthetic", 0.3)
    assert second.config == plain.config  # not part of the key: the same case, the same baselines
    for name, r in plain.metrics.items():
        assert second.metrics[name]["base"] == pytest.approx(r["base"], rel=1e-5)


def test_faithfulness_out_of_memory_is_named_not_fatal(fake, tmp_path, monkeypatch):
    """A faithfulness curve that runs out of memory leaves the case measured, its curve an error naming the
    fix, which suites/test_faithfulness.py then reports as a failure (the curves were asked for)."""
    import eapbench.engine.faithfulness as F

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(F, "faithfulness_curve", oom)
    m = Runner(PAIRS[:1], CFG, cache_root=tmp_path).measure("t-grpo", "synthetic", 0.3)
    err = m.extra["faithfulness"]["base"]["error"]
    assert "out of memory (CUDA out of memory. Tried to allocate 20.00 GiB)" in err and "--no-faithfulness" in err
    assert m.metrics["intensity"]["n"] == N
