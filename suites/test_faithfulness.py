"""Are the edges the claims are about the ones that carry each model's answers? (SPEC §11; issue 13)

For each case and each side, the model's edges are ranked by mean signed score and the top k% kept (the
rest patched with their mean activation over the case's samples), k = 0.1 ... 100%; f(k) is the share of
the full model's answer log-likelihood gain over the all-ablated model that the circuit recovers, and CPR
the area under f (MIB; 1 is a circuit that does everything from its first edges, :mod:`eapbench.engine.
faithfulness`). A model whose CPR is below ``CPR_THRESHOLD`` is flagged: an xfail naming it — its
intensity/entropy verdicts describe edge scores, not edges that carry its answers (a failure under
``--strict``). Curves, CPR and CMD are in the report's faithfulness.md and fig-faithfulness.png.
Every granularity (qkv, block, head) is supported; ``--no-faithfulness`` skips this (not asked for).
"""

from __future__ import annotations

import pytest

from eapbench.suite.diagnostics import CPR_THRESHOLD


def test_top_edges_faithful(suite, case):
    if not suite.runner.config.faithfulness:
        pytest.skip("faithfulness not asked for (--no-faithfulness)")
    m = suite.runner.measure(case.pair, case.dataset, case.alpha)
    curves = m.extra.get("faithfulness") or {}
    if not curves:
        pytest.xfail(f"{case.id}: no paired samples in this case, no circuit to test")
    low = []
    for side in ("base", "tuned"):
        curve = curves.get(side)
        assert curve is not None, f"{case.id}: no faithfulness curve for the {side} model"
        assert "error" not in curve, f"{case.id}: faithfulness of the {side} model not computed: {curve['error']}"
        if curve["cpr"] < CPR_THRESHOLD:
            low.append(f"{side} CPR {curve['cpr']:.2f} < {CPR_THRESHOLD:g} (CMD {curve['cmd']:.2f})")
    if low:
        msg = (f"{case.id}: top edges not faithful enough for the claims to describe a circuit: " + "; ".join(low)
               + " (faithfulness.md in the report)")
        if suite.strict:
            pytest.fail(msg, pytrace=False)
        pytest.xfail(msg)
