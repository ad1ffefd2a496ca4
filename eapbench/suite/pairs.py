"""Registry of model pairs: the paper's four, two real lineages, the mini zoo, and user pairs.

A :class:`PairSpec` is plain data: two :class:`~eapbench.records.ModelSpec` (base, tuned),
the post-training method, the family and what running it needs. Mini-zoo models are
referenced as ``zoo:<name>`` and resolved lazily through :func:`eapbench.zoo.checkpoint_path`,
so importing the registry never touches the zoo; ``smollm2`` names the offline SmolLM2-135M-Instruct,
and a PEFT adapter folder (or ``BASE+ADAPTER[+ADAPTER...]``) works wherever a model is named
(:func:`eapbench.models.load_model`). :func:`select_pairs` turns the suite's
``--pairs`` / ``--pair`` options into PairSpecs; :meth:`PairSpec.availability` says why a pair
cannot run here (no GPU, no weights), with the command that would run it.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..records import ModelSpec

ZOO_PREFIX = "zoo:"
SMOLLM2_NAME = "smollm2"  # the offline SmolLM2-135M-Instruct (eapbench.models.SMOLLM2_NAME)
GROUPS = ("mini", "paper", "lineages")
METHODS = ("grpo", "ppo", "rlvr", "dpo", "dpo+rlvr", "sft")

# One place for the defaults of each group (SPEC §4: α list; §7: datasets).
PAPER_DATASETS = ("math", "gsm8k", "college_math")
PAPER_ALPHAS = (0.03, 0.1, 0.3, 0.5)
LINEAGE_DATASETS = ("math", "gsm8k")
LINEAGE_ALPHAS = (0.1, 0.3, 0.5)
MINI_DATASETS = ("synthetic",)
MINI_ALPHAS = (0.3, 0.5)
MINI_GEN_BATCH = 64
MINI_MAX_NEW_TOKENS = 64  # reference solutions take at most 42 tokens of the zoo tokenizer (+ EOS)
MINI_LIMIT: int | None = 500  # the first 500 held-out problems: ~60% solved by the SFT model, >= 100 pairs survive

GPU_COMMAND = "pytest suites/ --pairs {group} --device cuda --dtype bfloat16"


@dataclass(frozen=True)
class PairSpec:
    """A base model and its post-trained counterpart, with what the suite needs to run them."""

    id: str
    base: ModelSpec
    tuned: ModelSpec
    method: str  # grpo | ppo | rlvr | dpo | dpo+rlvr | sft (see baselines/expectations.yaml)
    family: str
    group: str = "user"  # mini | paper | lineages | user
    datasets: tuple[str, ...] = MINI_DATASETS
    alphas: tuple[float, ...] = MINI_ALPHAS
    requires_gpu: bool = False
    dtype: str = "float32"  # dtype the pair is meant to run in
    description: str = ""
    allow_tokenizer_mismatch: bool = False
    gen_batch_size: int = 8  # generation batch (answers are greedy; mini models afford large batches)
    limit: int | None = None  # dataset problems used before selection (None: the whole dataset)
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", self.id):
            raise ValueError(f"pair id {self.id!r}: use letters, digits, '.', '_', '+', '-' only "
                             "(it becomes part of test ids and baseline paths)")
        if self.method not in METHODS:
            raise ValueError(f"pair {self.id!r}: unknown method {self.method!r}; use one of {METHODS}")

    @property
    def models(self) -> tuple[ModelSpec, ModelSpec]:
        return (self.base, self.tuned)

    def resolved(self) -> "PairSpec":
        """The same pair with ``zoo:`` references replaced by checkpoint folders."""
        return replace(self, base=resolve_model(self.base), tuned=resolve_model(self.tuned))

    def missing(self, device: str = "cpu") -> list[str]:
        """What running this pair on ``device`` needs that is not here (empty: nothing)."""
        missing = []
        if self.requires_gpu and not _cuda_ready(device):
            missing.append("a CUDA GPU" + ("" if device.startswith("cuda") else f" (this run: --device {device})"))
        for spec in self.models:
            reason = weights_missing(spec)
            if reason:
                missing.append(reason)
        return missing

    def availability(self, device: str = "cpu") -> str | None:
        """``None`` if the pair can run on ``device`` here, else why not and how to run it."""
        missing = self.missing(device)
        if not missing:
            return None
        group = self.group if self.group in GROUPS else None
        how = (GPU_COMMAND.format(group=group) if group in ("paper", "lineages")
               else f"pytest suites/ --pairs {self.id}")
        return "needs " + "; ".join(missing) + f". Run: `{how}`"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("meta")
        return d


def _cuda_ready(device: str) -> bool:
    if not device.startswith("cuda"):
        return False
    import torch

    return torch.cuda.is_available()


def resolve_model(spec: ModelSpec) -> ModelSpec:
    """Replace a ``zoo:<name>`` path by the shipped checkpoint folder (:func:`eapbench.zoo.checkpoint_path`).

    ``smollm2`` and PEFT adapters (``BASE+ADAPTER``, adapter folders) stay as named:
    :mod:`eapbench.models` resolves them where they are loaded or fingerprinted."""
    if not spec.path.startswith(ZOO_PREFIX) or is_adapter(spec.path):
        return spec
    name = spec.path[len(ZOO_PREFIX):]
    try:
        from .. import zoo
    except ImportError as exc:
        raise FileNotFoundError(f"model {spec.path!r}: the mini zoo (eapbench.zoo) is not importable: {exc}") from exc
    path = Path(zoo.checkpoint_path(name))
    return replace(spec, path=str(path), name=spec.name or f"mini-{name}")


def model_provenance(spec: ModelSpec) -> dict[str, Any]:
    """How a baseline records a model: hub id or path, revision, name, template.

    A mini-zoo model is recorded machine-independently as ``zoo:<name>`` with the sha256 of its
    weights file (computed from the file, so it is what was measured, whatever the card says),
    never as the storing machine's absolute checkpoint folder."""
    out: dict[str, Any] = {"path": spec.path, "revision": spec.revision, "name": spec.name, "template": spec.template}
    from ..models import adapter_chain

    chain = adapter_chain(spec.path, spec.gguf_file)
    if chain is not None:
        out["adapter"] = adapter_provenance(chain, spec)
        return out
    if spec.path == SMOLLM2_NAME:
        from ..cache import file_sha256
        from ..models import smollm2_gguf_path

        gguf = smollm2_gguf_path()
        out["sha256"] = {gguf.name: file_sha256(gguf)}
        return out
    if spec.path.startswith(ZOO_PREFIX):
        from ..cache import file_sha256

        resolved = resolve_model(spec)
        out["name"] = resolved.name
        weights = Path(resolved.path) / "model.safetensors"
        out["sha256"] = {"model.safetensors": file_sha256(weights)} if weights.is_file() else None
    return out


