"""One report from many: ``eapbench report merge DIR... --out DIR``.

CI matrix jobs, a cluster's job array or ``pytest suites/ --shard I/N`` runs each leave a report
folder; :func:`merge_reports` turns them into one ``results.json``, ``table1.md`` and figures, as
if one run had measured every case. A case measured in several folders (an online pair measured
by each shard that judged the DPO exception) counts once; if the copies disagree the merge says
so rather than choosing silently. The merged report is complete when every case that any input
planned was measured by some input.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import baselines as B
from .report import read_report, write_report

log = logging.getLogger(__name__)


class MergeError(ValueError):
    """Report folders that cannot be merged (none given, unreadable, or disagreeing values)."""


def _case(r: Mapping[str, Any]) -> str:
    return f"{r['pair']}-{r['dataset']}-a{float(r['alpha']):g}"


def merge_reports(folders: Sequence[str | Path], out: str | Path, *, with_figures: bool = True) -> dict[str, Any]:
    """Merge report folders into ``out`` (see module docstring); returns :func:`write_report`'s paths."""
    if not folders:
        raise MergeError("no report folders to merge")
    out = Path(out).resolve()
    merged: dict[str, dict[str, Any]] = {}
    source: dict[str, Path] = {}
    expected: list[str] = []
    skipped: dict[str, str] = {}
    reasons: list[str] = []
    errors: dict[str, str] = {}
    for folder in map(Path, folders):
        if folder.resolve() == out:
            raise MergeError(f"{folder}: the output folder cannot also be an input")
        payload = read_report(folder)
        for r in payload["results"]:
            cid = _case(r)
            if cid in merged:
                diff = disagreement(merged[cid], r)
                if diff:
                    raise MergeError(f"case {cid} differs between {source[cid]} and {folder}: {diff}; "
                                     "merge reports measured with the same settings, models and code")
                if len(r.get("verdicts") or {}) <= len(merged[cid].get("verdicts") or {}):
                    continue
            merged[cid], source[cid] = r, folder
        expected += [c for c in payload.get("expected_cases", []) if c not in expected]
        skipped.update(payload.get("skipped") or {})
        errors.update(payload.get("measurement_errors") or {})
        if payload.get("partial_reason"):
            reasons.append(f"{folder}: {payload['partial_reason']}")
    measured_pairs = {r["pair"] for r in merged.values()}
    skipped = {p: why for p, why in skipped.items() if p not in measured_pairs and "--shard" not in why}
    log.info("merged %d cases from %d report folders into %s", len(merged), len(folders), out)
    return write_report(list(merged.values()), out, skipped=skipped, expected=expected or None,
                        partial_reason="; ".join(reasons) or "no input measured them", with_figures=with_figures,
                        extra={"merged_from": [str(f) for f in folders], "measurement_errors": errors})


def disagreement(a: Mapping[str, Any], b: Mapping[str, Any]) -> str | None:
    """Why two copies of one case are not the same measurement (settings, or values beyond the
    baseline tolerances of their device and dtype: two machines of one kind may differ within them)."""
    ra, rb = (B.make_record(pair=r["pair"], dataset=r["dataset"], alpha=r["alpha"], metrics=r.get("metrics") or {},
                            counts=r.get("counts") or {}, config=r.get("config") or {}, provenance={}) for r in (a, b))
    why = B.config_mismatch(ra, rb)
    if why:
        return why
    cfg = ra["config"]
    problems = B.compare(ra, rb, B.load_tolerance(cfg.get("device", "cpu"), cfg.get("dtype", "float32")))
    return "; ".join(problems) or None
