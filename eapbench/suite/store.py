"""Where measurements are found: this session's memory, then the on-disk cache.

A cached measurement is keyed by everything that changes it — the models (file hashes), the
options, the dataset and α, and the source of the modules that compute it — so a later run, the
report and the baseline checks reuse it, and a change to any of those recomputes it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

from ..cache import atomic_write_text, cache_dir, drop_corrupt, file_sha256, read_json_entry, stable_hash
from .measurement import Measurement, RunConfig, case_id
from .pairs import PairSpec

log = logging.getLogger(__name__)

MEASUREMENT_VERSION = 1
# Modules (relative to the package) whose source is part of the cache key: change one and cached
# measurements are recomputed.
CODE_MODULES = ("engine/architectures", "engine/attribution", "engine/graph", "engine/integrated_gradients",
                "engine/faithfulness", "analysis/metrics", "analysis/stats", "analysis/stability",
                "pipeline/data", "pipeline/generate", "pipeline/grading", "pipeline/paired", "pipeline/prompts",
                "pipeline/selection", "pipeline/synthetic", "suite/measure", "models", "records")


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Hash of the computing modules' source, taken once per process (the code this process runs)."""
    here = Path(__file__).resolve().parent.parent
    return stable_hash({mod: file_sha256(here / f"{mod}.py") for mod in CODE_MODULES
                        if (here / f"{mod}.py").is_file()})


def model_fingerprint(path: str, revision: str | None = None, gguf_file: str | None = None,
                      max_hash_bytes: int = 256 << 20) -> dict[str, Any]:
    """Identity of a model for cache keys: file hashes for small local folders, sizes and
    modification times for big ones, the hub id and revision otherwise; a PEFT adapter: its files'
    sha256 and its base's fingerprint (:meth:`eapbench.models.AdapterChain.fingerprint`)."""
    from ..models import adapter_chain, resolve_plain

    chain = adapter_chain(path, gguf_file)
    if chain is not None:
        return chain.fingerprint(lambda base, gguf: model_fingerprint(base, revision, gguf, max_hash_bytes))
    path, gguf_file = resolve_plain(path, gguf_file)
    p = Path(path)
    if not p.exists():
        return {"hub": path, "revision": revision, "gguf_file": gguf_file}
    files = sorted(f for f in (p.rglob("*") if p.is_dir() else [p]) if f.is_file())
    total = sum(f.stat().st_size for f in files)
    if total <= max_hash_bytes:
        return {"files": {str(f.relative_to(p) if p.is_dir() else f.name): file_sha256(f) for f in files}}
    return {"files": {str(f.relative_to(p) if p.is_dir() else f.name): [f.stat().st_size, f.stat().st_mtime_ns]
                      for f in files}}


class MeasurementStore:
    """Measurements of one session: kept in memory, and on disk unless ``use_disk`` is off."""

    def __init__(self, config: RunConfig, *, use_disk: bool = True, root: str | Path | None = None) -> None:
        self.config = config
        self.use_disk = use_disk
        self._root = Path(root) if root else None
        self._memo: dict[str, Measurement] = {}

    def path(self, pair: PairSpec, dataset: str, alpha: float) -> Path:
        r = pair.resolved()
        key = stable_hash({
            "v": MEASUREMENT_VERSION, "code": code_fingerprint(), "dataset": dataset, "alpha": float(alpha),
            "config": self.config.key_dict(pair), "method": pair.method,
            "allow_tokenizer_mismatch": pair.allow_tokenizer_mismatch,
            "models": [{**asdict(m), "fingerprint": model_fingerprint(m.path, m.revision, m.gguf_file)}
                       for m in r.models]}, length=24)
        return (self._root or cache_dir("suite")) / pair.id / f"{dataset}-a{alpha:g}-{key}.json"

    def get(self, pair: PairSpec, dataset: str, alpha: float) -> Measurement | None:
        """The measurement from memory, else from disk (an unreadable file is ignored), else None."""
        cid = case_id(pair.id, dataset, alpha)
        if cid in self._memo:
            return self._memo[cid]
        if not self.use_disk:
            return None
        path = self.path(pair, dataset, alpha)
        data = read_json_entry(path, "cached measurement")  # garbage: named in a warning, deleted
        if data is None:
            return None
        try:
            m = Measurement.from_dict(data)
        except (TypeError, KeyError, ValueError) as exc:  # valid JSON, not a measurement
            drop_corrupt(path, "cached measurement", exc)
            return None
        log.info("measurement %s loaded from %s", cid, path)
        self._memo[cid] = m
        return m

    @contextlib.contextmanager
    def lock(self, pair: PairSpec, dataset: str) -> Iterator[None]:
        """Hold an exclusive lock on measuring ``pair`` on ``dataset`` with this cache folder, across
        processes (pytest-xdist workers): a second process waits, then finds the first's measurement
        on disk. No-op without the disk cache or where ``fcntl`` is missing."""
        if not self.use_disk:
            yield
            return
        try:
            import fcntl
        except ImportError:  # not POSIX: no cross-process lock
            yield
            return
        folder = self.path(pair, dataset, 0.0).parent
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f".{dataset}.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def put(self, pair: PairSpec, m: Measurement) -> None:
        self._memo[m.id] = m
        if self.use_disk:
            atomic_write_text(self.path(pair, m.dataset, m.alpha), m.to_json())

    def all(self) -> list[Measurement]:
        return list(self._memo.values())
