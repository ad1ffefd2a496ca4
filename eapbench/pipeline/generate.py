"""Greedy generation of the models' own answers, cached on disk and resumable.

:func:`generate` runs batched greedy decoding (left padding, KV cache, stop at EOS, at most
``max_new_tokens``) with ``transformers`` (``backend="hf"``), or with vLLM (``backend="vllm"``: only
when vLLM is importable and the device is CUDA, :func:`vllm_unavailable`; ``"auto"``: vLLM there,
else ``transformers``). Both backends get the same prompt token ids, decode greedily, stop at the
same EOS ids and cap answers at the same ``max_new_tokens``; the vLLM path is tested here only
with vLLM faked (no GPU in CI).

Results are cached under ``<cache root>/generations/<key>/`` where the key hashes the model
fingerprint (:func:`model_fingerprint`: config, tokenizer files and weight-file hashes of a
local folder, or the pinned commit of a hub model), the dataset name, the template and the
decoding settings, and not the backend: vLLM and ``transformers`` answers share one cache (both
are greedy; in bf16 they can differ on near-ties, as two batch compositions of one backend can).
Each finished batch is written atomically as its own shard, with the backend that made it
(:class:`GenerationRun` counts them), so an interrupted run resumes with the problems it had not
reached. A changed checkpoint has a new fingerprint, hence a new key: its stale generations are
never reused (a warning says so).

Batches are formed from the problems still missing, longest prompt first, at most
``batch_size`` each and, with ``token_budget``, at most as many as keep
``rows x (longest prompt + max_new_tokens)`` within the budget (:func:`plan_batches`; this bounds
the KV cache of a batch, for long answers on a GPU). The padding of a batch can change
floating-point results slightly, so a resumed run is not guaranteed to be bit-identical to an
uninterrupted one (greedy ties are rare). The batch size is recorded in each shard, not in the
key. vLLM gets the problems in chunks of :data:`VLLM_CHUNK` (one shard each) and schedules them
itself; ``batch_size`` and ``token_budget`` apply to ``transformers`` only.

Every run reports what it decoded: answer tokens generated in this call (each answer's tokens
plus the EOS that ended it; cached answers count 0), the decoding seconds (model loading
excluded) and tokens/s (:class:`GenerationRun`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..cache import atomic_write_text, cache_dir, drop_corrupt, file_sha256, read_json_entry, stable_hash
from .prompts import Template, get_template
from ..records import ModelSpec, Problem

log = logging.getLogger(__name__)

__all__ = ["Generation", "GenerationRun", "generate", "model_fingerprint", "tokenize_prompts",
           "greedy_generate", "load_tokenizer", "eos_token_ids", "plan_batches", "vllm_unavailable",
           "resolve_backend", "CACHE_FORMAT", "BACKENDS"]

CACHE_FORMAT = 1  # bump when the shard layout changes
BACKENDS = ("hf", "vllm", "auto")
VLLM_CHUNK = 512  # prompts per vLLM call (and per cache shard): vLLM batches them itself
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                    "merges.txt", "tokenizer.model", "added_tokens.json", "chat_template.jinja",
                    "chat_template.json", "generation_config.json")


@dataclass(frozen=True)
class Generation:
    """One model's greedy answer to one problem, as token ids (EOS and padding excluded)."""

    problem_id: str
    prompt_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]
    text: str  # answer_ids decoded, special tokens skipped
    finished: bool  # stopped at EOS; False when it ran into max_new_tokens
    question_hash: str = ""  # detects a cached entry whose problem text changed

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["prompt_ids"], d["answer_ids"] = list(self.prompt_ids), list(self.answer_ids)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Generation":
        return cls(problem_id=d["problem_id"], prompt_ids=tuple(d["prompt_ids"]), answer_ids=tuple(d["answer_ids"]),
                   text=d["text"], finished=bool(d["finished"]), question_hash=d.get("question_hash", ""))


