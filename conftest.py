"""Root pytest configuration shared by suites/ (the claims) and tests/ (the library).

``--benchmarks`` enables the pytest-benchmark speed/memory benchmarks (marker ``perf``),
which are excluded from the default runs.

The claim-suite options (``--pairs``, ``--pair``, ``--datasets``, ``--alphas``, ...) are
declared here because pytest only reads options from the root conftest; they are used by
``suites/conftest.py``. A bare ``pytest suites/`` is the embedded default run: the mini
pairs on the synthetic task, on CPU. ``--strict`` is pytest's own strict mode (it sets the
``strict`` ini option); the suite extends it: inconclusive verdicts count as failures.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("eapbench")
    group.addoption("--benchmarks", action="store_true", default=False,
                    help="run the speed/memory benchmarks (tests marked perf)")

    suite = parser.getgroup("eapbench suite", "claim suite (suites/)")
    suite.addoption("--pairs", default="mini",
                    help="comma-separated pair groups (mini, paper, lineages, all) or pair ids; default: mini")
    suite.addoption("--pair", action="append", default=[], metavar="SPEC_OR_YAML",
                    help="a user pair 'name=...,base=PATH_OR_ID,tuned=PATH_OR_ID,method=grpo[,template=...,"
                         "datasets=a;b,alphas=0.1;0.3]' or a YAML file of pairs (repeatable)")
    suite.addoption("--datasets", default=None,
                    help="comma-separated datasets for every selected pair (default: each pair's own; "
                         "mini: synthetic, paper: math,gsm8k,college_math)")
    suite.addoption("--alphas", default=None,
                    help="comma-separated answer fractions alpha (default: each pair's own; "
                         "mini: 0.3,0.5, paper: 0.03,0.1,0.3,0.5)")
    suite.addoption("--n-samples", type=int, default=100, help="paired problems N per case (SPEC §4; default 100)")
    suite.addoption("--limit", type=int, default=None,
                    help="use at most this many dataset problems before selection (default: each pair's own, else all)")
    suite.addoption("--n-resamples", type=int, default=9999, help="bootstrap resamples (SPEC §6; default 9999)")
    suite.addoption("--device", default="cpu", help="torch device for generation and attribution (default cpu)")
    suite.addoption("--dtype", default=None,
                    help="model dtype (default: each pair's own; mini float32, paper/lineages bfloat16)")
    suite.addoption("--granularity", default="qkv", choices=("qkv", "block", "head"),
                    help="residual-graph granularity (SPEC §2; default qkv, the paper's; head: per attention head, "
                         "as MIB/EAP-IG)")
    suite.addoption("--method", "--attribution", dest="attribution", default="eap", choices=("eap", "eap-ig"),
                    help="edge scores: eap (SPEC §3, the paper's one-pass EAP, default) or eap-ig (SPEC §11, "
                         "integrated gradients from a zero baseline, --ig-steps forward+backward passes)")
    suite.addoption("--ig-steps", type=int, default=5, help="integrated-gradient steps with --method eap-ig (default 5)")
    suite.addoption("--robustness", action="store_true", default=False,
                    help="also measure every case under qkv/EAP, head/EAP and qkv/EAP-IG and report the verdicts "
                         "side by side (robustness.md); tests/suites/test_robustness.py checks them")
    suite.addoption("--share-scores", action="store_true", default=False,
                    help="keep each sample's edge scores under $EAPBENCH_CACHE/scores and reuse them, so a model shared "
                         "by several pairs is attributed once per sample (reused scores equal a fresh batch's to "
                         "~1e-6, not to the bit)")
    suite.addoption("--no-faithfulness", action="store_true", default=False,
                    help="skip the faithfulness curves (SPEC §11; 20 patched forward passes per model and case)")
    suite.addoption("--batch-size", type=int, default=8, help="attribution batch size (default 8; with "
                    "--memory-budget the most per batch)")
    suite.addoption("--memory-budget", default=None, metavar="SIZE|auto",
                    help="pack attribution batches by length under this memory (e.g. 40GiB; auto = 90%% of free "
                         "device memory), checkpointing where one sample needs it (default: auto on CUDA, "
                         "fixed batches on CPU)")
    suite.addoption("--gen-batch-size", type=int, default=None,
                    help="generation batch size (default: each pair's own; mini 64, paper 8; with "
                         "--gen-token-budget the most per batch)")
    suite.addoption("--gen-token-budget", type=int, default=None, metavar="TOKENS",
                    help="hf generation: pack batches by prompt length so that rows x (longest prompt + max new "
                         "tokens) stays within TOKENS (bounds a batch's KV cache; default: batches of "
                         "--gen-batch-size)")
    suite.addoption("--backend", default="hf", metavar="hf|vllm|auto",
                    help="generation backend: hf (transformers, default), vllm (needs vLLM and --device cuda; an "
                         "error otherwise), auto (vllm where it can run, else hf); same cache, prompts, greedy "
                         "decoding and grading")
    suite.addoption("--threads", type=int, default=1,
                    help="torch CPU threads while measuring (default 1: steady on shared CPUs, reproducible; 0 = torch default)")
    suite.addoption("--data-dir", default=None, help="folder with datasets not shipped offline (college_math)")
    suite.addoption("--regen-baselines", action="store_true", default=False,
                    help="rewrite baselines/<pair>/<dataset>/alpha-<a>.json from this run's measurements "
                         "(only with each pair's canonical settings; see --regen-variant)")
    suite.addoption("--regen-variant", action="store_true", default=False,
                    help="with --regen-baselines and settings other than a pair's canonical ones (N, limit, "
                         "resamples, ...): store under baselines/<pair>/<dataset>/variants/<settings>/ instead "
                         "of refusing; the canonical baselines are never overwritten")
    suite.addoption("--report", default=None, metavar="DIR",
                    help="write results.json, table1.md and figures into DIR")
    suite.addoption("--shard", default=None, metavar="I/N",
                    help="run only shard I of N of the selected pairs (deterministic by pair id), e.g. one CI "
                         "matrix job or array task each; join their reports with `eapbench report merge`")
    suite.addoption("--device-map", default=None, metavar="MAP",
                    help="spread each model over devices with accelerate (auto, balanced, sequential): for "
                         "models larger than one GPU; scores equal the undispatched model's")
    suite.addoption("--max-memory", default=None, metavar="DEV=SIZE,...",
                    help="with --device-map: memory per device, e.g. '0=70GiB,1=70GiB,cpu=200GiB'")
    suite.addoption("--no-suite-cache", action="store_true", default=False,
                    help="recompute measurements instead of reading the on-disk measurement cache")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "claim(id): a claim test parametrized over (pair, dataset, alpha) cases")
    config.addinivalue_line("markers", "baseline: a baseline comparison parametrized over (pair, dataset, alpha)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--benchmarks"):
        return
    skip = pytest.mark.skip(reason="benchmark: run with `pytest tests/ -m perf --benchmarks`")
    for item in items:
        if "perf" in item.keywords:
            item.add_marker(skip)
