"""The shared option validation (eapbench.suite.options): each bad value is an OptionError naming the
option as typed, the problem and the fix; nothing here loads a model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from eapbench.records import ModelSpec
from eapbench.suite import options as O
from eapbench.suite import pairs as P
from eapbench.zoo import checkpoint_path

GOOD = dict(device="cpu", n_samples=100, n_resamples=9999, batch_size=8, threads=1, limit=None,
            gen_batch_size=None, dtype=None)


@pytest.mark.parametrize("key,value,match", [
    ("batch_size", 0, r"--batch-size 0: must be >= 1"),
    ("threads", -1, r"--threads -1: must be >= 0.*0 for torch's default"),
    ("n_samples", 0, r"--n-samples 0: must be >= 1"),
    ("n_resamples", 0, r"--n-resamples 0: must be >= 100"),
    ("n_resamples", 99, r"--n-resamples 99: must be >= 100"),
    ("limit", 0, r"--limit 0: must be >= 1"),
    ("gen_batch_size", 0, r"--gen-batch-size 0: must be >= 1"),
    ("dtype", "float8", r"--dtype float8: unknown dtype"),
    ("device", "gpu", r"--device 'gpu': unknown device; use cpu, cuda, cuda:N or mps"),
])
def test_run_options_name_the_flag(key, value, match):
    with pytest.raises(O.OptionError, match=match):
        O.check_run_options(**{**GOOD, key: value})


def test_good_run_options_pass():
    O.check_run_options(**GOOD)
    O.check_run_options(**{**GOOD, "threads": 0, "limit": 5, "gen_batch_size": 4, "n_resamples": 100})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_is_one_clear_error():
    for dev in ("cuda", "cuda:0"):
        with pytest.raises(O.OptionError, match=rf"--device {dev}: CUDA is not available here.*use --device cpu"):
            O.check_device("--device", dev)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_index_beyond_device_count():
    n = torch.cuda.device_count()
    assert O.check_device("--device", "cuda:0") == "cuda:0"
    with pytest.raises(O.OptionError, match=f"has {n} CUDA device"):
        O.check_device("--device", f"cuda:{n}")


def test_alphas():
    assert O.check_alphas("--alpha", [0.3, 1.0]) == (0.3, 1.0)
    for bad in (0, 1.5, -0.1):
        with pytest.raises(O.OptionError, match=rf"--alpha {bad}: .*must be in \(0, 1\]"):
            O.check_alphas("--alpha", [bad])
    with pytest.raises(O.OptionError, match=r"--alphas 'abc': not a number"):
        O.check_alphas("--alphas", ["abc"])


def test_datasets_and_report(tmp_path):
    with pytest.raises(O.OptionError, match=r"--dataset gsm9k: unknown dataset; use one of gsm8k"):
        O.check_datasets("--dataset", ["gsm9k"])
    f = tmp_path / "report.txt"
    f.write_text("x")
    with pytest.raises(O.OptionError, match=r"--report .*report.txt: this is an existing file.*name a folder"):
        O.check_report("--report", str(f))
    with pytest.raises(O.OptionError, match=r"is a file, so the report folder cannot be made"):
        O.check_report("--report", str(f / "sub"))
    assert O.check_report("--report", str(tmp_path / "new")) == str(tmp_path / "new")


def _copy_zoo(tmp_path: Path, name: str = "sft") -> Path:
    dst = tmp_path / name
    shutil.copytree(checkpoint_path(name), dst)
    return dst


def test_safetensors_header_check_finds_truncation(tmp_path):
    folder = _copy_zoo(tmp_path)
    assert O.weight_files_problem(folder) is None
    w = folder / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) - 1000])
    assert f"is truncated ({len(data) - 1000} of {len(data)} bytes)" in O.weight_files_problem(folder)
    w.write_bytes(data[:4])
    assert "not even the 8-byte header length" in O.safetensors_problem(w)
    spec = ModelSpec(str(folder), "mini")
    with pytest.raises(O.OptionError, match=r"--tuned .*: the tuned model's weights are broken: .*model.safetensors "
                                            r"is truncated.*re-download or rebuild"):
        O.check_model("--tuned", str(folder), spec, side="tuned")


def test_zoo_folder_and_chat_template(tmp_path):
    folder = _copy_zoo(tmp_path)
    assert O.is_zoo_folder(str(folder)) and O.is_zoo_folder("zoo:sft")
    assert not O.is_zoo_folder(str(tmp_path))
    assert not O.has_chat_template(folder)
    mc = O.check_model("--base", str(folder), ModelSpec(str(folder), "chat"), side="base")
    with pytest.raises(O.OptionError, match=r"--base .*: its tokenizer has no chat template.*pass --template.*"
                                            r"use --template mini"):
        O.check_template("--template", "chat", {"--base": (str(folder), mc)})
    O.check_template("--template", "mini", {"--base": (str(folder), mc)})
    with pytest.raises(O.OptionError, match=r"--template 'nope': unknown template"):
        O.check_template("--template", "nope", {})
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": "{{ messages }}"}))
    assert O.has_chat_template(folder)


def test_missing_local_paths_and_hub_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(O.OptionError, match=r"--base /no/such: no such folder"):
        O.check_model("--base", "/no/such", ModelSpec("/no/such", "chat"), side="base")
    # a relative typo under an existing folder: never taken for a hub id, no network
    monkeypatch.setattr(O, "hub_probe", lambda *a, **k: pytest.fail("the hub must not be tried"))
    with pytest.raises(O.OptionError, match=r"--base models/sft-typo: no such local folder \(models/ exists"):
        O.check_model("--base", "models/sft-typo", ModelSpec("models/sft-typo", "chat"), side="base")
    # offline: not in the cache is the end of it
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(O.OptionError, match=r"org/absent: no local folder of that name exists, and 'org/absent' is "
                                            r"not in the local Hugging Face cache \(HF_HUB_OFFLINE is set"):
        O.check_model("--tuned", "org/absent", ModelSpec("org/absent", "chat"), side="tuned")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(O, "_offline", lambda: False)
    monkeypatch.setattr(O, "hub_probe", lambda *a, **k: "the hub (huggingface.co) was not reachable: no DNS")
    with pytest.raises(O.OptionError, match=r"--base org/absent: no local folder of that name exists, and the hub "
                                            r"\(huggingface.co\) was not reachable: no DNS; fix the path"):
        O.check_model("--base", "org/absent", ModelSpec("org/absent", "chat"), side="base")
    monkeypatch.setattr(O, "hub_probe", lambda *a, **k: None)
    assert O.check_model("--base", "org/present", ModelSpec("org/present", "chat"), side="base").kind == "hub"


def test_hub_probe_is_one_quick_try(monkeypatch):
    import socket
    import time

    def refuse(*a, **k):
        raise OSError("unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    t0 = time.perf_counter()
    assert "was not reachable: unreachable" in O.hub_probe("org/name")
    assert time.perf_counter() - t0 < 2


def test_gguf_paths_route_to_folder_and_file(tmp_path):
    g = tmp_path / "m.Q4.gguf"
    g.write_bytes(b"GGUF")
    pair = P.pair_from_mapping({"name": "g", "base": str(g), "tuned": str(tmp_path / "absent.gguf"),
                                "method": "grpo", "template": "chat"})
    assert (pair.base.path, pair.base.gguf_file) == (str(tmp_path), "m.Q4.gguf")
    assert (pair.tuned.path, pair.tuned.gguf_file) == (str(tmp_path), "absent.gguf")
    assert O.check_model("--base", str(g), pair.base, side="base").kind == "gguf"
    with pytest.raises(O.OptionError, match=r"--tuned .*absent.gguf: no such GGUF file"):
        O.check_model("--tuned", str(tmp_path / "absent.gguf"), pair.tuned, side="tuned")
    assert "no such file" in P.weights_missing(pair.tuned)
    assert P.weights_missing(pair.base) is None
    keyed = P.pair_from_mapping({"name": "k", "base": str(tmp_path), "base_gguf": "m.Q4.gguf", "tuned": "a/b",
                                 "method": "grpo"})
    assert keyed.base.gguf_file == "m.Q4.gguf"


def test_yaml_pair_errors_name_file_and_key(tmp_path):
    f = tmp_path / "pairs.yaml"
    f.write_text("- {name: y, base: a/b, tuned: a/c, method: grpo, alphas: [abc]}\n")
    with pytest.raises(ValueError, match=r"pairs.yaml pair #0: key 'alphas': 'abc' is not a number"):
        P.load_pairs_yaml(f)
    f.write_text("- {name: y, base: a/b, tuned: a/c, method: grpo, alphas: [1.5]}\n")
    with pytest.raises(ValueError, match=r"pairs.yaml pair #0: key 'alphas': \[1.5\] out of range"):
        P.load_pairs_yaml(f)
    f.write_text("- {name: y, base: a/b, tuned: a/c, method: grpo, max_new_tokens: 0}\n")
    with pytest.raises(ValueError, match=r"pairs.yaml pair #0: key 'max_new_tokens': 0 must be >= 1"):
        P.load_pairs_yaml(f)
    with pytest.raises(ValueError, match=r"--pair .*: key 'limit': 'ten' is not an integer"):
        P.parse_pair("name=z,base=a/b,tuned=a/c,method=grpo,limit=ten")


def test_named_pairs():
    sel = P.select_pairs("mini,paper,mini-grpo", ["name=u,base=a/b,tuned=a/c,method=grpo"])
    named = O.named_pairs("mini,paper,mini-grpo", ["name=u,base=a/b,tuned=a/c,method=grpo"], sel)
    assert named == {"mini-grpo": "--pairs mini-grpo", "u": "--pair name=u,base=a/b,tuned=a/c,method=grpo"}


def test_hub_cached_model_is_found_and_its_weights_checked(tmp_path, monkeypatch):
    from huggingface_hub import constants

    snap = tmp_path / "hub" / "models--org--cached" / "snapshots" / ("a" * 40)
    shutil.copytree(checkpoint_path("sft"), snap)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(O, "hub_probe", lambda *a, **k: pytest.fail("cached: no hub needed"))
    monkeypatch.chdir(tmp_path)
    assert O.check_model("--base", "org/cached", ModelSpec("org/cached", "mini"), side="base").kind == "hub-cached"
    w = snap / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-10])
    with pytest.raises(O.OptionError, match=r"--base org/cached: the base model's cached weights are broken: .* "
                                            r"is truncated.*hf download org/cached --force-download"):
        O.check_model("--base", "org/cached", ModelSpec("org/cached", "mini"), side="base")


def test_memory_budget_option():
    assert O.check_memory_budget("--memory-budget", None) is None
    assert O.check_memory_budget("--memory-budget", "auto") == "auto"
    assert O.check_memory_budget("--memory-budget", "40GiB") == "40GiB"
    with pytest.raises(O.OptionError, match="--memory-budget lots: memory budget 'lots': write a size like 40GiB"):
        O.check_memory_budget("--memory-budget", "lots")


def test_backend_vllm_where_it_cannot_run_is_one_clear_error(monkeypatch):
    """Issue 14.3: --backend vllm never falls back to hf silently; auto picks vLLM only where it runs."""
    from eapbench.pipeline import generate as G

    assert O.check_backend("--backend", "hf", "cpu") == "hf"
    assert O.check_backend("--backend", None, "cpu") == "hf"
    assert O.check_backend("--backend", "auto", "cpu") == "hf"
    with pytest.raises(O.OptionError, match=r"^--backend vllm: vLLM runs on CUDA GPUs only and this run's device "
                                            r"is cpu; use --backend hf \(or auto"):
        O.check_backend("--backend", "vllm", "cpu")
    with pytest.raises(O.OptionError, match=r"^--backend tgi: unknown generation backend; use one of hf, vllm, auto"):
        O.check_backend("--backend", "tgi", "cpu")
    monkeypatch.setattr(G, "vllm_unavailable", lambda device="cuda": "the vllm package is not installed here "
                                                                      "(`pip install vllm`)")
    with pytest.raises(O.OptionError, match=r"^--backend vllm: the vllm package is not installed here"):
        O.check_backend("--backend", "vllm", "cuda")
    assert O.check_backend("--backend", "auto", "cuda") == "hf"
    monkeypatch.setattr(G, "vllm_unavailable", lambda device="cuda": None)  # vLLM and a GPU, faked
    assert O.check_backend("--backend", "vllm", "cuda") == "vllm"
    assert O.check_backend("--backend", "auto", "cuda:0") == "vllm"
    with pytest.raises(O.OptionError, match=r"--backend vllm: vLLM places the model on the first visible GPU.*"
                                            r"CUDA_VISIBLE_DEVICES=1 and --device cuda"):
        O.check_backend("--backend", "vllm", "cuda:1")


def test_gen_token_budget():
    assert O.check_gen_token_budget("--gen-token-budget", None) is None
    assert O.check_gen_token_budget("--gen-token-budget", 4096) == 4096
    with pytest.raises(O.OptionError, match=r"--gen-token-budget 0: must be >= 1; tokens per generation batch"):
        O.check_gen_token_budget("--gen-token-budget", 0)


def test_attribution_options():
    """Issue 13: --method/--attribution, --ig-steps and --granularity, checked before anything loads."""
    O.check_attribution("eap", 5, "qkv")
    O.check_attribution("eap-ig", 1, "head")
    with pytest.raises(O.OptionError, match=r"^--method eap-xx: unknown; use eap .* or eap-ig"):
        O.check_attribution("eap-xx", 5, "qkv")
    with pytest.raises(O.OptionError, match=r"^--attribution ig: unknown"):
        O.check_attribution("ig", 5, "qkv", "--attribution")
    with pytest.raises(O.OptionError, match=r"--ig-steps"):
        O.check_attribution("eap-ig", 0, "qkv")
    with pytest.raises(O.OptionError, match=r"^--granularity neuron: unknown; use one of qkv, block, head"):
        O.check_attribution("eap", 5, "neuron")


def test_noncanonical_attribution_settings_are_variants():
    """head granularity and EAP-IG are other settings (variant baselines); faithfulness on/off is not."""
    from eapbench.suite import canonical
    from eapbench.suite import pairs as P
    from eapbench.suite.measurement import RunConfig

    pair = P.REGISTRY["mini-grpo"]
    assert canonical.differences(pair, RunConfig(faithfulness=False)) == {}
    assert canonical.settings_tag(canonical.differences(pair, RunConfig(granularity="head"))) == "granularity-head"
    tag = canonical.settings_tag(canonical.differences(pair, RunConfig(attribution="eap-ig", ig_steps=5)))
    assert tag == "attribution-eap-ig_ig_steps-5"
