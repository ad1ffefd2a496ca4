"""Pair registry: contents, groups, user pairs, lazy zoo references, availability reasons."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

import eapbench
from eapbench.suite import pairs as P


def test_registry_has_paper_lineage_and_mini_pairs():
    assert {p.id for p in P.group("paper")} == {"deepseek-math-grpo", "mistral-ppo", "distill-qwen-grpo", "qwen25-dpo"}
    assert len(P.group("lineages")) == 6
    assert {p.id for p in P.group("mini")} >= {"mini-grpo", "mini-ppo", "mini-dpo"}
    assert len(P.group("all")) == len(P.REGISTRY)
    ds = P.get_pair("deepseek-math-grpo")
    assert ds.base.path == "deepseek-ai/deepseek-math-7b-instruct" and ds.tuned.path == "deepseek-ai/deepseek-math-7b-rl"
    assert ds.method == "grpo" and ds.requires_gpu and ds.base.max_new_tokens == 4096
    assert P.get_pair("qwen25-dpo").method == "dpo" and P.get_pair("qwen25-dpo").base.max_new_tokens == 8192
    assert P.get_pair("distill-qwen-grpo").tuned.max_new_tokens == 32768
    assert P.get_pair("mistral-ppo").base.template == "mistral"
    for p in P.group("mini"):
        assert p.base.path == "zoo:sft" and p.tuned.path.startswith("zoo:") and not p.requires_gpu


def test_registry_templates_are_registered_in_prompts():
    from eapbench.pipeline.prompts import get_template

    for p in P.REGISTRY.values():
        for m in p.models:
            get_template(m.template)  # raises for an unknown name


def test_select_pairs_groups_ids_and_order():
    sel = P.select_pairs("mini-dpo,paper,mini-dpo")
    assert sel[0].id == "mini-dpo" and len(sel) == 5
    with pytest.raises(KeyError, match="unknown pair 'nope'.*groups"):
        P.select_pairs("nope")
    with pytest.raises(ValueError, match="unknown pair group"):
        P.group("papers")


def test_parse_user_pair():
    p = P.parse_pair("name=my-pair,base=/models/a,tuned=org/b,method=GRPO,template=chat,"
                     "datasets=gsm8k;math,alphas=0.1;0.3,max_new_tokens=512")
    assert p.id == "my-pair" and p.method == "grpo" and p.group == "user"
    assert p.base.path == "/models/a" and p.tuned.path == "org/b" and p.base.template == "chat"
    assert p.datasets == ("gsm8k", "math") and p.alphas == (0.1, 0.3) and p.tuned.max_new_tokens == 512


@pytest.mark.parametrize("text, match", [
    ("name=x,base=a,tuned=b", r"missing \['method'\]"),
    ("name=x,base=a,tuned=b,method=rlhf", "unknown method 'rlhf'"),
    ("name=x,base=a,tuned=b,method=grpo,colour=red", "unknown keys"),
    ("name=x base=a", "not key=value|missing"),
    ("name=bad id!,base=a,tuned=b,method=grpo", "pair id"),
])
def test_parse_user_pair_errors_name_the_problem(text, match):
    with pytest.raises(ValueError, match=match):
        P.parse_pair(text)


def test_pairs_yaml(tmp_path):
    f = tmp_path / "pairs.yaml"
    f.write_text("pairs:\n  - {name: a, base: x/y, tuned: x/z, method: dpo, datasets: [gsm8k], alphas: [0.5]}\n"
                 "  - {name: b, base: x/y, tuned: x/w, method: ppo, template: \"Q: {question}\\nA:\"}\n")
    a, b = P.load_pairs_yaml(f)
    assert a.method == "dpo" and a.datasets == ("gsm8k",) and a.alphas == (0.5,)
    assert b.base.template == "Q: {question}\nA:"
    sel = P.select_pairs("mini-grpo", [str(f)])
    assert [p.id for p in sel] == ["mini-grpo", "a", "b"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("pairs: [1, 2]\n")
    with pytest.raises(ValueError, match="expected a list of pairs"):
        P.load_pairs_yaml(bad)
    with pytest.raises(ValueError, match="already taken"):
        P.select_pairs("mini", ["name=mini-grpo,base=a/b,tuned=a/c,method=grpo"])


def test_paper_pair_skips_on_cpu_with_reason_and_command():
    why = P.get_pair("deepseek-math-grpo").availability("cpu")
    assert why is not None
    assert "CUDA GPU" in why and "pytest suites/ --pairs paper --device cuda" in why
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache("deepseek-ai/deepseek-math-7b-instruct", "config.json"), str):
        assert "weights of deepseek-ai/deepseek-math-7b-instruct (`hf download deepseek-ai/deepseek-math-7b-instruct`)" in why


def test_zoo_references_resolve_lazily(monkeypatch, tmp_path):
    folder = tmp_path / "grpo"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    fake = types.ModuleType("eapbench.zoo")
    fake.checkpoint_path = lambda name: tmp_path / name
    monkeypatch.setitem(sys.modules, "eapbench.zoo", fake)
    monkeypatch.setattr(eapbench, "zoo", fake, raising=False)
    p = P.get_pair("mini-grpo")
    assert p.tuned.path == "zoo:grpo"  # the registry itself holds the reference
    r = p.resolved()
    assert Path(r.tuned.path) == folder and r.tuned.name == "mini-grpo"
    assert P.weights_missing(p.tuned) is None
    why = P.weights_missing(p.base)  # tmp_path/sft does not exist
    assert "zoo:sft" in why and "eapbench zoo train" in why
    assert "zoo:sft" in p.availability("cpu")


def test_local_folder_and_missing_path(tmp_path):
    from eapbench.records import ModelSpec

    assert P.weights_missing(ModelSpec(str(tmp_path), "mini")) == f"a model at {tmp_path} (folder has no config.json)"
    assert "no such folder" in P.weights_missing(ModelSpec("./nowhere", "mini"))


def test_zoo_models_are_recorded_by_name_and_weights_hash():
    """Baseline provenance names a zoo model ``zoo:<name>`` with its weights' sha256, never a local folder."""
    import json

    from eapbench import zoo
    from eapbench.cache import file_sha256

    for side, name in (("base", "sft"), ("tuned", "grpo-t0.6")):
        spec = getattr(P.get_pair("mini-grpo-t0.6"), side)
        prov = P.model_provenance(spec)
        folder = zoo.checkpoint_path(name)
        assert prov["path"] == f"zoo:{name}" and prov["name"] == f"mini-{name}" and prov["template"] == "mini"
        assert prov["sha256"] == {"model.safetensors": file_sha256(folder / "model.safetensors")}
        card = json.loads((folder / "model_card.json").read_text())
        assert prov["sha256"]["model.safetensors"] == card["files_sha256"]["model.safetensors"]
        assert str(folder) not in json.dumps(prov)
    hub = P.model_provenance(P.get_pair("deepseek-math-grpo").tuned)
    assert hub == {"path": "deepseek-ai/deepseek-math-7b-rl", "revision": None, "name": "deepseek-math-7b-rl",
                   "template": "deepseek-math"}
