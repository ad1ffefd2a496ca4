"""Greedy generation with an on-disk cache (eapbench.pipeline.generate), on hand-built Markov models."""

from __future__ import annotations

import logging

import pytest
import torch

import eapbench.pipeline.generate as gen
from eapbench.pipeline.generate import (Generation, generate, greedy_generate, load_tokenizer, model_fingerprint,
                               tokenize_prompts)
from eapbench.records import ModelSpec, Problem

from pipeline_helpers import build_vocab, make_markov_model

WORDS = "what is the answer to qa qb qc qd".split() + ["f1", "f2", "\\boxed{7}", "g1", "\\boxed{8}", "h1", "h2"]
PATHS = {"qa": ["f1", "f2", "\\boxed{7}"], "qb": ["g1", "\\boxed{8}"], "qd": ["h1", "h2", "h1"]}  # qd loops forever
TEMPLATE = "{question}"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EAPBENCH_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)


@pytest.fixture
def vocab():
    return build_vocab(WORDS)


@pytest.fixture
def model_dir(tmp_path, vocab):
    return make_markov_model(tmp_path / "model", vocab, PATHS)


def problems():
    qs = ["what is qa", "the answer to qb", "qc", "what is the answer to qd", "is qa", "qb"]
    return [Problem(id=f"p{i}", question=q, answer="7", source="toy") for i, q in enumerate(qs)]


def spec(path, **kw):
    return ModelSpec(str(path), TEMPLATE, max_new_tokens=kw.pop("max_new_tokens", 6), **kw)


def _oracle_greedy(model, prompt, max_new_tokens, eos):
    """Unbatched, unpadded, no KV cache: one full forward per new token."""
    ids = list(prompt)
    out = []
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1]
        t = int(logits.argmax())
        if t in eos:
            return tuple(out), True
        out.append(t)
        ids.append(t)
    return tuple(out), False


def test_batched_left_padded_cached_decoding_matches_unbatched_oracle(tmp_path, vocab):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    # a random (not hand-built) model, so that attention over left padding really matters
    torch.manual_seed(3)
    cfg = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, initializer_range=0.5,
                      max_position_embeddings=128)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "rand")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "rand").eval()
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]
    got = greedy_generate(model, prompts, max_new_tokens=8, eos_ids=[39], pad_id=0)
    for p, g in zip(prompts, got):
        assert g == _oracle_greedy(model, p, 8, {39})
    # stop at EOS: declare a token the first row produces (for the first time) at step >= 2 to be EOS
    first = got[0][0]
    k = next(i for i, t in enumerate(first) if i >= 2 and t not in first[:i])
    stop = first[k]
    cut = greedy_generate(model, prompts, max_new_tokens=8, eos_ids=[stop], pad_id=0)
    assert cut[0] == (first[:k], True)
    for p, g in zip(prompts, cut):
        assert g == _oracle_greedy(model, p, 8, {stop})


def test_generate_answers_and_finished_flags(model_dir, vocab):
    run = generate(spec(model_dir), problems(), dataset="toy", progress=False)
    by = run.by_id()
    idx = {w: i for i, w in enumerate(vocab)}
    assert by["p0"].answer_ids == tuple(idx[w] for w in PATHS["qa"]) and by["p0"].finished
    assert by["p0"].text == "f1 f2 \\boxed{7}"
    assert by["p1"].text == "g1 \\boxed{8}"
    assert by["p2"].answer_ids == () and by["p2"].finished  # EOS straight away
    assert len(by["p3"].answer_ids) == 6 and not by["p3"].finished  # ran into max_new_tokens
    assert by["p0"].prompt_ids == tuple(idx[w] for w in "what is qa".split())
    assert [g.problem_id for g in run.generations] == [p.id for p in problems()]
    assert (run.n_generated, run.n_cached) == (6, 0)


