"""The mini model zoo: tiny Llama models post-trained from one SFT parent by GRPO, PPO and DPO.

The checkpoints ship inside the package (``eapbench/zoo/checkpoints/<name>/``) as ordinary
Hugging Face folders with a ``model_card.json`` beside the weights; rebuild them with
``python -m eapbench.zoo`` (``eapbench zoo train``). Prompt them with
``"Problem: {question}\\nSolution:"`` (the ``mini`` template).

May import: ``pipeline`` (the synthetic task and the grader) and the shared modules.
"""

from __future__ import annotations

from pathlib import Path

NAMES: tuple[str, ...] = ("sft", "grpo", "grpo-t0.6", "ppo", "dpo")
# The smol lineage (eapbench.zoo.smol): LoRA adapters of SmolLM2-135M-Instruct, shipped beside the mini models.
SMOL_NAMES: tuple[str, ...] = ("smol-sft", "smol-grpo", "smol-dpo")
PARENT = "sft"
TEMPLATE = "mini"


def default_checkpoint_dir() -> Path:
    return Path(__file__).resolve().parent / "checkpoints"


def checkpoint_path(name: str) -> Path:
    """Folder of the shipped checkpoint ``name`` (loadable with ``AutoModelForCausalLM.from_pretrained``; a
    smol name gives a PEFT adapter folder, loaded onto SmolLM2 by :func:`eapbench.models.load_model`)."""
    if name in SMOL_NAMES:  # a PEFT adapter folder (its base: smollm2)
        path = default_checkpoint_dir() / name
        if not (path / "adapter_model.safetensors").is_file():
            raise FileNotFoundError(f"smol adapter {name!r} is missing at {path}; rebuild the smol lineage with "
                                    "`eapbench zoo train --smol`")
        return path
    if name not in NAMES:
        raise ValueError(f"unknown zoo checkpoint {name!r}; choose from {NAMES + SMOL_NAMES}")
    path = default_checkpoint_dir() / name
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"zoo checkpoint {name!r} is missing at {path}; rebuild it with "
                                "`python -m eapbench.zoo` (or `eapbench zoo train`)")
    return path


def load(name: str, dtype: str = "float32"):
    """``(model, tokenizer)`` of a shipped checkpoint, offline, in ``dtype`` (float32 by default)."""
    from .model import load_checkpoint

    return load_checkpoint(checkpoint_path(name), dtype=dtype)


def card(name: str) -> dict:
    """The model card of a shipped checkpoint."""
    from .card import read_card

    return read_card(checkpoint_path(name))


def _register_names() -> None:
    from ..models import ZOO_PREFIX, register_name_prefix

    register_name_prefix(ZOO_PREFIX, checkpoint_path)  # zoo:<name> wherever a model is named


_register_names()

__all__ = ["NAMES", "SMOL_NAMES", "PARENT", "TEMPLATE", "checkpoint_path", "default_checkpoint_dir", "load", "card"]