@dataclass(frozen=True)
class GenerationRun:
    """All generations of one model on a list of problems, in the problems' order."""

    model: str
    key: str  # cache key ("" when caching is off)
    fingerprint: dict[str, Any] = field(compare=False)
    settings: dict[str, Any] = field(compare=False)
    generations: tuple[Generation, ...] = ()
    n_generated: int = 0  # decoded in this call
    n_cached: int = 0  # taken from the cache
    cache_path: str | None = None
    backend: str = "hf"  # the backend that decoded this call's answers (resolved: hf or vllm)
    backends: dict[str, int] = field(default_factory=dict, compare=False)  # answers per backend that made them
    n_new_tokens: int = 0  # tokens decoded in this call (answer + its EOS); cached answers count 0
    seconds: float = field(default=0.0, compare=False)  # decoding wall time in this call (loading excluded)
    load_seconds: float = field(default=0.0, compare=False)  # loading the model / starting the engine

    @property
    def tokens_per_s(self) -> float | None:
        """Decoded tokens per second in this call (None when nothing was decoded)."""
        return round(self.n_new_tokens / self.seconds, 2) if self.n_new_tokens and self.seconds > 0 else None

    def stats(self) -> dict[str, Any]:
        """This call's generation figures, for provenance."""
        return {"backend": self.backend, "backends": dict(self.backends), "n_generated": self.n_generated,
                "n_cached": self.n_cached, "n_new_tokens": self.n_new_tokens, "seconds": round(self.seconds, 3),
                "load_seconds": round(self.load_seconds, 3), "tokens_per_s": self.tokens_per_s}

    def __len__(self) -> int:
        return len(self.generations)

    def by_id(self) -> dict[str, Generation]:
        return {g.problem_id: g for g in self.generations}


# ---------------------------------------------------------------- fingerprints

_HEX40 = re.compile(r"^[0-9a-f]{40}$")


