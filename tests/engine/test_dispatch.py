"""attribute() on models dispatched by accelerate (issue 11): weights offloaded to CPU memory or disk
and kept on ``meta`` until a hook loads them, layers possibly on different devices. Scores must equal
the undispatched model's (within 1e-5 of the largest score)."""

from __future__ import annotations

import pytest
import torch
from accelerate import cpu_offload, disk_offload, dispatch_model

import eapbench
from eapbench.engine.attribution import AttributionError, execution_device
from eapbench.zoo import checkpoint_path

from tiny_models import FAMILIES, random_batch, tiny_model


def zoo_sft():
    model, _ = eapbench.load_model(str(checkpoint_path("sft")), dtype="float32")
    return model


def padded_batch(vocab: int):
    ids = torch.randint(3, vocab, (3, 24), generator=torch.Generator().manual_seed(0))
    attn = torch.ones_like(ids)
    attn[1, 18:] = 0
    attn[2, 12:] = 0
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[:, 8:] = True
    return ids, mask & attn.bool(), attn


def close(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


@pytest.mark.parametrize("how", ["cpu_offload", "disk_offload"])
def test_zoo_sft_offloaded_scores_equal_the_plain_model(how, tmp_path):
    plain = zoo_sft()
    ids, mask, attn = padded_batch(plain.config.vocab_size)
    want, want_loss = eapbench.attribute(plain, ids, mask, attention_mask=attn, return_loss=True)
    model = zoo_sft()
    if how == "cpu_offload":
        cpu_offload(model, execution_device=torch.device("cpu"))
    else:
        disk_offload(model, str(tmp_path / "offload"), execution_device=torch.device("cpu"))
    assert {p.device.type for p in model.parameters()} == {"meta"}  # weights only where hooks load them
    got, loss = eapbench.attribute(model, ids, mask, attention_mask=attn, return_loss=True)
    assert close(got, want) <= 1e-5
    torch.testing.assert_close(loss, want_loss, rtol=1e-6, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_layers_dispatched_with_a_device_map_score_like_the_plain_model(family, tmp_path):
    """A device_map that sends some layers to disk and the rest to CPU (the shape of a multi-GPU map)."""
    plain = tiny_model(family, n_layers=3, dtype=torch.float32)
    ids, mask = random_batch(seq=12, n_targets=5)
    want = eapbench.attribute(plain, ids, mask)
    model = tiny_model(family, n_layers=3, dtype=torch.float32)
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                  "model.layers.2": "cpu", "model.norm": "cpu", "lm_head": "disk"}
    model = dispatch_model(model, device_map=_complete(model, device_map), offload_dir=str(tmp_path / "off"))
    assert close(eapbench.attribute(model, ids, mask), want) <= 1e-5


def _complete(model, device_map):
    """Every top-level submodule of model.model that the map does not name goes to the CPU."""
    out = dict(device_map)
    for name, _ in model.model.named_children():
        full = f"model.{name}"
        if not any(k == full or k.startswith(full + ".") for k in out):
            out[full] = "cpu"
    return out


def test_execution_device_follows_the_hooks_and_meta_only_models_are_a_clear_error():
    model = zoo_sft()
    assert execution_device(model) == torch.device("cpu")
    cpu_offload(model, execution_device=torch.device("cpu"))
    assert execution_device(model) == torch.device("cpu")
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        empty = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                             num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(AttributionError, match="meta device"):
        execution_device(empty)


def test_load_model_with_a_device_map_offloads_and_scores_like_the_plain_model(tmp_path):
    """load_model(device_map=..., max_memory=...) as a user with a model larger than memory would call it:
    nothing fits in the 1 MiB allowed, so accelerate offloads everything to disk."""
    plain = zoo_sft()
    ids, mask, attn = padded_batch(plain.config.vocab_size)
    want = eapbench.attribute(plain, ids, mask, attention_mask=attn)
    model, _ = eapbench.load_model(str(checkpoint_path("sft")), dtype="float32", device_map="auto",
                                   max_memory="cpu=1MiB", offload_folder=tmp_path / "offload")
    assert {p.device.type for p in model.parameters()} == {"meta"}  # read from disk by the hooks, layer by layer
    assert close(eapbench.attribute(model, ids, mask, attention_mask=attn), want) <= 1e-5


def test_max_memory_strings_and_misuse():
    from eapbench.models import parse_max_memory

    assert parse_max_memory("0=70GiB, 1=70GiB,cpu=200GiB") == {0: "70GiB", 1: "70GiB", "cpu": "200GiB"}
    with pytest.raises(ValueError, match="DEVICE=SIZE"):
        parse_max_memory("70GiB")
    with pytest.raises(ValueError, match="pass device_map too"):
        eapbench.load_model(str(checkpoint_path("sft")), max_memory="cpu=1GiB")
