"""The pictures people look at first: a forest plot of every verdict, and Fig. 3a with intervals.

:func:`forest_plot` draws each pair × dataset × α as its relative change with the 95% paired
bootstrap interval, one panel per claim, coloured by verdict, with the side of 0 that the paper
reports for that pair's method class shaded. :func:`diversity_plot` is the paper's Fig. 3a
(inter-sample diversity, base vs tuned) on a y-axis fitted to the values — the paper's 1–3%
differences are visible — with the relative change and its interval beneath. Both read only
``results.json``-shaped dicts (:meth:`eapbench.suite.runner.Runner.results`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

COLOURS = {"pass": "#1a9850", "fail": "#d73027", "inconclusive": "#7f7f7f", "not_judged": "#bdbdbd"}


def expected_region(kind: str, band: float) -> tuple[float, float] | None:
    """The relative changes the paper reports for an expectation kind (None: no direction stated)."""
    inf = float("inf")
    return {"increase": (0.0, inf), "decrease": (-inf, 0.0), "no_increase": (-inf, band),
            "unchanged": (-band, band)}.get(kind)


def _label(r: Mapping[str, Any]) -> str:
    return f"{r['pair']} · {r['dataset']} · α {float(r['alpha']):g}"


def forest_rows(results: Sequence[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Claim id -> one row per measured case: label, change, interval, verdict, expected side."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(results, key=lambda r: (r["pair"], r["dataset"], float(r["alpha"]))):
        for cid, v in sorted((r.get("verdicts") or {}).items()):
            res = (v.get("details") or {}).get("result")
            if res is None:  # C6 and undefined metrics carry no single interval
                continue
            out.setdefault(cid, []).append({
                "label": _label(r), "change": float(res["rel_change"]), "low": float(res["ci_low"]),
                "high": float(res["ci_high"]), "status": v["status"], "expectation": v.get("expectation", "none"),
                "known": bool(v.get("known_deviation"))})
    return out


def forest_plot(results: Sequence[Mapping[str, Any]], path: str | Path, claims: Any = None) -> Path | None:
    """One panel per claim (C1–C5); None when no case has an interval to draw. ``claims`` (a
    :class:`~eapbench.suite.claims.ClaimSet`) gives the titles and the bands of "unchanged" claims."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    rows = forest_rows(results)
    if not rows:
        return None
    heights = [max(1.2, 0.28 * len(v) + 0.6) for v in rows.values()]
    fig, axes = plt.subplots(len(rows), 1, figsize=(8.5, sum(heights) + 1.0),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, (cid, items) in zip(axes[:, 0], rows.items()):
        y = list(range(len(items)))[::-1]
        lo = min(min(i["low"] for i in items), 0.0)
        hi = max(max(i["high"] for i in items), 0.0)
        pad = 0.08 * (hi - lo or 1.0)
        ax.set_xlim(100 * (lo - pad), 100 * (hi + pad))
        claim = claims.get(cid) if claims is not None else None
        x0, x1 = ax.get_xlim()
        for yy, it in zip(y, items):
            region = expected_region(it["expectation"], claim.band if claim is not None else 0.0)
            if region:  # the paper's reported direction for this pair's method class
                ax.fill_betweenx([yy - 0.45, yy + 0.45], max(x0, 100 * region[0]), min(x1, 100 * region[1]),
                                 color="#d9f0d3", lw=0, zorder=0)
            c = COLOURS.get(it["status"], "#000000")
            ax.plot([100 * it["low"], 100 * it["high"]], [yy, yy], color=c, lw=2, zorder=2)
            ax.plot(100 * it["change"], yy, "o", color=c, mfc="white" if it["known"] else c, ms=6, zorder=3)
        ax.axvline(0, color="black", lw=0.8, zorder=1)
        ax.set_yticks(y, [i["label"] for i in items], fontsize=7)
        ax.set_ylim(-0.6, len(items) - 0.4)
        ax.set_title(f"{cid} {claim.title if claim is not None else ''}".strip(), fontsize=9, loc="left")
        ax.tick_params(axis="x", labelsize=7)
    axes[-1, 0].set_xlabel("relative change (tuned − base) / |base|, % with 95% paired-bootstrap interval", fontsize=8)
    handles = [Line2D([], [], color=c, marker="o", lw=2, label=s) for s, c in COLOURS.items()]
    handles += [Line2D([], [], color="black", marker="o", mfc="white", lw=0, label="known deviation"),
                Patch(color="#d9f0d3", label="paper's reported direction")]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def diversity_plot(results: Sequence[Mapping[str, Any]], path: str | Path) -> Path | None:
    """Fig. 3a: diversity base vs tuned on a fitted y-axis, and the relative change with its interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    div = sorted((r for r in results if "diversity" in (r.get("metrics") or {})),
                 key=lambda r: (r["pair"], r["dataset"], float(r["alpha"])))
    if not div:
        return None
    m = [r["metrics"]["diversity"] for r in div]
    b, t = np.array([x["base"] for x in m], float), np.array([x["tuned"] for x in m], float)
    rel = np.array([x["rel_change"] for x in m], float)
    err = np.array([[x["rel_change"] - x["ci_low"] for x in m], [x["ci_high"] - x["rel_change"] for x in m]], float)
    x = np.arange(len(div))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(5.5, 0.7 * len(div) + 2), 6), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 2]})
    top.bar(x - 0.2, b, 0.4, label="base")
    top.bar(x + 0.2, t, 0.4, label="tuned")
    vals = np.concatenate([b, t])
    span = float(vals.max() - vals.min()) or 0.01 * float(vals.max() or 1.0)
    top.set_ylim(float(vals.min()) - 0.5 * span, float(vals.max()) + 0.5 * span)  # not from 0: 1-3% must show
    top.set_ylabel("diversity 1 − mean corr")
    top.set_title("Inter-sample diversity, base vs tuned (paper Fig. 3a; y-axis not from 0)", fontsize=9)
    top.legend(loc="lower right", framealpha=0.9, fontsize=7)
    status = [((r.get("verdicts") or {}).get("C4") or {}).get("status", "not_judged") for r in div]
    for xi, ri, e0, e1, s in zip(x, rel, err[0], err[1], status):
        bottom.errorbar(xi, 100 * ri, yerr=[[100 * e0], [100 * e1]], fmt="o", color=COLOURS.get(s, "black"), capsize=3)
    bottom.axhline(0, color="black", lw=0.8)
    bottom.set_ylabel("change, % (95% CI)")
    bottom.set_xticks(x, [f"{r['pair']}\n{r['dataset']} α{float(r['alpha']):g}" for r in div], fontsize=6)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
