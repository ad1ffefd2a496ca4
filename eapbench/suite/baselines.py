"""Stored baselines: read, write and compare measured values with their provenance.

A baseline is one JSON file per (pair, dataset, α) under ``baselines/<pair>/<dataset>/``
holding the measured metric values and intervals, the selection counts, the configuration
and where it came from (library versions, git commit, device, dtype). They are written
only by ``pytest suites/ --regen-baselines`` from a real run. Comparison tolerances per
device and dtype live in the hand-written ``baselines/tolerances.yaml``; the paper's
reference values (SPEC §8) in ``baselines/paper_reference.yaml``.
"""

from __future__ import annotations

import functools
import json
import math
import platform
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..cache import atomic_write_text
from . import locations as _locations

# Defaults: the checkout around the current directory, else the one the package is imported from
# (eapbench.suite.locations); `pytest suites/` sets its own checkout with use_checkout().
BASELINE_DIR = _locations.baselines_dir()
ROOT = BASELINE_DIR.parent
TOLERANCES_FILE = BASELINE_DIR / "tolerances.yaml"
PAPER_REFERENCE_FILE = _locations.hand_written("paper_reference.yaml")
SCHEMA = 1
VALUE_FIELDS = ("base", "tuned", "rel_change", "ci_low", "ci_high")
# Configuration that must match for a comparison to mean anything.
CONFIG_KEYS = ("n_samples", "seed", "beta", "gamma", "delta", "granularity", "attribution", "ig_steps", "bins",
               "n_resamples", "bootstrap_seed", "confidence", "limit", "gen_batch_size", "dataset", "alpha")
# What a stored record without the key was measured with (the key was added later).
CONFIG_DEFAULTS = {"attribution": "eap"}


class BaselineError(ValueError):
    """A baseline file that cannot be used (corrupt, wrong schema, wrong pair)."""


class BorderlineWarning(UserWarning):
    """A baseline check that passed with an interval endpoint on (or across) a decision boundary."""


VALUE_SCALE = ("base", "tuned")  # metric values: relative tolerance
CHANGE_SCALE = ("rel_change", "ci_low", "ci_high")  # dimensionless changes: absolute, in units of the change
TOLERANCE_FIELDS = ("counts_rtol", "value_rtol", "value_atol", "change_atol", "histogram_value_rtol",
                    "histogram_change_atol")


@dataclass(frozen=True)
class Tolerance:
    """How far a re-measured number may drift from its stored baseline, each on its own scale (SPEC §6b).

    Counts: ``counts_rtol`` (0 = exact). Metric values (base, tuned): ``value_rtol`` relative (plus a
    tiny ``value_atol``). Relative changes and interval bounds: ``change_atol`` absolute, in units of the
    change (0.001 = 0.1 percentage point), never relative to a stored value that may sit near 0.
    Histogram metrics (information complexity), discontinuous in the scores: their own
    ``histogram_value_rtol`` and ``histogram_change_atol``.
    """

    counts_rtol: float = 0.0
    value_rtol: float = 1e-4
    value_atol: float = 1e-9
    change_atol: float = 5e-4
    histogram_value_rtol: float = 2e-3
    histogram_change_atol: float = 3e-3
    histogram_metrics: tuple[str, ...] = ("complexity",)
    key: str = "default"

    def bound(self, metric: str, field: str, stored: float) -> float:
        """The largest allowed |measured - stored| for ``metric.field``."""
        hist = metric in self.histogram_metrics
        if field in CHANGE_SCALE:
            return self.histogram_change_atol if hist else self.change_atol
        if field in VALUE_SCALE:
            return self.value_atol + (self.histogram_value_rtol if hist else self.value_rtol) * abs(stored)
        raise ValueError(f"no tolerance scale for field {field!r}; use one of {VALUE_SCALE + CHANGE_SCALE}")

    def allows(self, metric: str, field: str, measured: float, stored: float) -> bool:
        if isinstance(stored, float) and math.isnan(stored):
            return isinstance(measured, float) and math.isnan(measured)
        return abs(measured - stored) <= self.bound(metric, field, stored)

    def allows_count(self, measured: int, stored: int) -> bool:
        return abs(measured - stored) <= math.floor(self.counts_rtol * abs(stored))

    def describe(self, metric: str, field: str) -> str:
        hist = metric in self.histogram_metrics
        if field in CHANGE_SCALE:
            atol = self.histogram_change_atol if hist else self.change_atol
            return f"±{atol:g} absolute{' (histogram metric)' if hist else ''}, {self.key}"
        rtol = self.histogram_value_rtol if hist else self.value_rtol
        return f"rtol={rtol:g}{' (histogram metric)' if hist else ''}, {self.key}"