def _hash_file_memo(path: Path) -> str:
    """sha256 of a file, memoised by (path, size, mtime) so multi-GB weights are hashed once."""
    st = path.stat()
    memo = cache_dir("fingerprints") / f"{stable_hash(str(path.resolve()))}.json"
    stamp = {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    saved = read_json_entry(memo, "fingerprint memo")
    if saved is not None and {k: saved.get(k) for k in stamp} == stamp and isinstance(saved.get("sha256"), str):
        return saved["sha256"]
    digest = file_sha256(path)
    atomic_write_text(memo, json.dumps({**stamp, "sha256": digest}))
    return digest


def model_fingerprint(spec: ModelSpec) -> dict[str, Any]:
    """What identifies a checkpoint's exact weights and tokenizer, for cache keys.

    Local folder: ``config.json`` (parsed), the sha256 of every weight file (only
    ``spec.gguf_file`` among GGUFs when one is named) and of the tokenizer files. Hub id:
    the resolved commit, taken from ``spec.revision`` when it is a full commit hash, else from
    the local hub cache, else from the hub; an unresolvable hub model is an error (pin a revision).
    A PEFT adapter: the sha256 of its files and its base's fingerprint (:func:`eapbench.models.load_model`).
    """
    from dataclasses import replace

    from ..models import adapter_chain, resolve_plain

    chain = adapter_chain(spec.path, spec.gguf_file)
    if chain is not None:
        return chain.fingerprint(lambda base, gguf: model_fingerprint(replace(spec, path=base, gguf_file=gguf)))
    plain, gguf_file = resolve_plain(spec.path, spec.gguf_file)
    if (plain, gguf_file) != (spec.path, spec.gguf_file):
        return model_fingerprint(replace(spec, path=plain, gguf_file=gguf_file))
    path = Path(spec.path)
    if path.is_dir():
        files: dict[str, str] = {}
        weights = 0
        for f in sorted(path.iterdir()):
            if not f.is_file():
                continue
            if f.suffix in _WEIGHT_SUFFIXES:
                if f.suffix == ".gguf" and spec.gguf_file is not None and f.name != spec.gguf_file:
                    continue
                files[f.name] = _hash_file_memo(f)
                weights += 1
            elif f.name in _TOKENIZER_FILES:
                files[f.name] = file_sha256(f)
        if weights == 0:
            raise FileNotFoundError(f"model folder {path} has no weight file ({', '.join(_WEIGHT_SUFFIXES)}); "
                                    "is it a Hugging Face checkpoint folder?")
        config = None
        if (path / "config.json").is_file():
            config = json.loads((path / "config.json").read_text())
        elif spec.gguf_file is None:
            raise FileNotFoundError(f"model folder {path} has no config.json")
        return {"kind": "local", "config": config, "files": files, "gguf_file": spec.gguf_file}
    if path.exists():
        raise ValueError(f"model path {path} is a file; pass its folder as path and the file name as gguf_file")
    return {"kind": "hub", "repo": spec.path, "commit": _hub_commit(spec), "gguf_file": spec.gguf_file}


def _hub_commit(spec: ModelSpec) -> str:
    if spec.revision and _HEX40.match(spec.revision):
        return spec.revision
    revision = spec.revision or "main"
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(spec.path, spec.gguf_file or "config.json", revision=revision)
        if isinstance(cached, str):
            parts = Path(cached).parts
            if "snapshots" in parts:
                return parts[parts.index("snapshots") + 1]
    except Exception as e:  # an odd cache layout is not fatal: ask the hub next
        log.debug("hub cache lookup for %s failed: %s", spec.path, e)
    try:
        from huggingface_hub import HfApi

        return HfApi().model_info(spec.path, revision=revision).sha
    except Exception as e:
        raise ValueError(
            f"cannot fingerprint {spec.path!r}: it is not a local folder, not in the local hub cache at "
            f"revision {revision!r}, and the hub could not be asked ({type(e).__name__}: {e}). Pin the commit "
            "in ModelSpec.revision (40 hex digits) or pass a local folder") from None


# ---------------------------------------------------------------- tokenization and decoding

def load_tokenizer(spec: ModelSpec) -> Any:
    """The tokenizer of ``spec``'s checkpoint (local folder, GGUF file, hub id, PEFT adapter:
    :func:`eapbench.models.load_tokenizer`)."""
    from ..models import load_tokenizer as load

    return load(spec.path, gguf_file=spec.gguf_file, revision=spec.revision)


def tokenize_prompts(tokenizer: Any, template: str | Template, problems: Sequence[Problem]) -> list[list[int]]:
    """Prompt token ids for each problem under ``template`` (BOS per the template's setting)."""
    tpl = get_template(template)
    out = []
    for p in problems:
        text = tpl.format(p.question, tokenizer)
        ids = tokenizer(text, add_special_tokens=tpl.add_special_tokens)["input_ids"]
        if not ids:
            raise ValueError(f"problem {p.id}: the prompt tokenized to nothing")
        out.append(list(ids))
    return out


def eos_token_ids(model: Any, tokenizer: Any, spec: ModelSpec | None = None) -> list[int]:
    """Every token id that ends an answer: the tokenizer's EOS and the model's generation EOS ids.

    Without a loaded ``model``, the generation config is read from ``spec``'s checkpoint.
    """
    ids: set[int] = set()
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_config = getattr(model, "generation_config", None)
    if gen_config is None and spec is not None:
        from transformers import GenerationConfig

        try:
            gen_config = GenerationConfig.from_pretrained(spec.path, revision=spec.revision)
        except OSError:
            gen_config = None
    gen_eos = getattr(gen_config, "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif isinstance(gen_eos, (list, tuple)):
        ids.update(int(i) for i in gen_eos)
    if not ids:
        raise ValueError("the tokenizer and the model define no EOS token; greedy decoding could not stop")
    return sorted(ids)


def _cut_at_eos(tokens: Sequence[int], eos: set[int]) -> tuple[tuple[int, ...], bool]:
    for i, t in enumerate(tokens):
        if t in eos:
            return tuple(tokens[:i]), True
    return tuple(tokens), False


def greedy_generate(model: Any, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, eos_ids: Sequence[int],
                    pad_id: int) -> list[tuple[tuple[int, ...], bool]]:
    """One batch of greedy decoding with ``transformers``: left padding, KV cache, stop at EOS.

    Returns ``(answer_ids, finished)`` per prompt, answer ids cut before the first EOS.
    """
    import torch
    from transformers import GenerationConfig

    from ..models import input_device

    width = max(len(p) for p in prompts)
    device = input_device(model)  # a dispatched model's weights may be on meta: its embedding's device
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = torch.tensor(p, dtype=torch.long)
        attn[r, width - len(p):] = 1
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=True,
                              eos_token_id=list(eos_ids), pad_token_id=pad_id)
    with torch.inference_mode():
        out = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device), generation_config=config)
    new = out[:, width:].tolist()
    eos = set(eos_ids)
    return [_cut_at_eos(row, eos) for row in new]


