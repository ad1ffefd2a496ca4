"""Measured values and intervals against the stored baselines (``baselines/<pair>/<dataset>/alpha-<a>.json``).

A missing baseline fails with the command that creates it; ``--regen-baselines`` rewrites
the baselines of the cases in this run from their real measurements. Tolerances per
device and dtype come from ``baselines/tolerances.yaml``.
"""

from __future__ import annotations

import pytest

from eapbench.suite import baselines as B


def _record(suite, case) -> dict:
    m = suite.runner.measure(case.pair, case.dataset, case.alpha)
    return B.make_record(pair=m.pair, dataset=m.dataset, alpha=m.alpha, metrics=m.metrics, counts=m.counts,
                         config=m.config, provenance=m.provenance)


@pytest.mark.baseline
def test_matches_baseline(suite, case):
    record = _record(suite, case)
    path = B.baseline_path(case.pair.id, case.dataset, case.alpha)
    if suite.regen:
        B.write_baseline(path, record)
        return
    if not path.is_file() and case.pair.group == "user":
        pytest.skip(f"user pair {case.pair.id}: no stored baseline to compare with; store this run's values with "
                    f"`{B.regen_command(case.pair.id, case.dataset, case.alpha)} --pair ...`")
    if not path.is_file():
        pytest.fail(f"no stored baseline {path}; create it from a real run with "
                    f"`{B.regen_command(case.pair.id, case.dataset, case.alpha)}`", pytrace=False)
    stored = B.read_baseline(path)
    why = B.config_mismatch(stored, record)
    if why:
        pytest.skip(f"baseline {path} was measured with other settings ({why}); run with those settings "
                    "or regenerate it with --regen-baselines")
    tol = B.load_tolerance(record["config"]["device"], record["config"]["dtype"])
    problems = B.compare(stored, record, tol, where=str(path))
    assert not problems, (f"{case.id}: {len(problems)} value(s) outside tolerance "
                          f"(stored on {stored['provenance'].get('device')}/{stored['provenance'].get('dtype')} "
                          f"at {stored['provenance'].get('git_commit')}):\n  " + "\n  ".join(problems))