def adapter_provenance(chain, spec: ModelSpec) -> dict[str, Any]:
    """``{path, sha256, base}`` of a chain's last adapter; ``base`` is the provenance of what it was
    applied to: the plain base model, or (chained adapters) the same record of the adapter before it."""
    from ..models import adapter_sha256

    parent = chain.parent()
    base = (adapter_provenance(parent, spec) if parent is not None
            else model_provenance(ModelSpec(chain.base, spec.template, revision=spec.revision)))
    last = chain.adapters[-1]
    # a shipped adapter named zoo:<name> (zoo:smol-sft) is recorded by that name, not by this machine's folder
    path = spec.path if parent is None and spec.path.startswith(ZOO_PREFIX) else str(last)
    return {"path": path, "sha256": adapter_sha256(last), "base": base}


def is_adapter(path: str) -> bool:
    """Whether a model name is a PEFT adapter: a folder with ``adapter_config.json`` or ``BASE+ADAPTER``."""
    from ..models import is_adapter_name

    return is_adapter_name(path)


def weights_missing(spec: ModelSpec) -> str | None:
    """Why ``spec``'s weights are not on this machine (``None`` if they are)."""
    if is_adapter(spec.path):
        return _adapter_missing(spec)
    if spec.path == SMOLLM2_NAME:
        from ..models import smollm2_gguf_path

        try:
            smollm2_gguf_path()
        except FileNotFoundError as exc:
            return f"the offline SmolLM2 model {SMOLLM2_NAME!r} ({exc})"
        return None
    if spec.path.startswith(ZOO_PREFIX):
        try:
            path = Path(resolve_model(spec).path)
        except (FileNotFoundError, KeyError, ValueError) as exc:
            return f"mini checkpoint {spec.path!r} ({exc})"
        if not (path / "config.json").is_file():
            return (f"mini checkpoint {spec.path!r} at {path} (no config.json; "
                    "rebuild the zoo with `eapbench zoo train`)")
        return None
    local = Path(os.path.expanduser(spec.path))
    if local.exists():
        if local.is_dir() and spec.gguf_file and not (local / spec.gguf_file).is_file():
            return f"a GGUF file {local / spec.gguf_file} (no such file)"
        if local.is_dir() and not ((local / "config.json").is_file() or spec.gguf_file):
            return f"a model at {local} (folder has no config.json)"
        return None
    if _looks_like_hub_id(spec.path):
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(spec.path, "config.json", revision=spec.revision)
        if isinstance(hit, str):
            return None
        rev = f" --revision {spec.revision}" if spec.revision else ""
        return f"weights of {spec.path} (`hf download {spec.path}{rev}`)"
    return f"a model at {spec.path} (no such folder)"


