"""One validation step for the options of ``eapbench compare`` and of the claim suite (``pytest suites/``).

Everything here runs before any model loads and takes seconds: numbers in range, a device that
exists on this machine, a report path that can be a folder, dataset names, and for each model a
look at what is on disk (folder, zoo card, chat template, safetensors header) or in the Hugging
Face cache, with a quick probe of the hub only when a hub id is neither local nor cached.

Each check raises :class:`OptionError` whose message names the option as the user typed it, the
problem and the fix; the CLI prints it as ``eapbench compare: <message>`` (exit 2), the suite turns
it into a ``pytest.UsageError``.
"""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..records import ModelSpec
from . import pairs as P

MIN_RESAMPLES = 100  # fewer bootstrap resamples cannot resolve the 2.5th/97.5th percentiles of a 95% CI
DEVICE_RE = re.compile(r"(cpu|cuda|mps)(?::(\d+))?")


class OptionError(ValueError):
    """A command-line option (or pair key) that cannot work; the message says which, why and the fix."""


# --------------------------------------------------------------------------- numbers and names

def check_int(flag: str, value: Any, *, minimum: int = 1, optional: bool = False, fix: str = "") -> int | None:
    """``value`` as an int >= ``minimum`` (``None`` allowed when ``optional``)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionError(f"{flag} {value!r}: not an integer; {fix or f'use an integer >= {minimum}'}")
    if value < minimum:
        raise OptionError(f"{flag} {value}: must be >= {minimum}" + (f"; {fix}" if fix else ""))
    return value


def check_alphas(flag: str, values: Iterable[Any] | None) -> tuple[float, ...] | None:
    """Answer fractions alpha: each in (0, 1] (T_cut = ceil(alpha * refer) tokens of every answer)."""
    if values is None:
        return None
    out = []
    for v in values:
        try:
            a = float(v)
        except (TypeError, ValueError):
            raise OptionError(f"{flag} {v!r}: not a number; use an answer fraction in (0, 1], e.g. 0.3") from None
        if not 0 < a <= 1:
            raise OptionError(f"{flag} {v}: an answer fraction alpha must be in (0, 1] (alpha > 1 cuts answers "
                              "after T_cut tokens longer than every answer, 0 keeps no token); e.g. 0.3")
        out.append(a)
    if not out:
        raise OptionError(f"{flag}: no value given; use answer fractions in (0, 1], e.g. 0.3,0.5")
    return tuple(out)


def check_device(flag: str, value: Any) -> str:
    """A torch device that exists here: cpu, cuda, cuda:N (N < device count), mps (when available)."""
    text = str(value).strip()
    m = DEVICE_RE.fullmatch(text)
    if not m:
        raise OptionError(f"{flag} {value!r}: unknown device; use cpu, cuda, cuda:N or mps")
    kind, index = m.group(1), m.group(2)
    if kind == "cpu":
        return text
    import torch

    if kind == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA" if torch.version.cuda is None
                   else "no CUDA GPU is visible")
            raise OptionError(f"{flag} {text}: CUDA is not available here ({why}; torch {torch.__version__}); "
                              f"use {flag} cpu, or run on a machine with a CUDA GPU")
        n = torch.cuda.device_count()
        if index is not None and int(index) >= n:
            raise OptionError(f"{flag} {text}: this machine has {n} CUDA device(s) (cuda:0..cuda:{n - 1}); "
                              f"pick one of those")
        return text
    mps = getattr(torch.backends, "mps", None)
    if mps is None or not mps.is_available():
        raise OptionError(f"{flag} {text}: Apple MPS is not available here; use {flag} cpu")
    return text


def check_dtype(flag: str, value: str | None) -> str | None:
    if value is None:
        return None
    from ..models import resolve_dtype

    try:
        resolve_dtype(value)
    except ValueError as exc:
        raise OptionError(f"{flag} {value}: {exc}") from None
    return value


def check_datasets(flag: str, names: Iterable[str] | None) -> tuple[str, ...] | None:
    if names is None:
        return None
    from ..pipeline.data import DATASETS

    names = tuple(names)
    bad = [n for n in names if n not in DATASETS]
    if bad:
        raise OptionError(f"{flag} {','.join(bad)}: unknown dataset; use one of {', '.join(DATASETS)}")
    return names


def check_report(flag: str, value: str | None) -> str | None:
    """The report folder: absent (it will be created) or an existing folder, never a file."""
    if not value:
        return value
    p = Path(os.path.expanduser(value))
    if p.exists() and not p.is_dir():
        raise OptionError(f"{flag} {value}: this is an existing file, and the report is a folder "
                          "(results.json, table1.md, figures); name a folder instead")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OptionError(f"{flag} {value}: {parent} is a file, so the report folder cannot be made there; "
                                  "name another folder")
            break
    return value


def check_run_options(*, device: str, n_samples: Any, n_resamples: Any, batch_size: Any, threads: Any,
                      limit: Any = None, gen_batch_size: Any = None, dtype: str | None = None) -> None:
    """The options shared by ``eapbench compare`` and the suite (same flag names in both)."""
    check_int("--n-samples", n_samples, fix="the number of paired problems per case, e.g. 100")
    check_int("--n-resamples", n_resamples, minimum=MIN_RESAMPLES,
              fix=f"a 95% interval needs at least {MIN_RESAMPLES} bootstrap resamples (default 9999)")
    check_int("--batch-size", batch_size, fix="the attribution batch size, e.g. 8")
    check_int("--gen-batch-size", gen_batch_size, optional=True, fix="the generation batch size, e.g. 8")
    check_int("--threads", threads, minimum=0, fix="use a thread count >= 1, or 0 for torch's default")
    check_int("--limit", limit, optional=True, fix="at most this many dataset problems; omit it for all")
    check_dtype("--dtype", dtype)
    check_device("--device", device)


ATTRIBUTION_METHODS = ("eap", "eap-ig")
GRANULARITY_CHOICES = ("qkv", "block", "head")


def check_attribution(method: str, ig_steps: Any, granularity: str, flag: str = "--method") -> None:
    """``flag`` (the attribution method: eap, the paper's; eap-ig, SPEC §11), ``--ig-steps``, ``--granularity``."""
    if method not in ATTRIBUTION_METHODS:
        raise OptionError(f"{flag} {method}: unknown; use eap (the paper's one-pass EAP) or eap-ig "
                          "(integrated gradients, --ig-steps passes)")
    check_int("--ig-steps", ig_steps, fix="the number of integrated-gradient steps, e.g. 5")
    if granularity not in GRANULARITY_CHOICES:
        raise OptionError(f"--granularity {granularity}: unknown; use one of {', '.join(GRANULARITY_CHOICES)}")


DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def check_memory_budget(flag: str, value: str | None) -> str | None:
    """``auto`` or a size (``40GiB``, ``500MB``); None leaves batching as it is."""
    if value is None or str(value).strip().lower() == "auto":
        return value
    from ..engine.planning import parse_bytes

    try:
        parse_bytes(value)
    except ValueError as exc:
        raise OptionError(f"{flag} {value}: {exc}") from None
    return value


def check_placement(device_map: str | None, max_memory: str | None) -> None:
    """``--device-map`` (accelerate's strategies) and ``--max-memory`` (DEV=SIZE pairs, only with a map)."""
    if device_map is not None and device_map not in DEVICE_MAPS:
        raise OptionError(f"--device-map {device_map}: unknown; use one of {', '.join(DEVICE_MAPS)} "
                          "(accelerate's placement strategies)")
    if max_memory is not None:
        if device_map is None:
            raise OptionError(f"--max-memory {max_memory}: limits a dispatched model's devices; add --device-map auto")
        from ..models import parse_max_memory

        try:
            parse_max_memory(max_memory)
        except ValueError as exc:
            raise OptionError(f"--max-memory {exc}") from None


BACKENDS = ("hf", "vllm", "auto")


def check_backend(flag: str, value: str | None, device: str) -> str:
    """The generation backend this run uses, resolved: ``hf`` or ``vllm``.

    ``vllm`` where it cannot run (not installed, not a CUDA device, no GPU visible) is an error,
    never a silent fall back to hf; ``auto`` is vLLM where it can run, else hf. ``cuda:N`` with
    N > 0 is refused for vLLM (it places the model itself; pick the GPU with CUDA_VISIBLE_DEVICES).
    """
    from ..pipeline import generate as G

    value = "hf" if value is None else str(value).strip().lower()
    if value not in BACKENDS:
        raise OptionError(f"{flag} {value}: unknown generation backend; use one of {', '.join(BACKENDS)}")
    if value == "hf":
        return "hf"
    why = G.vllm_unavailable(device)
    if value == "auto":
        return "hf" if why else "vllm"
    if why:
        raise OptionError(f"{flag} vllm: {why}; use {flag} hf (or auto: vLLM where it can run, else hf)")
    m = DEVICE_RE.fullmatch(str(device).strip())
    if m and m.group(2) not in (None, "0"):
        raise OptionError(f"{flag} vllm: vLLM places the model on the first visible GPU, not on --device {device}; "
                          f"run with CUDA_VISIBLE_DEVICES={m.group(2)} and --device cuda")
    return "vllm"


def check_gen_token_budget(flag: str, value: Any) -> int | None:
    """Tokens per generation batch (rows x (longest prompt + max new tokens)); None: batches by count only."""
    return check_int(flag, value, optional=True,
                     fix="tokens per generation batch, rows x (longest prompt + max new tokens), e.g. 65536; "
                         "omit it to batch by --gen-batch-size alone")


# --------------------------------------------------------------------------- models

def is_zoo_folder(path: str) -> bool:
    """A folder holding a mini-zoo model (its ``model_card.json`` names the 'mini' prompt format), or a
    PEFT adapter on one."""
    if P.is_adapter(path):
        from ..models import AdapterError, adapter_chain

        try:
            chain = adapter_chain(path)
        except AdapterError:
            return False
        return chain is not None and is_zoo_folder(chain.base)
    if path.startswith(P.ZOO_PREFIX):
        return True
    card = Path(os.path.expanduser(path)) / "model_card.json"
    if not card.is_file():
        return False
    try:
        data = json.loads(card.read_text())
    except (OSError, ValueError):
        return False
    from ..pipeline.prompts import get_template

    return isinstance(data, dict) and data.get("prompt_template") == get_template("mini").text


def has_chat_template(folder: Path) -> bool:
    """Whether a local model folder's tokenizer carries a chat template."""
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    cfg = folder / "tokenizer_config.json"
    try:
        return bool(json.loads(cfg.read_text()).get("chat_template"))
    except (OSError, ValueError, AttributeError):
        return False


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete safetensors file (header read and size check only), or None."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path} is truncated ({size} bytes; not even the 8-byte header length)"
            n = int.from_bytes(head, "little")
            if 8 + n > size:
                return f"{path} is truncated ({size} bytes; its header alone claims {8 + n})"
            header = json.loads(f.read(n))
    except OSError as exc:
        return f"{path} cannot be read ({exc})"
    except ValueError:
        return f"{path} is corrupt (its header is not valid JSON)"
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (AttributeError, KeyError, TypeError, ValueError, IndexError):
        return f"{path} is corrupt (its header has no valid data_offsets)"
    want = 8 + n + end
    if size < want:
        return f"{path} is truncated ({size} of {want} bytes)"
    if size > want:
        return f"{path} is corrupt ({size} bytes where its header describes {want})"
    return None


def weight_files_problem(folder: Path, *, present_only: bool = False) -> str | None:
    """The first problem with a local folder's safetensors weights (single file or index + shards).

    ``present_only``: shards not there yet are fine (a hub snapshot whose weights are downloaded later).
    """
    index = folder / "model.safetensors.index.json"
    files: list[Path] = []
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            return f"{index} is corrupt ({type(exc).__name__})"
        for s in shards:
            if not (folder / s).is_file() and not present_only:
                return f"{folder / s} is missing (listed in {index.name})"
        files = [folder / s for s in shards if (folder / s).is_file()]
    else:
        files = sorted(folder.glob("*.safetensors"))
    for f in files:
        why = safetensors_problem(f)
        if why:
            return why
    return None


def _offline() -> bool:
    on = ("1", "true", "yes", "on")
    if any(os.environ.get(k, "").strip().lower() in on for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover
        return True


def hub_probe(repo: str, revision: str | None = None, timeout: float = 5.0) -> str | None:
    """``None`` if the hub answers and has model ``repo``; else a one-line reason. One try, no retries."""
    from urllib.parse import urlparse

    from huggingface_hub import HfApi, constants

    url = urlparse(constants.ENDPOINT)
    host = url.hostname or "huggingface.co"
    try:
        socket.create_connection((host, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout).close()
    except OSError as exc:
        return f"the hub ({host}) was not reachable: {exc}"
    try:
        HfApi().model_info(repo, revision=revision, timeout=timeout)
    except Exception as exc:  # RepositoryNotFound, gated, HTTP errors: all one line for the user
        return f"the hub has no usable model {repo!r} ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
    return None


@dataclass(frozen=True)
class ModelCheck:
    kind: str  # zoo | local | gguf | hub-cached | hub | smollm2 | adapter (folder: its tokenizer's)
    folder: Path | None  # local folder (resolved zoo checkpoint, folder of a GGUF), else None


def check_model(flag: str, value: str, spec: ModelSpec, *, side: str, probe_hub: bool = True) -> ModelCheck:
    """That ``spec`` (given by the user as ``flag value``) can be loaded here, without loading it."""
    if P.is_adapter(spec.path):
        return _check_adapter(flag, value, spec, side=side, probe_hub=probe_hub)
    if spec.path == P.SMOLLM2_NAME:
        why = P.weights_missing(spec)
        if why:
            raise OptionError(f"{flag} {value}: the {side} model is missing: {why}")
        return ModelCheck("smollm2", None)
    rebuild = "rebuild the zoo with `eapbench zoo train`" if value.startswith(P.ZOO_PREFIX) else \
        "re-download or rebuild the model"
    if spec.path.startswith(P.ZOO_PREFIX):
        why = P.weights_missing(spec)
        if why:
            raise OptionError(f"{flag} {value}: the {side} model is missing: {why}")
        folder = Path(P.resolve_model(spec).path)
        kind = "zoo"
    else:
        folder = Path(os.path.expanduser(spec.path))
        kind = "gguf" if spec.gguf_file else "local"
    if spec.gguf_file:
        f = folder / spec.gguf_file
        if not f.is_file():
            raise OptionError(f"{flag} {value}: no such GGUF file {f}; fix the path")
        return ModelCheck("gguf", folder)
    if folder.exists():
        if not folder.is_dir():
            raise OptionError(f"{flag} {value}: a file, not a model folder; pass the folder that holds "
                              "config.json (or a .gguf file)")
        if not (folder / "config.json").is_file():
            raise OptionError(f"{flag} {value}: the folder {folder} has no config.json, so it is not a Hugging "
                              "Face model folder; pass the folder that holds config.json and the weights "
                              "(or a .gguf file)")
        why = weight_files_problem(folder)
        if why:
            raise OptionError(f"{flag} {value}: the {side} model's weights are broken: {why}; {rebuild}")
        return ModelCheck(kind, folder)
    # not on disk
    if not P._looks_like_hub_id(spec.path):
        raise OptionError(f"{flag} {value}: no such folder ({folder.resolve()} does not exist) and not a hub id "
                          "(org/name); fix the path")
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(spec.path, "config.json", revision=spec.revision)
    if isinstance(hit, str):  # in the Hugging Face cache: check the weights already there
        why = weight_files_problem(Path(hit).parent, present_only=True)
        if why:
            raise OptionError(f"{flag} {value}: the {side} model's cached weights are broken: {why}; re-download "
                              f"them (`hf download {spec.path} --force-download`)")
        return ModelCheck("hub-cached", None)
    first = Path(spec.path.split("/")[0])
    if first.is_dir():
        raise OptionError(f"{flag} {value}: no such local folder ({first}/ exists here but has no "
                          f"{spec.path.split('/', 1)[1]!r}), and no hub model {spec.path!r} is in the local "
                          "Hugging Face cache; fix the path (for a hub id: `hf download " + spec.path + "` first)")
    if _offline():
        raise OptionError(f"{flag} {value}: no local folder of that name exists, and {spec.path!r} is not in the "
                          "local Hugging Face cache (HF_HUB_OFFLINE is set, so the hub was not tried); fix the path, "
                          f"or `hf download {spec.path}` where the hub is reachable")
    if probe_hub:
        why = hub_probe(spec.path, spec.revision)
        if why:
            raise OptionError(f"{flag} {value}: no local folder of that name exists, and {why}; fix the path, "
                              "or check the hub id and your connection")
    return ModelCheck("hub", None)


def _check_adapter(flag: str, value: str, spec: ModelSpec, *, side: str, probe_hub: bool) -> ModelCheck:
    """A PEFT adapter (:func:`eapbench.models.load_model`): each adapter's weights, then its base as a model."""
    from dataclasses import replace

    from ..models import ADAPTER_WEIGHTS, AdapterError, adapter_chain

    try:
        chain = adapter_chain(spec.path, spec.gguf_file)
    except AdapterError as exc:
        raise OptionError(f"{flag} {value}: {exc}") from None
    assert chain is not None
    for folder in chain.adapters:
        files = [folder / w for w in ADAPTER_WEIGHTS if (folder / w).is_file()]
        if not files:
            raise OptionError(f"{flag} {value}: PEFT adapter {folder} has no weights ({' or '.join(ADAPTER_WEIGHTS)}); "
                              "save it with save_pretrained")
        why = safetensors_problem(files[0]) if files[0].suffix == ".safetensors" else None
        if why:
            raise OptionError(f"{flag} {value}: the {side} model's PEFT adapter is broken: {why}; save it again")
    base, gguf = P.split_gguf(chain.base)
    try:
        mc = check_model(flag, value, replace(spec, path=base, gguf_file=gguf), side=f"{side} model's base",
                         probe_hub=probe_hub)
    except OptionError as exc:
        raise OptionError(f"{exc}; it is {chain.base_hint()}") from None
    return ModelCheck("adapter", chain.tokenizer_folder() or (mc.folder if mc.kind in ("local", "zoo") else None))


def check_template(flag: str, template: str, models: Mapping[str, tuple[str, ModelCheck]]) -> None:
    """The template exists; a chat template needs each local model's tokenizer to carry one.

    ``models`` maps the model flag (``--base``) to (the value typed, its :class:`ModelCheck`).
    """
    from ..pipeline.prompts import get_template

    try:
        t = get_template(template)
    except (TypeError, ValueError) as exc:
        raise OptionError(f"{flag} {template!r}: {exc}") from None
    if not t.chat:
        return
    for mflag, (value, mc) in models.items():
        if mc.kind in ("local", "zoo", "adapter") and mc.folder is not None and not has_chat_template(mc.folder):
            hint = (" (this is a mini-zoo model: use --template mini)" if is_zoo_folder(str(mc.folder)) else "")
            raise OptionError(f"{mflag} {value}: its tokenizer has no chat template, and the prompt template "
                              f"{template!r} is rendered by it; pass {flag} with a plain template name or a "
                              f"format string with {{question}}, e.g. {flag} 'Q: {{question}} A:'{hint}")


def check_pair_models(where: str, pair: P.PairSpec) -> None:
    """Local weights of a selected pair are complete (cheap header check); raises OptionError."""
    for side, spec in (("base", pair.base), ("tuned", pair.tuned)):
        if spec.gguf_file:
            continue
        try:
            folder = Path(P.resolve_model(spec).path).expanduser()
        except (FileNotFoundError, KeyError, ValueError):
            continue
        if folder.is_dir():
            why = weight_files_problem(folder)
            if why:
                fix = ("rebuild the zoo with `eapbench zoo train`" if spec.path.startswith(P.ZOO_PREFIX)
                       else "re-download or rebuild the model")
                raise OptionError(f"{where}: the {side} model of pair {pair.id!r} has broken weights: {why}; {fix}")


def named_pairs(pairs_option: str | Iterable[str] | None, pair_options: Iterable[str],
                selected: Iterable[P.PairSpec]) -> dict[str, str]:
    """Pair id -> the option that asked for it by name (``--pairs ID`` or ``--pair SPEC_OR_YAML``).

    Pairs selected through a group (``--pairs mini``) are not named: those that cannot run here
    are skipped with the reason; a named one that cannot run is the user's error.
    """
    names = pairs_option.split(",") if isinstance(pairs_option, str) else list(pairs_option or ())
    out = {n.strip(): f"--pairs {n.strip()}" for n in names if n.strip() in P.REGISTRY}
    user = {p.id for p in selected if p.id not in P.REGISTRY}
    for u in pair_options or ():
        try:
            ids = ([p.id for p in P.load_pairs_yaml(u)] if u.endswith((".yaml", ".yml"))
                   else [P.parse_pair(u).id])
        except (ValueError, KeyError, OSError):
            continue
        for i in ids:
            if i in user:
                out.setdefault(i, f"--pair {u}")
    for i in user:
        out.setdefault(i, f"--pair name={i}")
    return out
