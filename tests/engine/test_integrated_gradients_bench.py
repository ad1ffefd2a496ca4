"""Benchmark (pytest-benchmark, excluded by default): EAP-IG against plain EAP on the mini zoo's
sft model, one thread, time only. EAP-IG with m steps is m forward+backward passes (plus one
no-grad forward with a corrupted baseline), so its time over plain EAP's should be about m.

    pytest tests/engine/test_integrated_gradients_bench.py -m perf --benchmarks -s
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

from eapbench.engine.attribution import attribute
from eapbench.engine.graph import ResidualGraph

pytestmark = pytest.mark.perf

STEPS = (1, 5, 10)


@pytest.fixture(scope="module")
def sft():
    from eapbench import zoo

    model, _ = zoo.load("sft", dtype="float32")
    return model


@pytest.mark.parametrize("baseline", ["zero", "tokens"])
@pytest.mark.parametrize("T", [96, 384])
def test_ig_vs_plain_eap(benchmark, sft, T, baseline):
    model, B = sft, 8
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, model.config.vocab_size, (B, T), generator=g)
        base = torch.randint(0, model.config.vocab_size, (B, T), generator=g) if baseline == "tokens" else None
        mask = torch.zeros(B, T, dtype=torch.bool)
        mask[:, T // 2:] = True
        graph = ResidualGraph.from_model(model)
        runs: dict[str, list[float]] = {"eap": [], **{f"ig{m}": [] for m in STEPS}}
        calls = {"eap": lambda: attribute(model, ids, mask, graph=graph),
                 **{f"ig{m}": (lambda m=m: attribute(model, ids, mask, graph=graph, method="eap-ig", steps=m,
                                                     baseline=base)) for m in STEPS}}
        calls["eap"]()  # warm-up
        for _ in range(3):  # interleaved, so every variant sees the same machine load
            for name, fn in calls.items():
                t0 = time.perf_counter()
                fn()
                runs[name].append(time.perf_counter() - t0)
        benchmark.group = f"EAP-IG sft B={B} T={T} baseline={baseline}"
        benchmark.pedantic(calls["ig5"], rounds=1, iterations=1)
    finally:
        torch.set_num_threads(threads)
    med = {k: statistics.median(v) for k, v in runs.items()}
    row = {"B": B, "T": T, "baseline": baseline, **{f"{k}_s": v for k, v in med.items()},
           **{f"ig{m}_vs_eap": med[f"ig{m}"] / med["eap"] for m in STEPS}}
    benchmark.extra_info.update(row)
    print(f"\nsft B={B} T={T} baseline={baseline}: eap {med['eap']:.3f}s | "
          + " | ".join(f"m={m} {med[f'ig{m}']:.3f}s x{row[f'ig{m}_vs_eap']:.2f}" for m in STEPS))