def test_second_run_hits_the_cache_without_loading_the_model(model_dir, monkeypatch):
    first = generate(spec(model_dir), problems(), dataset="toy", batch_size=4, progress=False)

    def no_model(*a, **k):
        raise AssertionError("the model was loaded although every answer was cached")

    monkeypatch.setattr("eapbench.models.load_model", no_model)
    monkeypatch.setattr(gen, "greedy_generate", no_model)
    second = generate(spec(model_dir), problems(), dataset="toy", batch_size=2, progress=False)
    assert (second.n_generated, second.n_cached) == (0, 6)
    assert second.generations == first.generations and second.key == first.key


def test_interrupted_run_resumes_where_it_stopped(model_dir, tmp_path, monkeypatch):
    reference = generate(spec(model_dir), problems(), dataset="toy", batch_size=2, cache=False, progress=False)
    real = gen.greedy_generate
    calls = {"n": 0}

    def dies_after_one_batch(*a, **k):
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(gen, "greedy_generate", dies_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        generate(spec(model_dir), problems(), dataset="toy", batch_size=2, progress=False)
    monkeypatch.setattr(gen, "greedy_generate", real)
    resumed = generate(spec(model_dir), problems(), dataset="toy", batch_size=2, progress=False)
    assert (resumed.n_cached, resumed.n_generated) == (2, 4)
    assert resumed.generations == reference.generations


def test_changed_checkpoint_is_not_served_from_cache(model_dir, vocab, caplog):
    first = generate(spec(model_dir), problems(), dataset="toy", progress=False)
    other = dict(PATHS, qa=["f1", "\\boxed{7}"])  # the "fine-tuned" model answers qa differently
    make_markov_model(model_dir, vocab, other)  # overwrite the weights in place
    with caplog.at_level(logging.WARNING, logger="eapbench.pipeline.generate"):
        second = generate(spec(model_dir), problems(), dataset="toy", progress=False)
    assert second.key != first.key and second.n_generated == 6
    assert second.by_id()["p0"].text == "f1 \\boxed{7}"
    assert "fingerprint changed" in caplog.text


def test_key_depends_on_template_decoding_and_dataset(model_dir):
    base = generate(spec(model_dir), problems(), dataset="toy", progress=False).key
    assert generate(spec(model_dir, max_new_tokens=5), problems(), dataset="toy", progress=False).key != base
    assert generate(ModelSpec(str(model_dir), "what {question}", max_new_tokens=6), problems(), dataset="toy",
                    progress=False).key != base
    assert generate(spec(model_dir), problems(), dataset="toy2", progress=False).key != base


def test_changed_question_under_same_id_is_regenerated(model_dir):
    generate(spec(model_dir), problems(), dataset="toy", progress=False)
    changed = problems()
    changed[1] = Problem(id="p1", question="what is qa", answer="7", source="toy")
    run = generate(spec(model_dir), changed, dataset="toy", progress=False)
    assert (run.n_generated, run.n_cached) == (1, 5)
    assert run.by_id()["p1"].text == "f1 f2 \\boxed{7}"


def test_unreadable_shard_is_regenerated(model_dir):
    run = generate(spec(model_dir), problems(), dataset="toy", batch_size=3, progress=False)
    from pathlib import Path

    shards = sorted(Path(run.cache_path).glob("part-*.json"))
    assert len(shards) == 2
    shards[0].write_text("{ not json")
    again = generate(spec(model_dir), problems(), dataset="toy", batch_size=3, progress=False)
    assert (again.n_generated, again.n_cached) == (3, 3) and again.generations == run.generations



GARBAGE = b"\x80\xff\xfe binary \x00\x9c garbage"  # not UTF-8: the issue's "'utf-8' codec can't decode"


@pytest.mark.parametrize("content", [GARBAGE, b"[1, 2]", b'{"generations": [{"problem_id": 3}]}'],
                         ids=["binary", "json-list", "bad-entries"])
def test_corrupt_cache_files_are_named_dropped_and_recomputed(model_dir, tmp_path, caplog, content):
    """Issue 15: garbage in any generation-cache file (a shard, this job's meta.json, another job's
    meta.json, a fingerprint memo) is a warning naming the file, the file is dropped and what it
    held is recomputed; never a traceback, never a blocked cache."""
    import json
    from pathlib import Path

    root = tmp_path / "cache"
    first = generate(spec(model_dir), problems(), dataset="toy", batch_size=3, progress=False)
    other = generate(spec(model_dir, max_new_tokens=5), problems()[:2], dataset="toy", progress=False)
    shard = sorted(Path(first.cache_path).glob("part-*.json"))[0]
    memos = sorted((root / "fingerprints").glob("*.json"))
    assert memos
    files = [shard, Path(first.cache_path) / "meta.json", Path(other.cache_path) / "meta.json", *memos]
    for f in files:
        f.write_bytes(content)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = generate(spec(model_dir), problems(), dataset="toy", batch_size=3, progress=False)
        new_job = generate(spec(model_dir, max_new_tokens=4), problems()[:1], dataset="toy", progress=False)
    assert (again.n_generated, again.n_cached) == (3, 3) and again.generations == first.generations
    assert new_job.n_generated == 1  # a corrupt meta.json elsewhere in the cache does not block a new job
    named = files[:2] if content.startswith(b"{") else files  # another job's meta / a memo: a dict is usable
    for f in named:
        assert str(f) in caplog.text, f  # each corrupt file is named
    assert json.loads((Path(first.cache_path) / "meta.json").read_text())["dataset"] == "toy"  # rewritten
    assert json.loads(memos[0].read_text())["sha256"]  # the memo is rewritten too
    third = generate(spec(model_dir), problems(), dataset="toy", batch_size=3, progress=False)
    assert third.n_generated == 0

def test_fingerprint_of_local_folder(model_dir):
    fp = model_fingerprint(spec(model_dir))
    assert fp["kind"] == "local" and "model.safetensors" in fp["files"] and "tokenizer.json" in fp["files"]
    assert fp["config"]["model_type"] == "llama"
    assert model_fingerprint(spec(model_dir)) == fp


def test_fingerprint_of_hub_model_needs_a_commit(monkeypatch):
    sha = "0123456789abcdef0123456789abcdef01234567"
    assert model_fingerprint(ModelSpec("org/model", "mini", revision=sha))["commit"] == sha

    def offline(*a, **k):
        raise ConnectionError("offline")

    monkeypatch.setattr("huggingface_hub.HfApi.model_info", offline)
    with pytest.raises(ValueError, match="Pin the commit in ModelSpec.revision"):
        model_fingerprint(ModelSpec("org/surely-not-cached-model", "mini"))


def test_fingerprint_rejects_folder_without_weights(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no weight file"):
        model_fingerprint(ModelSpec(str(tmp_path / "empty"), "mini"))


def test_tokenize_prompts_uses_template(model_dir, vocab):
    tok = load_tokenizer(spec(model_dir))
    ids = tokenize_prompts(tok, "what {question}", [Problem("x", "is qa", "7", "toy")])
    idx = {w: i for i, w in enumerate(vocab)}
    assert ids == [[idx["what"], idx["is"], idx["qa"]]]


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"backend": "tgi"}, "unknown backend"),
    ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
])
def test_bad_arguments(model_dir, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate(spec(model_dir), problems(), dataset="toy", progress=False, **kwargs)


def test_vllm_backend_refused_without_gpu(model_dir):
    if gen._vllm_available():
        pytest.skip("vLLM and a GPU are present")
    with pytest.raises(RuntimeError, match="vllm package and a CUDA GPU"):
        generate(spec(model_dir), problems(), dataset="toy", backend="vllm", progress=False)


def test_duplicate_problem_ids_rejected(model_dir):
    ps = problems()
    with pytest.raises(ValueError, match="unique"):
        generate(spec(model_dir), ps + ps[:1], dataset="toy", progress=False)


def test_generation_round_trips_through_dict():
    g = Generation("p", (1, 2), (3,), "x", False, "h")
    assert Generation.from_dict(g.to_dict()) == g


# ---------------------------------------------------------------- issue 14.3: token budget, tokens/s, backends

def test_plan_batches_packs_by_length_under_the_budget():
    lengths = [5, 30, 12, 30, 7, 18, 3, 25]
    # no budget: today's batches, consecutive slices of the longest-first order (ties: caller's order)
    assert gen.plan_batches(lengths, batch_size=3, max_new_tokens=10) == [[1, 3, 7], [5, 2, 4], [0, 6]]
    plan = gen.plan_batches(lengths, batch_size=3, max_new_tokens=10, token_budget=90)
    assert sorted(i for b in plan for i in b) == list(range(len(lengths)))
    flat = [i for b in plan for i in b]
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)  # still longest first
    for b in plan:
        assert len(b) <= 3  # the batch size stays an upper bound
        assert len(b) * (lengths[b[0]] + 10) <= 90 and lengths[b[0]] == max(lengths[i] for i in b)
    assert plan == [[1, 3], [7, 5], [2, 4, 0], [6]]
    # a prompt that alone exceeds the budget gets a batch of its own
    assert gen.plan_batches([50, 2], batch_size=4, max_new_tokens=10, token_budget=20) == [[0], [1]]