def use_checkout(baselines: str | Path) -> Path:
    """Make ``baselines`` (a checkout's ``baselines/`` folder) this process's default for baseline paths,
    tolerances, the paper's reference values and the git commit recorded in provenance.

    ``suites/conftest.py`` calls it with the folder beside ``suites/``, so the suite uses its own
    checkout's files whether the package is installed in place or into site-packages."""
    global ROOT, BASELINE_DIR, TOLERANCES_FILE, PAPER_REFERENCE_FILE
    BASELINE_DIR = Path(baselines).resolve()
    ROOT = BASELINE_DIR.parent
    TOLERANCES_FILE = BASELINE_DIR / "tolerances.yaml"
    PAPER_REFERENCE_FILE = _locations.hand_written("paper_reference.yaml", BASELINE_DIR)
    return BASELINE_DIR


def alpha_tag(alpha: float) -> str:
    return f"a{alpha:g}"


def baseline_path(pair_id: str, dataset: str, alpha: float, root: str | Path | None = None) -> Path:
    return Path(root or BASELINE_DIR) / pair_id / dataset / f"alpha-{alpha:g}.json"


def regen_command(pair_id: str, dataset: str, alpha: float) -> str:
    return (f"pytest suites/ --pairs {pair_id} --datasets {dataset} --alphas {alpha:g} --regen-baselines")


def device_kind(device: str) -> str:
    return str(device).split(":")[0]


def load_tolerance(device: str, dtype: str, path: str | Path | None = None) -> Tolerance:
    """The tolerance for runs on ``device`` in ``dtype`` (falls back to ``default``)."""
    import yaml

    p = Path(path) if path is not None else TOLERANCES_FILE
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"tolerance file {p} is missing; it is hand-written and versioned "
                                "(git checkout baselines/tolerances.yaml)") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise BaselineError(f"tolerance file {p} is not valid YAML: {exc}") from exc
    key = f"{device_kind(device)}-{dtype}"
    entry = data.get(key) if isinstance(data, dict) else None
    if entry is None:
        if not isinstance(data, dict) or "default" not in data:
            raise BaselineError(f"tolerance file {p} has no entry {key!r} and no 'default'")
        entry, key = data["default"], "default"
    if not isinstance(entry, dict) or set(TOLERANCE_FIELDS) - set(entry):
        raise BaselineError(f"tolerance file {p}: entry {key!r} needs numeric {', '.join(TOLERANCE_FIELDS)}")
    try:
        hist = tuple(str(m) for m in data.get("histogram_metrics", ("complexity",)))
        return Tolerance(**{f: float(entry[f]) for f in TOLERANCE_FIELDS}, histogram_metrics=hist, key=key)
    except (TypeError, ValueError) as exc:
        raise BaselineError(f"tolerance file {p}: entry {key!r} needs numeric {', '.join(TOLERANCE_FIELDS)} "
                            f"({exc})") from exc