def _adapter_missing(spec: ModelSpec) -> str | None:
    from ..models import ADAPTER_WEIGHTS, AdapterError, adapter_chain

    try:
        chain = adapter_chain(spec.path, spec.gguf_file)
    except AdapterError as exc:
        return f"a usable PEFT adapter {spec.path} ({exc})"
    assert chain is not None
    for folder in chain.adapters:
        if not any((folder / w).is_file() for w in ADAPTER_WEIGHTS):
            return f"the weights of PEFT adapter {folder} (no {' or '.join(ADAPTER_WEIGHTS)})"
    base, gguf = split_gguf(chain.base)
    why = weights_missing(ModelSpec(base, spec.template, revision=spec.revision, gguf_file=gguf))
    return None if why is None else f"{why}, {chain.base_hint()}"


def _looks_like_hub_id(path: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", path)) and not path.startswith((".", "/"))


# --------------------------------------------------------------------------- the registry

def _paper(id: str, base: str, tuned: str, method: str, family: str, template: str,
           max_new_tokens: int, description: str) -> PairSpec:
    return PairSpec(
        id=id, method=method, family=family, group="paper",
        base=ModelSpec(base, template, max_new_tokens=max_new_tokens, name=base.split("/")[-1]),
        tuned=ModelSpec(tuned, template, max_new_tokens=max_new_tokens, name=tuned.split("/")[-1]),
        datasets=PAPER_DATASETS, alphas=PAPER_ALPHAS, requires_gpu=True, dtype="bfloat16",
        description=description)


def _lineage(id: str, base: str, tuned: str, method: str, family: str, template: str,
             description: str) -> PairSpec:
    return PairSpec(
        id=id, method=method, family=family, group="lineages",
        base=ModelSpec(base, template, max_new_tokens=2048, name=base.split("/")[-1]),
        tuned=ModelSpec(tuned, template, max_new_tokens=2048, name=tuned.split("/")[-1]),
        datasets=LINEAGE_DATASETS, alphas=LINEAGE_ALPHAS, requires_gpu=True, dtype="bfloat16",
        description=description)


def _mini(id: str, tuned: str, method: str, description: str) -> PairSpec:
    return PairSpec(
        id=id, method=method, family="mini", group="mini",
        base=ModelSpec(ZOO_PREFIX + "sft", "mini", max_new_tokens=MINI_MAX_NEW_TOKENS, name="mini-sft"),
        tuned=ModelSpec(ZOO_PREFIX + tuned, "mini", max_new_tokens=MINI_MAX_NEW_TOKENS, name=f"mini-{tuned}"),
        datasets=MINI_DATASETS, alphas=MINI_ALPHAS, requires_gpu=False, dtype="float32",
        gen_batch_size=MINI_GEN_BATCH, limit=MINI_LIMIT, description=description)


_OLMO = "allenai/OLMo-2-0425-1B-"
_TULU = "allenai/Llama-3.1-Tulu-3-8B"

REGISTRY: dict[str, PairSpec] = {p.id: p for p in (
    # SPEC §7: the paper's four pairs.
    _paper("deepseek-math-grpo", "deepseek-ai/deepseek-math-7b-instruct", "deepseek-ai/deepseek-math-7b-rl",
           "grpo", "deepseek-math", "deepseek-math", 4096, "DeepSeek-Math 7B instruct -> RL (GRPO)"),
    _paper("mistral-ppo", "peiyi9979/mistral-7b-sft", "peiyi9979/math-shepherd-mistral-7b-rl",
           "ppo", "mistral", "mistral", 4096, "Mistral 7B SFT -> Math-Shepherd PPO (step-level PRM)"),
    _paper("distill-qwen-grpo", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "nvidia/AceReason-Nemotron-7B",
           "grpo", "distill-qwen", "r1-distill", 32768, "R1-Distill-Qwen 7B -> AceReason-Nemotron (GRPO)"),
    _paper("qwen25-dpo", "RLHFlow/Qwen2.5-7B-SFT", "RLHFlow/Qwen2.5-7B-DPO",
           "dpo", "qwen2.5", "qwen25-math-cot", 8192, "Qwen2.5 7B SFT -> iterative DPO (the paper's offline pair)"),
    # SPEC §7: controlled lineages (SFT, DPO and RLVR checkpoints of one base).
    _lineage("olmo2-1b-sft-dpo", _OLMO + "SFT", _OLMO + "DPO", "dpo", "olmo2", "chat", "OLMo-2 1B SFT -> DPO"),
    _lineage("olmo2-1b-dpo-rlvr", _OLMO + "DPO", _OLMO + "RLVR1", "rlvr", "olmo2", "chat", "OLMo-2 1B DPO -> RLVR"),
    _lineage("olmo2-1b-sft-rlvr", _OLMO + "SFT", _OLMO + "RLVR1", "dpo+rlvr", "olmo2", "chat",
             "OLMo-2 1B SFT -> RLVR (through DPO)"),
    _lineage("tulu3-8b-sft-dpo", _TULU + "-SFT", _TULU + "-DPO", "dpo", "tulu3", "chat", "Tulu-3 8B SFT -> DPO"),
    _lineage("tulu3-8b-dpo-rlvr", _TULU + "-DPO", _TULU, "rlvr", "tulu3", "chat", "Tulu-3 8B DPO -> RLVR"),
    _lineage("tulu3-8b-sft-rlvr", _TULU + "-SFT", _TULU, "dpo+rlvr", "tulu3", "chat",
             "Tulu-3 8B SFT -> RLVR (through DPO)"),
    # The mini zoo (eapbench.zoo): CPU-sized pairs that share one SFT base.
    _mini("mini-grpo", "grpo", "grpo", "mini SFT -> GRPO"),
    _mini("mini-ppo", "ppo", "ppo", "mini SFT -> PPO"),
    _mini("mini-dpo", "dpo", "dpo", "mini SFT -> offline DPO"),
    _mini("mini-grpo-t0.6", "grpo-t0.6", "grpo",
          "temperature control: GRPO with sampling temperature 0.6 instead of 1.0"),
)}


def group(name: str) -> tuple[PairSpec, ...]:
    """All registered pairs of a group (``mini``, ``paper``, ``lineages`` or ``all``)."""
    if name == "all":
        return tuple(REGISTRY.values())
    if name not in GROUPS:
        raise ValueError(f"unknown pair group {name!r}; use one of {GROUPS + ('all',)}")
    return tuple(p for p in REGISTRY.values() if p.group == name)


def get_pair(pair_id: str) -> PairSpec:
    try:
        return REGISTRY[pair_id]
    except KeyError:
        raise KeyError(f"unknown pair {pair_id!r}; registered pairs: {', '.join(REGISTRY)}; "
                       "groups: mini, paper, lineages, all; or describe your own with --pair") from None


# --------------------------------------------------------------------------- user pairs

_PAIR_KEYS = {"name", "base", "tuned", "method", "template", "family", "max_new_tokens", "gen_batch_size", "limit",
              "datasets", "alphas", "dtype", "requires_gpu", "base_revision", "tuned_revision",
              "base_gguf", "tuned_gguf", "allow_tokenizer_mismatch", "description"}


def split_gguf(path: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """``(folder, gguf_file)`` for a model path: a path ending in ``.gguf`` names the file inside its folder."""
    if gguf_file is None and str(path).lower().endswith(".gguf") and not path.startswith(ZOO_PREFIX):
        p = Path(os.path.expanduser(str(path)))
        return str(p.parent), p.name
    return str(path), gguf_file


def pair_from_mapping(d: Mapping[str, Any], *, where: str = "pair") -> PairSpec:
    """Build a user PairSpec from a dict (keys as in ``--pair``; lists allowed for datasets/alphas)."""
    unknown = set(d) - _PAIR_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(_PAIR_KEYS)}")
    missing = [k for k in ("name", "base", "tuned", "method") if not d.get(k)]
    if missing:
        raise ValueError(f"{where}: missing {missing}; e.g. "
                         "name=my-pair,base=PATH_OR_ID,tuned=PATH_OR_ID,method=grpo[,template=...]")
    template = str(d.get("template") or "mini")

    def convert(key: str, cast, x):
        try:
            if cast is int and isinstance(x, float) and not x.is_integer():
                raise ValueError
            return cast(x)
        except (TypeError, ValueError):
            kind = {int: "an integer", float: "a number"}.get(cast, cast.__name__)
            raise ValueError(f"{where}: key {key!r}: {x!r} is not {kind}") from None

    def number(key: str, cast, default, minimum=1):
        v = d.get(key)
        if v is None or v == "":
            return default
        n = convert(key, cast, v)
        if n < minimum:
            raise ValueError(f"{where}: key {key!r}: {v!r} must be >= {minimum}")
        return n

    def seq(key: str, cast, default):
        v = d.get(key)
        if v is None or v == "":
            return default
        if isinstance(v, str):
            v = [x for x in re.split(r"[;|\s]+", v) if x]
        elif not isinstance(v, (list, tuple)):
            v = [v]
        return tuple(convert(key, cast, x) for x in v)

    mnt = number("max_new_tokens", int, 1024)
    alphas = seq("alphas", float, (0.3,))
    bad = [a for a in alphas if not 0 < a <= 1]
    if bad:
        raise ValueError(f"{where}: key 'alphas': {bad} out of range; an answer fraction alpha must be "
                         "in (0, 1], e.g. 0.3")

    def flag(key: str) -> bool:
        v = d.get(key, False)
        return v if isinstance(v, bool) else str(v).lower() in ("1", "true", "yes")

    base, base_gguf = split_gguf(str(d["base"]), d.get("base_gguf") or None)
    tuned, tuned_gguf = split_gguf(str(d["tuned"]), d.get("tuned_gguf") or None)
    return PairSpec(
        id=str(d["name"]), method=str(d["method"]).lower(), family=str(d.get("family") or "user"),
        group="user",
        base=ModelSpec(base, template, max_new_tokens=mnt, revision=d.get("base_revision"), gguf_file=base_gguf,
                       name="base"),
        tuned=ModelSpec(tuned, template, max_new_tokens=mnt, revision=d.get("tuned_revision"),
                        gguf_file=tuned_gguf, name="tuned"),
        datasets=seq("datasets", str, ("synthetic",) if template == "mini" else ("gsm8k",)),
        alphas=alphas,
        dtype=str(d.get("dtype") or "float32"), requires_gpu=flag("requires_gpu"),
        allow_tokenizer_mismatch=flag("allow_tokenizer_mismatch"),
        gen_batch_size=number("gen_batch_size", int, 8),
        limit=number("limit", int, None),
        description=str(d.get("description") or f"user pair {base} -> {tuned}"))


def parse_pair(text: str) -> PairSpec:
    """Parse ``name=...,base=PATH_OR_ID,tuned=PATH_OR_ID,method=grpo[,template=...,datasets=a;b,alphas=0.1;0.3]``.

    Commas separate fields; use ``;`` inside list values (datasets, alphas). A template
    format string containing commas must come from a YAML file instead.
    """
    fields: dict[str, str] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise ValueError(f"--pair {text!r}: field {part!r} is not key=value; expected "
                             "name=...,base=PATH_OR_ID,tuned=PATH_OR_ID,method=grpo[,template=...]")
        k, v = part.split("=", 1)
        fields[k.strip()] = v.strip()
    return pair_from_mapping(fields, where=f"--pair {text!r}")


def load_pairs_yaml(path: str | os.PathLike) -> tuple[PairSpec, ...]:
    """Read user pairs from YAML: a list of mappings, or ``{pairs: [...]}``."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"pairs file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"pairs file {p} is not valid YAML: {exc}") from exc
    if isinstance(data, dict) and "pairs" in data:
        data = data["pairs"]
    if not isinstance(data, list) or not all(isinstance(x, dict) for x in data):
        raise ValueError(f"pairs file {p}: expected a list of pairs (mappings with name, base, tuned, method)")
    return tuple(pair_from_mapping(x, where=f"{p} pair #{i}") for i, x in enumerate(data))


def select_pairs(pairs: str | Iterable[str] = "mini", user: Iterable[str] = ()) -> tuple[PairSpec, ...]:
    """Pairs named by ``--pairs`` (groups or ids, comma-separated; ``none`` for no registered pair)
    plus ``--pair`` specs or YAML files.

    Order is preserved and duplicates are dropped; a user pair may not reuse a registered id.
    """
    names = [x.strip() for x in (pairs.split(",") if isinstance(pairs, str) else pairs)
             if x.strip() and x.strip() != "none"]
    out: dict[str, PairSpec] = {}
    for n in names:
        for p in (group(n) if n in GROUPS + ("all",) else (get_pair(n),)):
            out.setdefault(p.id, p)
    for u in user:
        specs = load_pairs_yaml(u) if u.endswith((".yaml", ".yml")) else (parse_pair(u),)
        for p in specs:
            if p.id in REGISTRY or p.id in out:
                raise ValueError(f"user pair id {p.id!r} is already taken; choose another name=")
            out[p.id] = p
    return tuple(out.values())
