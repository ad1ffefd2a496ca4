"""A pair's canonical settings: the ones its stored baselines are measured with.

The canonical run of a pair is what a default ``pytest suites/ --pairs <pair>`` measures:
:class:`~eapbench.suite.measurement.RunConfig`'s defaults with the pair's own dtype, dataset
limit and generation batch, on a CUDA device for pairs that need a GPU and on the CPU
(one torch thread) otherwise, on the pair's own datasets and α. Restricting a run to some of
the pair's datasets or α (``--datasets``, ``--alphas``) keeps it canonical.

``--regen-baselines`` writes only canonical baselines (``baselines/<pair>/<dataset>/alpha-<a>.json``);
with ``--regen-variant`` a non-canonical run stores its values beside them, under
``baselines/<pair>/<dataset>/variants/<settings>/alpha-<a>.json`` (:func:`variant_path`), where
a later run with the same settings finds and compares them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .measurement import RunConfig
from .pairs import PairSpec

# RunConfig fields that do not change a measurement's values (where files are, progress bars, whether
# faithfulness curves ride along in its extras).
IGNORED = ("data_dir", "progress", "faithfulness")


def canonical_config(pair: PairSpec) -> dict[str, Any]:
    """The configuration of the pair's canonical run (RunConfig defaults, the pair's own dtype/limit/gen batch)."""
    d = RunConfig(device="cuda" if pair.requires_gpu else "cpu").key_dict(pair)
    for k in IGNORED:
        d.pop(k, None)
    return d


def _same(key: str, canonical: Any, this: Any) -> bool:
    if key == "device":
        return str(canonical).split(":")[0] == str(this).split(":")[0]
    if isinstance(canonical, float) or isinstance(this, float):
        try:
            return float(canonical) == float(this)
        except (TypeError, ValueError):
            return False
    return canonical == this


def differences(pair: PairSpec, config: RunConfig, dataset: str | None = None,
                alpha: float | None = None) -> dict[str, tuple[Any, Any]]:
    """Setting -> (canonical value, this run's value) for every setting that is not canonical.

    ``dataset`` / ``alpha`` outside the pair's own lists count as differences too (keys
    ``dataset``, ``alpha``); the thread count only matters on the CPU.
    """
    canon = canonical_config(pair)
    this = config.key_dict(pair)
    out: dict[str, tuple[Any, Any]] = {}
    for k, v in canon.items():
        if k == "threads" and not str(canon["device"]).startswith("cpu"):
            continue
        if not _same(k, v, this.get(k)):
            out[k] = (v, this.get(k))
    for k in this.keys() - canon.keys() - set(IGNORED):  # settings only some runs have (ig_steps with EAP-IG)
        out[k] = (None, this[k])
    if dataset is not None and dataset not in pair.datasets:
        out["dataset"] = (tuple(pair.datasets), dataset)
    if alpha is not None and not any(float(alpha) == float(a) for a in pair.alphas):
        out["alpha"] = (tuple(float(a) for a in pair.alphas), float(alpha))
    return out


def describe(diffs: dict[str, tuple[Any, Any]]) -> str:
    """``n_samples: canonical 100, this run 30; ...``"""
    return "; ".join(f"{k}: canonical {c!r}, this run {t!r}" for k, (c, t) in diffs.items())


def settings_tag(diffs: dict[str, tuple[Any, Any]]) -> str:
    """A folder name for a set of non-canonical settings, e.g. ``limit-100_n_resamples-99_n_samples-30``."""
    parts = []
    for k in sorted(diffs):
        v = diffs[k][1]
        v = f"{v:g}" if isinstance(v, float) else str(v)
        parts.append(f"{k}-{re.sub(r'[^A-Za-z0-9.+-]', '_', v)}")
    return "_".join(parts) or "canonical"


def variant_path(baselines: str | Path, pair_id: str, dataset: str, alpha: float,
                 diffs: dict[str, tuple[Any, Any]]) -> Path:
    """Where a non-canonical baseline lives: ``<baselines>/<pair>/<dataset>/variants/<settings>/alpha-<a>.json``."""
    return Path(baselines) / pair_id / dataset / "variants" / settings_tag(diffs) / f"alpha-{alpha:g}.json"
