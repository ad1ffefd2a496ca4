"""What one suite case is: the run's settings (:class:`RunConfig`) and its result (:class:`Measurement`).

Plain frozen records with their JSON form; computing them is :mod:`eapbench.suite.measure`'s job,
keeping them :mod:`eapbench.suite.store`'s and judging them :mod:`eapbench.suite.verdicts`'.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from .pairs import PairSpec


@dataclass(frozen=True)
class RunConfig:
    """Everything besides the pair, dataset and α that changes a measurement."""

    n_samples: int = 100
    seed: int = 42  # sampling of the N problems (SPEC §4)
    beta: float = 0.5
    gamma: float = 1.5
    delta: float = 0.5
    granularity: str = "qkv"  # qkv (the paper's), block, or head (SPEC §2)
    # Edge scores: "eap" (SPEC §3, the paper's: one forward+backward) or "eap-ig" (SPEC §11: integrated
    # gradients over ig_steps forward+backward passes from a zero baseline).
    attribution: str = "eap"
    ig_steps: int = 5  # only with attribution="eap-ig" (not part of an "eap" run's key)
    # Faithfulness curves (SPEC §11) of both models on each case's inputs, from their mean edge scores:
    # 2 x 10 patched forward passes more per model and alpha; reported beside the claims.
    faithfulness: bool = True
    device: str = "cpu"
    dtype: str | None = None  # None: each pair's own dtype
    n_resamples: int = 9999
    bootstrap_seed: int = 0
    confidence: float = 0.95
    bins: int = 100
    batch_size: int = 8  # attribution batch (with a memory budget: the most per batch)
    # Attribution batches packed by length under this budget ("40GiB", "auto" = 90% of free device memory),
    # checkpointing where one sample needs it; None: fixed batches on CPU, "auto" on CUDA.
    memory_budget: str | None = None
    gen_batch_size: int | None = None  # generation batch (None: each pair's own)
    # hf generation batches packed by length under rows x (longest prompt + max_new_tokens) <= this many
    # tokens (bounds a batch's KV cache); None: batches of gen_batch_size. Batch composition can move
    # greedy near-ties (padding), so it is part of the key, like gen_batch_size.
    gen_token_budget: int | None = None
    limit: int | None = None  # at most this many dataset problems (None: each pair's own, else all)
    data_dir: str | None = None
    threads: int | None = 1  # torch CPU threads while measuring (None: leave torch's setting); recorded
    progress: bool = True
    # Where the model's layers go (accelerate): placement only, scores equal the undispatched model's,
    # so not part of a measurement's key; recorded in its provenance.
    device_map: str | None = None
    max_memory: str | None = None
    # Generation backend, resolved (hf | vllm; eapbench.suite.options.check_backend): generations are
    # cached under one key for both backends (eapbench.pipeline.generate), so not part of a measurement's
    # key either; each side's backend and tokens/s are recorded in its provenance.
    backend: str = "hf"
    # Keep every sample's scores under $EAPBENCH_CACHE/scores (model fingerprint, graph, dtype, method, token
    # ids) and reuse them: a model shared by several pairs is attributed once per sample. A reused sample was
    # computed in another batch (equal up to float summation order, ~1e-6, well inside the baseline
    # tolerances), so like placement it is not part of a measurement's key; recorded in its provenance.
    share_scores: bool = False

    @property
    def setting(self) -> str:
        """The attribution setting's name: graph granularity / method, e.g. "qkv/EAP", "head/EAP", "qkv/EAP-IG"."""
        return f"{self.granularity}/{self.attribution.upper()}"

    def dtype_for(self, pair: PairSpec) -> str:
        return self.dtype or pair.dtype

    def limit_for(self, pair: PairSpec) -> int | None:
        return self.limit if self.limit is not None else pair.limit

    def gen_batch_for(self, pair: PairSpec) -> int:
        return self.gen_batch_size or pair.gen_batch_size

    def key_dict(self, pair: PairSpec) -> dict[str, Any]:
        d = asdict(self)
        for placement_only in ("progress", "device_map", "max_memory", "backend", "share_scores"):
            d.pop(placement_only)
        if self.attribution == "eap":
            d.pop("ig_steps")
        d.update(dtype=self.dtype_for(pair), limit=self.limit_for(pair), gen_batch_size=self.gen_batch_for(pair))
        return d


@dataclass(frozen=True)
class Measurement:
    """One (pair, dataset, α): metric intervals, selection counts, config, provenance and figure data."""

    pair: str
    method: str
    method_class: str
    family: str
    group: str
    dataset: str
    alpha: float
    metrics: dict[str, dict[str, Any]]  # metric -> BootstrapResult.to_dict()
    selection: dict[str, Any]  # SelectionReport.to_dict()
    counts: dict[str, int]
    config: dict[str, Any]
    provenance: dict[str, Any]
    figures: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def id(self) -> str:
        return case_id(self.pair, self.dataset, self.alpha)

    @property
    def n(self) -> int:
        return min((int(r["n"]) for r in self.metrics.values()), default=0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), default=json_default) + "\n"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Measurement":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def case_id(pair_id: str, dataset: str, alpha: float) -> str:
    return f"{pair_id}-{dataset}-a{alpha:g}"


def counts_of(report: Mapping[str, Any]) -> dict[str, int]:
    """The integer counts of a selection report (its ``counts`` mapping, or its top-level ints)."""
    counts = report.get("counts")
    if isinstance(counts, Mapping):
        return {str(k): int(v) for k, v in counts.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {str(k): int(v) for k, v in report.items() if isinstance(v, int) and not isinstance(v, bool)}


def plain(obj: Any) -> Any:
    """JSON-safe copy (numpy scalars → Python numbers)."""
    return json.loads(json.dumps(obj, default=json_default))


def json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (tuple, set)):
        return list(o)
    return str(o)