def test_budgeted_batches_give_the_one_by_one_answers_on_a_zoo_model():
    """Greedy answers do not depend on the batching: packed under a token budget (batches of mixed
    sizes, left padding) they equal the answers decoded one problem at a time."""
    from eapbench.pipeline.data import load_dataset
    from eapbench.zoo import checkpoint_path

    s = ModelSpec(str(checkpoint_path("sft")), "mini", max_new_tokens=40)
    probs = list(load_dataset("synthetic", limit=24).problems)
    one = generate(s, probs, dataset="synthetic", batch_size=1, cache=False, progress=False)
    lengths = [len(g.prompt_ids) for g in one.generations]
    budget = 6 * (min(lengths) + 40)  # six of the shortest prompts per batch, fewer of the longest
    packed = generate(s, probs, dataset="synthetic", batch_size=16, token_budget=budget, cache=False, progress=False)
    plan = gen.plan_batches(lengths, batch_size=16, max_new_tokens=40, token_budget=budget)
    assert len({len(b) for b in plan}) > 1 and max(len(b) for b in plan) > 4  # really packed, really mixed
    assert [g.answer_ids for g in packed.generations] == [g.answer_ids for g in one.generations]
    assert packed.generations == one.generations


def test_run_reports_decoded_tokens_seconds_and_backends(model_dir):
    run = generate(spec(model_dir), problems(), dataset="toy", batch_size=4, progress=False)
    assert run.n_new_tokens == sum(len(g.answer_ids) + g.finished for g in run.generations) == 21
    assert run.seconds > 0 and run.tokens_per_s == pytest.approx(21 / run.seconds, rel=1e-2)
    assert run.backend == "hf" and run.backends == {"hf": 6}
    assert run.stats()["n_new_tokens"] == 21 and run.stats()["backend"] == "hf"
    again = generate(spec(model_dir), problems(), dataset="toy", batch_size=4, progress=False)
    assert (again.n_new_tokens, again.tokens_per_s, again.backends) == (0, None, {"hf": 6})  # cached: 0 decoded


