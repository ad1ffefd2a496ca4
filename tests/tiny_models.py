"""Tiny random models of every supported family, for exact (fp64) tests of the engine."""

from __future__ import annotations

import types

import torch

FAMILIES = ("llama", "mistral", "qwen2", "olmo2")


def tiny_model(family: str, *, n_layers: int = 2, seed: int = 0, dtype: torch.dtype = torch.float64,
               vocab: int = 40):
    """A randomly initialised causal LM with grouped-query attention (4 heads, 2 KV heads),
    random norm weights and (Qwen2) random q/k/v biases."""
    from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                              Olmo2Config, Olmo2ForCausalLM, Qwen2Config, Qwen2ForCausalLM)

    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=n_layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  tie_word_embeddings=False, attn_implementation="sdpa")
    cls, cfg = {
        "llama": (LlamaForCausalLM, LlamaConfig),
        "mistral": (MistralForCausalLM, MistralConfig),
        "qwen2": (Qwen2ForCausalLM, Qwen2Config),
        "olmo2": (Olmo2ForCausalLM, Olmo2Config),
    }[family]
    extra = {"sliding_window": None} if family == "mistral" else {}
    torch.manual_seed(seed)
    model = cls(cfg(**common, **extra)).to(dtype).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
            else:  # larger weights than the default init, so every path carries signal
                p.copy_(0.15 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    if dtype == torch.float64:
        for mod in model.modules():
            if type(mod).__name__.endswith("RMSNorm"):
                mod.forward = types.MethodType(_rms_norm_same_dtype, mod)
    return model


def _rms_norm_same_dtype(self, x: torch.Tensor) -> torch.Tensor:
    """HF's RMSNorm computes in float32 whatever the input dtype; finite differences on an fp64
    model need it in fp64, or float32 rounding swamps the O(h^4) difference quotient."""
    return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


def random_batch(vocab: int = 40, batch: int = 2, seq: int = 9, n_targets: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    mask = torch.zeros(batch, seq, dtype=torch.bool)
    mask[:, seq - n_targets:] = True
    return ids, mask