@functools.lru_cache(maxsize=None)
def git_commit(root: str | Path = ROOT) -> str:
    """``<sha>`` of HEAD, with ``+dirty`` when tracked files differ; ``unknown`` outside git.

    Read once per process, so a regeneration that rewrites tracked baseline files records the
    state it started from, not the files it has written so far.
    """
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("eapbench", "torch", "transformers", "numpy", "scipy", "tokenizers"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def provenance(device: str, dtype: str, **extra: Any) -> dict[str, Any]:
    """Where a measurement came from: versions, commit, machine, time, device, dtype."""
    import torch

    return {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "git_commit": git_commit(ROOT), "versions": library_versions(),
            "machine": platform.machine(), "platform": platform.platform(terse=True),
            "torch_threads": torch.get_num_threads(), "device": device, "dtype": dtype, **extra}


def make_record(*, pair: str, dataset: str, alpha: float, metrics: Mapping[str, Mapping[str, Any]],
                counts: Mapping[str, int], config: Mapping[str, Any],
                provenance: Mapping[str, Any]) -> dict[str, Any]:
    """A baseline record from a measurement (metric name -> bootstrap result dict)."""
    return {"schema": SCHEMA, "pair": pair, "dataset": dataset, "alpha": float(alpha),
            "metrics": {m: {k: r[k] for k in (*VALUE_FIELDS, "n")} for m, r in metrics.items()},
            "counts": {k: int(v) for k, v in counts.items()},
            "config": dict(config), "provenance": dict(provenance)}


def write_baseline(path: str | Path, record: Mapping[str, Any]) -> Path:
    return atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (tuple, set)):
        return list(o)
    return str(o)


def read_baseline(path: str | Path) -> dict[str, Any]:
    """Read a baseline; a corrupt or foreign file raises :class:`BaselineError` naming the fix."""
    p = Path(path)
    fix = "delete it and regenerate with `pytest suites/ --regen-baselines` (restricted with --pairs/--datasets/--alphas)"
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BaselineError(f"baseline {p} is not valid JSON ({exc}); {fix}") from exc
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise BaselineError(f"baseline {p} has schema {data.get('schema') if isinstance(data, dict) else None!r}, "
                            f"expected {SCHEMA}; {fix}")
    for key in ("pair", "dataset", "alpha", "metrics", "counts", "config", "provenance"):
        if key not in data:
            raise BaselineError(f"baseline {p} lacks {key!r}; {fix}")
    for m, r in data["metrics"].items():
        if not isinstance(r, dict) or any(not isinstance(r.get(f), (int, float)) for f in VALUE_FIELDS):
            raise BaselineError(f"baseline {p}: metric {m!r} must hold numbers {VALUE_FIELDS}; {fix}")
    return data


def config_mismatch(stored: Mapping[str, Any], measured: Mapping[str, Any]) -> str | None:
    """Why two records are not comparable (different N, seeds, β/γ/δ, granularity, ...), else None."""
    def get(record: Mapping[str, Any], k: str) -> Any:
        return record["config"].get(k, CONFIG_DEFAULTS.get(k))

    diffs = [f"{k}: stored {get(stored, k)!r}, this run {get(measured, k)!r}"
             for k in CONFIG_KEYS if get(stored, k) != get(measured, k)]
    return "; ".join(diffs) or None


def compare(stored: Mapping[str, Any], measured: Mapping[str, Any], tol: Tolerance,
            *, where: str = "") -> list[str]:
    """Every disagreement between a stored and a measured record, one readable line each.

    Each line names the value, the measured number, the stored number and the tolerance on its scale.
    """
    at = f" [{where}]" if where else ""
    problems: list[str] = []
    for name, s_count in stored["counts"].items():
        m_count = measured["counts"].get(name)
        if m_count is None:
            problems.append(f"count {name!r} missing from this run (stored {s_count}){at}")
        elif not tol.allows_count(int(m_count), int(s_count)):
            problems.append(f"count {name} = {m_count} differs from stored {s_count} "
                            f"(tolerance counts_rtol={tol.counts_rtol:g}, {tol.key}){at}")
    for metric, s in stored["metrics"].items():
        m = measured["metrics"].get(metric)
        if m is None:
            problems.append(f"metric {metric!r} missing from this run{at}")
            continue
        if int(m["n"]) != int(s["n"]):
            problems.append(f"{metric}.n = {m['n']} differs from stored {s['n']} (must match exactly){at}")
        for f in VALUE_FIELDS:
            if not tol.allows(metric, f, float(m[f]), float(s[f])):
                problems.append(f"{metric}.{f} = {float(m[f]):.6g} differs from stored {float(s[f]):.6g} "
                                f"by {abs(float(m[f]) - float(s[f])):.3g} (tolerance {tol.describe(metric, f)}){at}")
    return problems