def plan_batches(lengths: Sequence[int], *, batch_size: int, max_new_tokens: int,
                 token_budget: int | None = None) -> list[list[int]]:
    """Indices into ``lengths`` (prompt lengths) grouped into generation batches, longest prompt first.

    Each batch holds at most ``batch_size`` prompts and, with ``token_budget``, at most as many as keep
    ``rows * (longest prompt + max_new_tokens) <= token_budget`` (a prompt that alone exceeds the
    budget gets a batch of its own). Without a budget: consecutive slices of ``batch_size``.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable: ties keep the caller's order
    batches: list[list[int]] = []
    for i in order:
        if batches:
            last = batches[-1]
            width = lengths[last[0]]  # the first prompt of a batch is its longest
            fits = token_budget is None or (len(last) + 1) * (width + max_new_tokens) <= token_budget
            if len(last) < batch_size and fits:
                last.append(i)
                continue
        batches.append([i])
    return batches


def vllm_unavailable(device: str = "cuda") -> str | None:
    """Why vLLM cannot generate on ``device`` here (a phrase), or None when it can."""
    import importlib.util

    if not str(device).startswith("cuda"):
        return f"vLLM runs on CUDA GPUs only and this run's device is {device}"
    if importlib.util.find_spec("vllm") is None:
        return "the vllm package is not installed here (`pip install vllm`)"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    return None


def resolve_backend(backend: str, device: str = "cuda") -> str:
    """``hf`` or ``vllm``: ``auto`` is vLLM where :func:`vllm_unavailable` finds nothing missing, else hf."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use one of {BACKENDS}")
    if backend == "auto":
        return "vllm" if vllm_unavailable(device) is None else "hf"
    return backend


def _vllm_available(device: str = "cuda") -> bool:
    return vllm_unavailable(device) is None


# ---------------------------------------------------------------- cache

def _question_hash(p: Problem) -> str:
    return stable_hash(p.question, 12)


def _load_shards(folder: Path, made_by: dict[str, str] | None = None) -> dict[str, Generation]:
    """Cached generations by problem id (``made_by``, when given, gets each one's backend)."""
    found: dict[str, Generation] = {}
    for shard in sorted(folder.glob("part-*.json")):
        data = read_json_entry(shard, "generation cache shard")
        if data is None:
            continue
        try:
            gens = [Generation.from_dict(d) for d in data["generations"]]
        except (KeyError, TypeError, ValueError, AttributeError) as e:  # valid JSON, not a shard
            drop_corrupt(shard, "generation cache shard", e)
            continue
        found.update((g.problem_id, g) for g in gens)
        if made_by is not None:
            backend = data.get("backend", "unknown") if isinstance(data, dict) else "unknown"
            made_by.update((g.problem_id, str(backend)) for g in gens)
    return found


def _warn_if_checkpoint_changed(root: Path, key: str, meta: dict[str, Any]) -> None:
    for other in root.glob("*/meta.json"):
        if other.parent.name == key:
            continue
        m = read_json_entry(other, "generation cache meta.json")
        if m is None:
            continue
        same_job = all(m.get(k) == meta[k] for k in ("model_path", "dataset", "template", "settings"))
        if same_job and m.get("fingerprint") != meta["fingerprint"]:
            log.warning("cached generations for %s in %s were made by a different checkpoint (fingerprint "
                        "changed); they are not reused and the answers are generated again",
                        meta["model_path"], other.parent)


# ---------------------------------------------------------------- entry point