def test_token_budget_is_checked(model_dir):
    with pytest.raises(ValueError, match="token_budget must be >= 1"):
        generate(spec(model_dir), problems(), dataset="toy", token_budget=0, progress=False)


class FakeVllmRunner:
    """Stands in for vLLM: greedy decoding with transformers, recording what it was given."""

    made: list = []

    def __init__(self, spec, dtype, max_new_tokens, eos_ids):
        from eapbench.models import load_model

        self.model, _ = load_model(spec.path, dtype=dtype, device="cpu")
        self.max_new_tokens, self.eos, self.calls, self.closed = max_new_tokens, list(eos_ids), [], False
        FakeVllmRunner.made.append(self)

    def __call__(self, prompts):
        self.calls.append([list(p) for p in prompts])
        return greedy_generate(self.model, prompts, max_new_tokens=self.max_new_tokens, eos_ids=self.eos, pad_id=0)

    def close(self):
        self.closed = True


def test_vllm_backend_shares_the_cache_key_and_records_itself(model_dir, monkeypatch):
    """backend='vllm' (faked): same key, prompts, greedy settings and answers as hf; the shards and the
    run say which backend made each answer; an hf run afterwards reuses them without loading a model."""
    monkeypatch.setattr(gen, "vllm_unavailable", lambda device="cuda": None)
    monkeypatch.setattr(gen, "_VllmRunner", FakeVllmRunner)
    FakeVllmRunner.made = []
    hf = generate(spec(model_dir), problems(), dataset="toy", batch_size=2, cache=False, progress=False)
    v = generate(spec(model_dir), problems(), dataset="toy", batch_size=2, device="cuda", backend="vllm",
                 progress=False)
    (runner,) = FakeVllmRunner.made
    assert len(runner.calls) == 1 and len(runner.calls[0]) == 6  # one chunk: vLLM schedules it itself
    assert sorted(map(tuple, runner.calls[0])) == sorted(g.prompt_ids for g in hf.generations)  # same prompts
    assert runner.closed and runner.max_new_tokens == 6
    assert v.generations == hf.generations and v.backend == "vllm" and v.backends == {"vllm": 6}
    assert v.settings == {"max_new_tokens": 6, "decoding": "greedy", "dtype": "float32"}  # no backend in the key
    import json
    from pathlib import Path

    assert {json.loads(f.read_text())["backend"] for f in Path(v.cache_path).glob("part-*.json")} == {"vllm"}

    def no_model(*a, **k):
        raise AssertionError("the model was loaded although every answer was cached")

    monkeypatch.setattr("eapbench.models.load_model", no_model)
    again = generate(spec(model_dir), problems(), dataset="toy", progress=False)  # hf, same key
    assert again.key == v.key and (again.n_cached, again.n_new_tokens) == (6, 0)
    assert again.backend == "hf" and again.backends == {"vllm": 6}