def interval_side(result: Mapping[str, Any], boundary: float = 0.0) -> str:
    """Where a stored or measured interval lies against a decision boundary: above, below or across."""
    if float(result["ci_low"]) > boundary:
        return "above"
    if float(result["ci_high"]) < boundary:
        return "below"
    return "across"


def _boundaries(boundaries: Mapping[str, Sequence[float]] | None, metric: str) -> Sequence[float]:
    return (0.0,) if boundaries is None else boundaries.get(metric, (0.0,))


def verdict_changes(stored: Mapping[str, Any], measured: Mapping[str, Any],
                    boundaries: Mapping[str, Sequence[float]] | None = None) -> list[str]:
    """Each metric whose interval changed side of one of its decision boundaries (metric -> boundaries,
    default 0): a verdict may have changed."""
    out = []
    for metric, s in stored["metrics"].items():
        m = measured["metrics"].get(metric)
        if m is None:
            continue
        for b in _boundaries(boundaries, metric):
            before, after = interval_side(s, b), interval_side(m, b)
            if before != after:
                out.append(f"{metric}: interval [{float(m['ci_low']):+.4f}, {float(m['ci_high']):+.4f}] lies "
                           f"{after} {b:+g}, stored [{float(s['ci_low']):+.4f}, {float(s['ci_high']):+.4f}] "
                           f"lay {before} it: the verdict may differ from the stored run's")
    return out


def borderline(record: Mapping[str, Any], tol: Tolerance,
               boundaries: Mapping[str, Sequence[float]] | None = None) -> list[str]:
    """Interval endpoints within tolerance of a decision boundary: a verdict that another machine
    of the same kind may flip. Said, never silently passed."""
    out = []
    for metric, r in record["metrics"].items():
        for f in ("ci_low", "ci_high"):
            for b in _boundaries(boundaries, metric):
                if abs(float(r[f]) - b) <= tol.bound(metric, f, float(r[f])):
                    out.append(f"{metric}.{f} = {float(r[f]):+.5f} is within tolerance "
                               f"({tol.describe(metric, f)}) of the decision boundary {b:+g}: borderline verdict")
    return out


def paper_reference(path: str | Path | None = None) -> dict[str, Any]:
    """SPEC §8's reference values (Table 1, Fig. 3b, Table 4) as stored in ``paper_reference.yaml``."""
    import yaml

    p = Path(path) if path is not None else PAPER_REFERENCE_FILE
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"paper reference file {p} is missing (git checkout baselines/paper_reference.yaml)") from None
    except yaml.YAMLError as exc:
        raise BaselineError(f"paper reference file {p} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or "table1" not in data:
        raise BaselineError(f"paper reference file {p} lacks 'table1'")
    return data


def paper_values(pair_id: str, dataset: str, alpha: float,
                 reference: Mapping[str, Any] | None = None) -> dict[str, tuple[float, float, float]]:
    """Paper (base, tuned, relative change) per metric for one cell of Table 1; empty if none."""
    ref = reference if reference is not None else paper_reference()
    cell = ref["table1"].get(pair_id, {}).get(dataset, {})
    vals = next((v for a, v in cell.items() if math.isclose(float(a), alpha)), None) or {}
    return {m: (float(b), float(t), (float(t) - float(b)) / abs(float(b))) for m, (b, t) in vals.items()}
