"""The mini zoo's model shape, and saving/loading checkpoints as ordinary HF folders.

A tiny ``LlamaForCausalLM`` (grouped-query attention, tied embeddings). Checkpoints are
stored in bfloat16 to keep the shipped zoo small; :func:`load_checkpoint` returns any
dtype asked for (float32 by default), and post-training always starts from the stored
(bf16-rounded) parent, so a rebuild trains exactly what is shipped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class ZooModelConfig:
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    n_kv_heads: int = 2
    d_mlp: int = 512
    max_positions: int = 192
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError(f"d_model ({self.d_model}) must divide by n_heads ({self.n_heads}) and n_heads "
                             f"by n_kv_heads ({self.n_kv_heads})")

    def to_dict(self) -> dict:
        return asdict(self)


def make_model(cfg: ZooModelConfig, tokenizer, seed: int):
    """A freshly initialised model (deterministic for ``seed``), float32, train mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = LlamaConfig(vocab_size=len(tokenizer), hidden_size=cfg.d_model, intermediate_size=cfg.d_mlp,
                     num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                     num_key_value_heads=cfg.n_kv_heads, max_position_embeddings=cfg.max_positions,
                     rope_theta=cfg.rope_theta, tie_word_embeddings=True, attention_bias=False,
                     mlp_bias=False, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id, initializer_range=0.02)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(hf)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    return model.float().train()


def save_checkpoint(model, tokenizer, folder: str | Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write config, weights (in ``dtype``) and tokenizer files to ``folder``; the model is left unchanged."""
    import copy

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stored = copy.deepcopy(model).to(dtype)
    stored.config.dtype = dtype
    stored.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def load_checkpoint(folder: str | Path, dtype: str | torch.dtype = "float32"):
    """``(model, tokenizer)`` from a zoo folder, offline, model in eval mode in ``dtype``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..models import resolve_dtype

    folder = Path(folder)
    if not (folder / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{folder} holds no {WEIGHTS_FILE}; rebuild the zoo with "
                                "`python -m eapbench.zoo` (or `eapbench zoo train`)")
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=resolve_dtype(dtype), local_files_only=True)
    return model.eval(), tok