def generate(spec: ModelSpec, problems: Sequence[Problem], *, dataset: str, model: Any = None,
             tokenizer: Any = None, batch_size: int = 8, max_new_tokens: int | None = None,
             device: str = "cpu", dtype: str = "float32", backend: str = "hf", cache: bool = True,
             progress: bool = True, device_map: str | None = None, max_memory: str | None = None,
             token_budget: int | None = None) -> GenerationRun:
    """Greedy answers of ``spec``'s model to ``problems`` (cached; see the module docstring).

    ``model``/``tokenizer`` may be passed already loaded (they must be ``spec``'s); otherwise they
    are loaded only if some problem is not cached (``device_map``/``max_memory``: spread over
    devices, :func:`eapbench.models.load_model`). ``max_new_tokens`` defaults to
    ``spec.max_new_tokens``. ``dataset`` names the problem set in the cache key. ``backend``:
    ``hf``, ``vllm`` (a RuntimeError where :func:`vllm_unavailable` says why not) or ``auto``.
    ``token_budget`` (hf): see :func:`plan_batches`.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if token_budget is not None and token_budget < 1:
        raise ValueError(f"token_budget must be >= 1 (or None), got {token_budget}")
    backend = resolve_backend(backend, device)
    if backend == "vllm" and (why := vllm_unavailable(device)) is not None:
        raise RuntimeError(f"backend='vllm' needs the vllm package and a CUDA GPU ({why}); use backend='hf'")
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        raise ValueError("problem ids must be unique within one generation run")
    max_new_tokens = spec.max_new_tokens if max_new_tokens is None else max_new_tokens
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    tpl = get_template(spec.template)
    # The backend is not a setting of the answers (module docstring): each shard records it instead.
    settings = {"max_new_tokens": max_new_tokens, "decoding": "greedy", "dtype": str(dtype)}

    fingerprint: dict[str, Any] = {}
    key, folder, cached = "", None, {}
    made_by: dict[str, str] = {}
    if cache:
        fingerprint = model_fingerprint(spec)
        meta = {"format": CACHE_FORMAT, "model_path": spec.path, "fingerprint": fingerprint, "dataset": dataset,
                "template": tpl.fingerprint(), "settings": settings}
        key = stable_hash(meta, 20)
        root = cache_dir("generations")
        folder = root / key
        meta_json = json.dumps(meta, indent=1, sort_keys=True, default=str)
        found = read_json_entry(folder / "meta.json", "generation cache meta.json")  # None: new, or was corrupt
        if found is not None and found != json.loads(meta_json):
            drop_corrupt(folder / "meta.json", "generation cache meta.json", ValueError("it does not match its key"))
            found = None
        if found is None:
            _warn_if_checkpoint_changed(root, key, meta)
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(folder / "meta.json", meta_json)
        cached = _load_shards(folder, made_by)
    usable = {p.id: cached[p.id] for p in problems
              if p.id in cached and cached[p.id].question_hash == _question_hash(p)}
    todo = [p for p in problems if p.id not in usable]
    log.info("%s on %s: %d cached, %d to generate", spec.label, dataset, len(usable), len(todo))

    fresh: dict[str, Generation] = {}
    n_new_tokens, seconds, load_seconds = 0, 0.0, 0.0
    if todo:
        t_load = time.perf_counter()
        if tokenizer is None:
            tokenizer = load_tokenizer(spec)
        if backend == "hf" and model is None:
            from ..models import load_model

            model, _ = load_model(spec.path, dtype=dtype, device=device, gguf_file=spec.gguf_file,
                                  revision=spec.revision, device_map=device_map, max_memory=max_memory)
        prompts = tokenize_prompts(tokenizer, tpl, todo)
        by_id = sorted(range(len(todo)), key=lambda i: todo[i].id)  # ties in length: by problem id
        bar = tqdm(total=len(todo), desc=f"generate {spec.label} on {dataset}", disable=not progress, unit="problem")
        if backend == "vllm":
            eos = eos_token_ids(None, tokenizer, spec)
            runner = _VllmRunner(spec, dtype, max_new_tokens, eos)
            plan = plan_batches([len(prompts[i]) for i in by_id], batch_size=VLLM_CHUNK,
                                max_new_tokens=max_new_tokens)
        else:
            runner = None
            eos = eos_token_ids(model, tokenizer)
            plan = plan_batches([len(prompts[i]) for i in by_id], batch_size=batch_size,
                                max_new_tokens=max_new_tokens, token_budget=token_budget)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
        load_seconds = time.perf_counter() - t_load
        t_decode = time.perf_counter()
        try:
            for rows in plan:
                idx = [by_id[r] for r in rows]
                batch_prompts = [prompts[i] for i in idx]
                if runner is None:
                    outs = greedy_generate(model, batch_prompts, max_new_tokens=max_new_tokens, eos_ids=eos,
                                           pad_id=pad_id)
                else:
                    outs = runner(batch_prompts)
                batch = []
                for i, (answer, finished) in zip(idx, outs):
                    p = todo[i]
                    g = Generation(problem_id=p.id, prompt_ids=tuple(prompts[i]), answer_ids=answer,
                                   text=tokenizer.decode(list(answer), skip_special_tokens=True),
                                   finished=finished, question_hash=_question_hash(p))
                    fresh[p.id] = g
                    n_new_tokens += len(answer) + bool(finished)
                    batch.append(g)
                if folder is not None:
                    shard = folder / f"part-{stable_hash([g.problem_id for g in batch], 16)}.json"
                    atomic_write_text(shard, json.dumps({"batch_size": len(batch), "max_batch_size": batch_size,
                                                         "token_budget": token_budget, "backend": backend,
                                                         "device": str(device),
                                                         "generations": [g.to_dict() for g in batch]}))
                bar.update(len(idx))
        finally:
            seconds = time.perf_counter() - t_decode
            if runner is not None:
                runner.close()
            bar.close()
        log.info("%s on %s: decoded %d tokens in %.1f s with %s (%.1f tokens/s)", spec.label, dataset, n_new_tokens,
                 seconds, backend, n_new_tokens / seconds if seconds > 0 else 0.0)

    gens = tuple(usable[p.id] if p.id in usable else fresh[p.id] for p in problems)
    backends: dict[str, int] = {}
    for p in problems:
        b = made_by.get(p.id, "unknown") if p.id in usable else backend
        backends[b] = backends.get(b, 0) + 1
    return GenerationRun(model=spec.label, key=key, fingerprint=fingerprint, settings=settings, generations=gens,
                         n_generated=len(fresh), n_cached=len(usable),
                         cache_path=str(folder) if folder is not None else None, backend=backend,
                         backends=backends, n_new_tokens=n_new_tokens, seconds=seconds, load_seconds=load_seconds)


class _VllmRunner:
    """Greedy decoding with vLLM (GPU only; faked in the test suite).

    The same prompt token ids as ``transformers`` (``{"prompt_token_ids": ...}``, vLLM's
    ``TokensPrompt``), ``temperature=0`` (greedy), ``max_tokens=max_new_tokens``, stopping at the
    same EOS ids (``stop_token_ids``); the checkpoint's ``generation_config.json`` is not applied
    (``generation_config="vllm"`` where vLLM's default is ``"auto"``), so it cannot change the
    sampling settings or cap ``max_tokens``. :meth:`close` shuts the engine down, so that the next model
    (and the attribution after generation) gets the GPU memory back.
    """

    def __init__(self, spec: ModelSpec, dtype: str, max_new_tokens: int, eos_ids: Sequence[int]) -> None:
        import dataclasses

        import vllm

        from ..models import adapter_chain, resolve_plain

        if adapter_chain(spec.path, spec.gguf_file) is not None:
            raise ValueError(f"{spec.path}: the vLLM backend does not load PEFT adapters; use backend 'hf' "
                             "(--backend hf), which merges them")
        kw: dict[str, Any] = {"revision": spec.revision} if spec.revision else {}
        folder, gguf_file = resolve_plain(spec.path, spec.gguf_file)
        path = os.path.join(folder, gguf_file) if gguf_file else folder
        if gguf_file:
            kw["tokenizer"] = folder  # vLLM reads a GGUF's tokenizer from the folder's tokenizer files
        engine_args = getattr(vllm, "EngineArgs", None)
        defaults = ({f.name: f.default for f in dataclasses.fields(engine_args)}
                    if dataclasses.is_dataclass(engine_args) else {})
        # vLLMs that apply the checkpoint's generation_config.json by default ("auto") also know "vllm":
        # their neutral defaults. (Older ones, default None, apply no generation config at all.)
        if defaults.get("generation_config") == "auto":
            kw["generation_config"] = "vllm"
        self.eos = set(int(i) for i in eos_ids)
        self.llm = vllm.LLM(model=path, dtype=str(dtype), seed=0, **kw)
        params = dict(temperature=0.0, max_tokens=max_new_tokens, n=1, stop_token_ids=sorted(self.eos))
        try:
            self.params = vllm.SamplingParams(**params, detokenize=False)  # answers are decoded here, once
        except TypeError:  # a vLLM without the detokenize option
            self.params = vllm.SamplingParams(**params)

    def __call__(self, prompts: Sequence[Sequence[int]]) -> list[tuple[tuple[int, ...], bool]]:
        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], self.params, use_tqdm=False)
        results = []
        for o in outs:  # in the order of the prompts
            answer, hit_eos = _cut_at_eos(list(o.outputs[0].token_ids), self.eos)
            results.append((answer, hit_eos or o.outputs[0].finish_reason == "stop"))
        return results

    def close(self) -> None:
        """Shut the engine down and free its GPU memory (best effort: vLLM versions differ here)."""
        import gc

        llm, self.llm = self.llm, None
        if llm is None:
            return
        try:
            if hasattr(llm, "shutdown"):
                llm.shutdown()
            else:
                core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
                if core is not None and hasattr(core, "shutdown"):
                    core.shutdown()
        except Exception as e:  # the engine is dropped below anyway
            log.warning("vLLM engine shutdown failed (%s: %s); relying on garbage collection", type(e).__name__, e)
        del llm
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception as e:
            log.debug("empty_cache after vLLM failed: %s", e)
