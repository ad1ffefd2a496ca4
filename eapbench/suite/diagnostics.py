"""What the claims rest on, beside them in the report (issue 13, SPEC §11): faithfulness, stability, robustness.

- ``faithfulness.md`` and ``fig-faithfulness.png``: each model's faithfulness curve f(k) on each case's
  inputs (the circuit of its top-k% edges by mean score, the rest mean-ablated), with MIB's CPR and CMD;
- ``stability.md``: how much of the top-k edge set survives a bootstrap resample of the samples (Jaccard);
- ``robustness.md`` (``--robustness``): every claim's verdict under qkv/EAP, head/EAP and qkv/EAP-IG side by side.

Plain functions of the results' dicts (``Runner.results``), like :mod:`eapbench.suite.report`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from ..cache import atomic_write_text
from .report import _sorted  # the report's case order

# A model whose circuit performance ratio (CPR, area under f(k) with edges ranked by signed score) is
# below this has top edges that do not carry its answers: its intensity/entropy claims describe scores,
# not a circuit. Set from measurement (README, "Faithfulness"): on mini-sft, ranking edges by each edge's
# measured single-edge ablation effect gives CPR 0.72; EAP's ranking gives 0.13-0.23 on the five zoo
# models. 0.5 asks the scores for most of what a measured ranking achieves.
CPR_THRESHOLD = 0.5
FAITHFUL_AT_PERCENT = 10.0  # the k marked in the figure and tabled beside CPR/CMD


def _case(r: Mapping[str, Any]) -> str:
    return f"{r['pair']} / {r['dataset']} / α {float(r['alpha']):g}"


def faithfulness_at(curve: Mapping[str, Any], percent: float = FAITHFUL_AT_PERCENT, kind: str = "abs") -> float | None:
    """f(k) at ``percent`` of the edges (``kind`` "abs": edges ranked by |score|, "signed": by score)."""
    ks = [float(k) for k in curve.get("percents", [])]
    values = curve.get(f"f_{kind}") or []
    for k, f in zip(ks, values):
        if abs(k - percent) < 1e-9:
            return float(f)
    return None


def faithfulness_markdown(results: Sequence[Mapping[str, Any]]) -> str | None:
    rows = []
    for r in _sorted(results):
        for side, curve in (r.get("extra", {}).get("faithfulness") or {}).items():
            model = r.get("provenance", {}).get("models", {}).get(side, {}).get("path") or side
            if "error" in curve:
                rows.append(f"| {_case(r)} | {side} | {model} | not computed: {curve['error']} | | | |")
                continue
            f10 = faithfulness_at(curve, kind="signed")
            curve_txt = " ".join(f"{float(f):.2f}" for f in curve.get("f_signed", []))
            rows.append(f"| {_case(r)} | {side} | {model} | {float(curve['cpr']):.3f} | {float(curve['cmd']):.3f} | "
                        f"{'' if f10 is None else f'{f10:.2f}'} | {curve_txt} |")
    if not rows:
        return None
    ks = next((c.get("percents") for r in results for c in (r.get("extra", {}).get("faithfulness") or {}).values()
               if "percents" in c), [])
    return "\n".join([
        "# Faithfulness of the scored edges (SPEC §11)",
        "",
        "f(k): the model with only its top k% edges kept (the rest patched with their mean activation over the "
        "case's samples), as a share of the full model's mean answer log-likelihood gain over the all-ablated model. "
        "CPR: area under f with edges ranked by signed score (higher is better); CMD: area under |1 − f| with "
        f"edges ranked by |score| (lower is better). The suite flags a model with CPR < {CPR_THRESHOLD:g} "
        "(`suites/test_faithfulness.py`).",
        "",
        f"| case | side | model | CPR | CMD | f({FAITHFUL_AT_PERCENT:g}%) | f (signed ranking) at k = {', '.join(f'{float(k):g}' for k in ks)}% |",
        "|---|---|---|---|---|---|---|",
        *rows, ""])


def stability_markdown(results: Sequence[Mapping[str, Any]]) -> str | None:
    rows = []
    for r in _sorted(results):
        for side, st in (r.get("extra", {}).get("stability") or {}).items():
            for entry in st.get("per_k", []):
                rows.append(f"| {_case(r)} | {side} | {float(entry['percent']):g}% | {entry['k']} | "
                            f"{float(entry['jaccard_mean']):.3f} [{float(entry['jaccard_low']):.3f}, "
                            f"{float(entry['jaccard_high']):.3f}] |")
    if not rows:
        return None
    return "\n".join([
        "# Stability of the top-k edge sets (SPEC §11; Méloux et al. 2025)",
        "",
        "Jaccard overlap between the top-k edges (by |mean score|) of the case's samples and those of a bootstrap "
        "resample of them: mean [2.5%, 97.5%] over resamples. Low overlap means the circuit the claims describe "
        "changes with the sample.",
        "",
        "| case | side | k | edges | Jaccard |",
        "|---|---|---|---|---|",
        *rows, ""])


def robustness_markdown(results: Sequence[Mapping[str, Any]]) -> str | None:
    with_variants = [r for r in _sorted(results) if r.get("robustness")]
    if not with_variants:
        return None
    names = list(dict.fromkeys(n for r in with_variants for n in r["robustness"]))
    lines = ["# Verdicts under other attribution settings (`--robustness`)", "",
             "Each claim's verdict and relative change [95% CI] on the same paired samples, per setting. "
             "**differs** marks a claim whose verdict depends on the setting.", "",
             "| case | claim | " + " | ".join(names) + " | |", "|---|---|" + "---|" * len(names) + "---|"]
    n_diff = n_all = 0
    for r in with_variants:
        claims = sorted({c for vs in r["robustness"].values() for c in vs})
        for c in claims:
            cells, statuses = [], set()
            for n in names:
                v = r["robustness"].get(n, {}).get(c)
                if v is None:
                    cells.append("—")
                    continue
                statuses.add(v["status"])
                d = v.get("details", {}).get("result") or {}
                ci = (f" {100 * d['rel_change']:+.1f}% [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}]"
                      if all(isinstance(d.get(k), (int, float)) for k in ("rel_change", "ci_low", "ci_high")) else "")
                cells.append(f"{v['status']}{ci}")
            n_all += 1
            n_diff += len(statuses) > 1
            lines.append(f"| {_case(r)} | {c} | " + " | ".join(cells) + f" | {'**differs**' if len(statuses) > 1 else ''} |")
    lines += ["", f"{n_diff} of {n_all} claim verdicts depend on the setting.", ""]
    return "\n".join(lines)


def faithfulness_figure(results: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """f(k) against k (log axis) for every model and case: one line per (case, side)."""
    curves = [(r, side, c) for r in _sorted(results)
              for side, c in (r.get("extra", {}).get("faithfulness") or {}).items() if "f_signed" in c]
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r, side, c in curves:
        ax.plot([float(k) for k in c["percents"]], [float(f) for f in c["f_signed"]], "o-" if side == "base" else "s--",
                ms=3, lw=1, label=f"{r['pair']} {side} α{float(r['alpha']):g} {r['dataset']}")
    ax.set_xscale("log")
    ax.axhline(1.0, color="grey", lw=0.6)
    ax.axvline(FAITHFUL_AT_PERCENT, color="grey", lw=0.6, ls=":")
    ax.set_xlabel("edges kept (% of real edges, top by signed score)")
    ax.set_ylabel("faithfulness f(k)")
    ax.set_title("Faithfulness of the top-k edges (rest mean-ablated)", fontsize=9)
    ax.legend(fontsize=5, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_diagnostics(results: Sequence[Mapping[str, Any]], outdir: str | Path, *, with_figures: bool = True
                      ) -> list[Path]:
    """Write whichever of faithfulness.md, stability.md, robustness.md (and the faithfulness figure) the
    results have data for; returns the paths written."""
    out = Path(outdir)
    written = []
    for name, text in (("faithfulness.md", faithfulness_markdown(results)), ("stability.md", stability_markdown(results)),
                       ("robustness.md", robustness_markdown(results))):
        if text is not None:
            written.append(atomic_write_text(out / name, text))
    if with_figures:
        fig = faithfulness_figure(results, out / "fig-faithfulness.png")
        if fig is not None:
            written.append(fig)
    return [Path(p) for p in written]
