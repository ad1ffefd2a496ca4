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
