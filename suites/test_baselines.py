"""Measured values and intervals against the stored baselines (``baselines/<pair>/<dataset>/alpha-<a>.json``).

A missing baseline fails with the command that creates it; ``--regen-baselines`` rewrites
the baselines of the cases in this run from their real measurements, with each pair's canonical
settings only (``--regen-variant``: other settings go to ``variants/<settings>/`` beside them;
:mod:`eapbench.suite.canonical`). A canonical run fails on a stored baseline measured with other
settings; a non-canonical run compares with its variant, else skips. Tolerances per
device and dtype come from ``baselines/tolerances.yaml``.
"""

from __future__ import annotations

import warnings

import pytest

from eapbench.suite import baselines as B
from eapbench.suite import canonical


def _record(suite, case) -> dict:
    m = suite.runner.measure(case.pair, case.dataset, case.alpha)
    return B.make_record(pair=m.pair, dataset=m.dataset, alpha=m.alpha, metrics=m.metrics, counts=m.counts,
                         config=m.config, provenance=m.provenance)


@pytest.mark.baseline
def test_matches_baseline(suite, case):
    record = _record(suite, case)
    path = B.baseline_path(case.pair.id, case.dataset, case.alpha, root=suite.baselines)
    diffs = suite.noncanonical(case)  # this run's settings that are not the pair's canonical ones
    variant = canonical.variant_path(suite.baselines, case.pair.id, case.dataset, case.alpha, diffs) if diffs else None
    if suite.regen:  # non-canonical settings never overwrite the canonical file (conftest refuses them
        if diffs and not suite.regen_variant:  # before measuring unless --regen-variant)
            pytest.fail(f"--regen-baselines with non-canonical settings ({canonical.describe(diffs)})", pytrace=False)
        B.write_baseline(variant or path, record)
        return
    if variant is not None and variant.is_file():
        path = variant  # stored by an earlier run with these same settings (--regen-variant)
    if not path.is_file() and case.pair.group == "user":
        pytest.skip(f"user pair {case.pair.id}: no stored baseline to compare with; store this run's values with "
                    f"`{B.regen_command(case.pair.id, case.dataset, case.alpha)} --pair ...`")
    if not path.is_file():
        pytest.fail(f"no stored baseline {path}; create it from a real run with "
                    f"`{B.regen_command(case.pair.id, case.dataset, case.alpha)}`", pytrace=False)
    stored = B.read_baseline(path)
    why = B.config_mismatch(stored, record)
    if why and not diffs:  # this run is canonical, so the stored file should be too
        pytest.fail(f"stored baseline {path} is not canonical: it was measured with other settings ({why}) "
                    f"than {case.pair.id}'s canonical ones, which this run uses; regenerate it with "
                    f"`{B.regen_command(case.pair.id, case.dataset, case.alpha)}`", pytrace=False)
    if why:
        pytest.skip(f"baseline {path} holds {case.pair.id}'s canonical run and this run's settings differ "
                    f"({canonical.describe(diffs)}): not comparable. Compare with the canonical settings, or store "
                    "this run's values beside it with --regen-baselines --regen-variant")
    tol = B.load_tolerance(record["config"]["device"], record["config"]["dtype"])
    problems = B.compare(stored, record, tol, where=str(path))
    boundaries = suite.runner.claims.decision_boundaries()
    changed = B.verdict_changes(stored, record, boundaries)
    edge = B.borderline(record, tol, boundaries)
    notes = [f"verdict change: {c}" for c in changed] + edge
    assert not problems, (f"{case.id}: {len(problems)} value(s) outside tolerance "
                          f"(stored on {stored['provenance'].get('device')}/{stored['provenance'].get('dtype')} "
                          f"at {stored['provenance'].get('git_commit')}):\n  " + "\n  ".join(problems + notes))
    if notes:  # within tolerance, but a verdict sits on (or crossed) its boundary: said, in the warnings summary
        warnings.warn(B.BorderlineWarning(f"{case.id}: " + "; ".join(notes)))