def test_auto_backend_picks_vllm_only_where_it_can_run(monkeypatch):
    assert gen.resolve_backend("hf") == "hf" and gen.resolve_backend("vllm", "cpu") == "vllm"
    assert gen.vllm_unavailable("cpu") == "vLLM runs on CUDA GPUs only and this run's device is cpu"
    assert gen.resolve_backend("auto", "cpu") == "hf"
    monkeypatch.setattr(gen, "vllm_unavailable", lambda device="cuda": None)
    assert gen.resolve_backend("auto", "cuda") == "vllm"
    with pytest.raises(ValueError, match="unknown backend 'tgi'"):
        gen.resolve_backend("tgi")


def test_vllm_runner_calls_vllm_as_documented(monkeypatch):
    """The real _VllmRunner against a stand-in ``vllm`` module: LLM(model, dtype, seed, generation_config=
    'vllm'), SamplingParams(temperature=0, max_tokens, n=1, stop_token_ids=EOS ids), prompts as
    {'prompt_token_ids': ...} (vLLM's TokensPrompt), answers cut at EOS, the engine shut down on close."""
    import dataclasses
    import sys
    import types

    seen = {}

    @dataclasses.dataclass
    class EngineArgs:
        model: str = ""
        generation_config: str = "auto"

    class SamplingParams:
        def __init__(self, **kw):
            seen["params"] = kw

    class LLM:
        def __init__(self, **kw):
            seen["llm"] = kw

        def generate(self, prompts, params, use_tqdm=True):
            seen["prompts"] = prompts
            out = lambda ids, why: types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=ids, finish_reason=why)])
            return [out([5, 6, 2], "stop"), out([7, 7, 7], "length")]

        def shutdown(self):
            seen["shutdown"] = True

    fake = types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams, EngineArgs=EngineArgs)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    r = gen._VllmRunner(ModelSpec("/m", "mini", revision="abc"), "bfloat16", 3, [2, 9])
    assert seen["llm"] == {"model": "/m", "dtype": "bfloat16", "seed": 0, "revision": "abc",
                           "generation_config": "vllm"}
    assert seen["params"] == {"temperature": 0.0, "max_tokens": 3, "n": 1, "stop_token_ids": [2, 9],
                              "detokenize": False}
    assert r([[1, 2], [3]]) == [((5, 6), True), ((7, 7, 7), False)]
    assert seen["prompts"] == [{"prompt_token_ids": [1, 2]}, {"prompt_token_ids": [3]}]
    r.close()
    assert seen["shutdown"] and r.llm is None
