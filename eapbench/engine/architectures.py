"""Where each supported model family keeps the parts the residual graph needs.

One declarative table: module paths relative to the causal-LM object (model level) and
to a decoder layer (layer level). ``attribution.py`` reads nothing else about a model's
internals, so adding a family is one :class:`ArchSpec` entry — provided its decoder
layer has the standard "residual + sublayer" shape (pre-norm like Llama, or post-norm
like OLMo-2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn


@dataclass(frozen=True)
class ArchSpec:
    """How one family's modules map onto the residual graph of SPEC §2.

    Sources (what a sublayer adds to the residual) are the outputs of ``attn_source`` and
    ``mlp_source``. Destinations read the residual as the *first input* of a reader module:
    ``attn_reader`` / ``mlp_reader`` (the whole attention block / MLP), the q/k/v projections
    (split attention inputs, reached through ``attn_norm`` when the family has one), and
    the final norm (``logits``).
    """

    family: str
    norm_position: str  # "pre" (norm before each sublayer) or "post" (norm on each sublayer's output)
    attn_source: str
    mlp_source: str
    attn_reader: str
    mlp_reader: str
    attn_norm: str | None  # norm between the residual and q/k/v (None: q/k/v read the raw residual)
    q_proj: str = "self_attn.q_proj"
    k_proj: str = "self_attn.k_proj"
    v_proj: str = "self_attn.v_proj"
    # at "head" granularity: the attention module, its output projection (input = the heads' outputs
    # concatenated) and the norms on the q/k projections' outputs (OLMo-2's QK-norm), if any
    attn: str = "self_attn"
    o_proj: str = "self_attn.o_proj"
    q_norm: str | None = None
    k_norm: str | None = None
    base: str = "model"
    layers: str = "model.layers"
    embed: str = "model.embed_tokens"
    final_norm: str = "model.norm"
    lm_head: str = "lm_head"


_PRE_NORM = dict(norm_position="pre", attn_source="self_attn.o_proj", mlp_source="mlp",
                 attn_reader="input_layernorm", mlp_reader="post_attention_layernorm",
                 attn_norm="input_layernorm")

ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": ArchSpec(family="llama", **_PRE_NORM),       # also DeepSeek-Math, SmolLM2, Tülu-3
    "mistral": ArchSpec(family="mistral", **_PRE_NORM),
    "qwen2": ArchSpec(family="qwen2", **_PRE_NORM),       # q/k/v biases live inside the projections
    "olmo2": ArchSpec(family="olmo2", norm_position="post", attn_source="post_attention_layernorm",
                      mlp_source="post_feedforward_layernorm", attn_reader="self_attn",
                      mlp_reader="mlp", attn_norm=None,    # QK-norm sits after q/k_proj: part of the branch
                      q_norm="self_attn.q_norm", k_norm="self_attn.k_norm"),
}


class UnsupportedArchitectureError(ValueError):
    pass


def model_type_of(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__} has no `config.model_type`; eapbench scores Hugging Face causal LMs "
            f"of these families: {', '.join(sorted(ARCHITECTURES))}")
    return model_type


def arch_spec(model: nn.Module) -> ArchSpec:
    """The :class:`ArchSpec` for ``model``, or an error naming its architecture and the supported ones."""
    model_type = model_type_of(model)
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"architecture {model_type!r} ({type(model).__name__}) is not supported; supported: "
            f"{', '.join(sorted(ARCHITECTURES))}. To add a family whose decoder layer is "
            "'residual + sublayer', add an ArchSpec entry in eapbench/engine/architectures.py") from None


def get_module(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path)


def decoder_layers(model: nn.Module, spec: ArchSpec | None = None) -> list[nn.Module]:
    spec = spec or arch_spec(model)
    return list(get_module(model, spec.layers))
