"""Reports of a suite run: results JSON, a Markdown table in the layout of the paper's Table 1,
figures (paper Fig. 2, 3a, 3b) and the terminal verdict summary.

Everything here works on plain result dicts (``eapbench.runner.Measurement.to_dict()``):
it computes nothing that is not already measured, it only lays it out.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..cache import atomic_write_text

log = logging.getLogger(__name__)

TABLE1_METRICS = (("C1", "intensity", "Act. Intens."), ("C2", "complexity", "Info. Complex."),
                  ("C3", "kurtosis", "Dist. Kurt."))
EXTRA_METRICS = (("C4", "diversity", "Diversity"), ("C5", "output_entropy", "Out-edge entropy"))
STATUS_MARK = {"pass": "PASS", "fail": "FAIL", "inconclusive": "INCONCLUSIVE", "not_judged": "n/j",
               "skipped": "skip"}
CLAIM_ORDER = ("C1", "C2", "C3", "C4", "C5", "C6")


def _pct(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{100 * x:+.1f}%"


def _num(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    return f"{x:.3g}" if 1e-2 <= abs(x) < 1e4 else f"{x:.2e}"


def _sorted(results: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted(results, key=lambda r: (r["pair"], r["dataset"], float(r["alpha"])))


def cell(result: Mapping[str, Any], metric: str, claim: str | None = None) -> str:
    """``base → tuned (rel [lo, hi]) VERDICT`` for one metric of one result."""
    r = result["metrics"].get(metric)
    if r is None:
        return "—"
    s = (f"{_num(r['base'])} → {_num(r['tuned'])} ({_pct(r['rel_change'])} "
         f"[{_pct(r['ci_low'])}, {_pct(r['ci_high'])}])")
    v = result.get("verdicts", {}).get(claim) if claim else None
    return s + (" " + _verdict_mark(v) if v else "")


def _verdict_mark(v: Mapping[str, Any]) -> str:
    known = " (known deviation)" if v.get("known_deviation") and v["status"] == "fail" else ""
    return f"**{STATUS_MARK.get(v['status'], v['status'])}**{known}"


def markdown_table(results: Sequence[Mapping[str, Any]], reference: Mapping[str, Any] | None = None) -> str:
    """Table 1 of the paper (base → post-trained, per pair, dataset, α) with intervals and verdicts,
    then the diversity/entropy claims (C4, C5), the DPO exception (C6) and the selection counts."""
    from .baselines import paper_values

    rows = _sorted(results)
    lines = ["| Pair | Method | Dataset | α | n | " + " | ".join(t for _, _, t in TABLE1_METRICS) + " |",
             "|---|---|---|---|---|" + "---|" * len(TABLE1_METRICS)]
    paper_lines = []
    for r in rows:
        n = next(iter(r["metrics"].values()))["n"] if r["metrics"] else 0
        lines.append(f"| {r['pair']} | {r['method']} | {r['dataset']} | {float(r['alpha']):g} | {n} | "
                     + " | ".join(cell(r, m, c) for c, m, _ in TABLE1_METRICS) + " |")
        if reference is not None:
            pv = paper_values(r["pair"], r["dataset"], float(r["alpha"]), reference)
            if pv:
                paper_lines.append(
                    f"| {r['pair']} | {r['dataset']} | {float(r['alpha']):g} | " + " | ".join(
                        (f"{_pct(r['metrics'][m]['rel_change']) if m in r['metrics'] else 'n/a'} | "
                         f"{_pct(pv[m][2])}" if m in pv else "— | —") for _, m, _ in TABLE1_METRICS) + " |")
    out = ["## Table 1 layout: base → post-trained (relative change, 95% paired-bootstrap CI)", "",
           *lines, ""]
    out += ["## Diversity and output-edge entropy (Fig. 3), DPO exception", "",
            "| Pair | Dataset | α | " + " | ".join(t for _, _, t in EXTRA_METRICS) + " | C6 DPO exception |",
            "|---|---|---|" + "---|" * (len(EXTRA_METRICS) + 1)]
    for r in rows:
        c6 = r.get("verdicts", {}).get("C6")
        out.append(f"| {r['pair']} | {r['dataset']} | {float(r['alpha']):g} | "
                   + " | ".join(cell(r, m, c) for c, m, _ in EXTRA_METRICS)
                   + f" | {_verdict_mark(c6) if c6 else '—'} |")
    out.append("")
    if paper_lines:
        out += ["## eapbench beside the paper (relative change; absolute values are not comparable, SPEC §8)", "",
                "| Pair | Dataset | α | " + " | ".join(f"{t} eapbench | {t} paper" for _, _, t in TABLE1_METRICS) + " |",
                "|---|---|---|" + "---|---|" * len(TABLE1_METRICS), *paper_lines, ""]
    out += ["## Selection counts (SPEC §4)", "", "| Pair | Dataset | α | counts | T_cut | refer |", "|---|---|---|---|---|---|"]
    for r in rows:
        counts = ", ".join(f"{k} {v}" for k, v in r.get("counts", {}).items())
        sel = r.get("selection", {})
        out.append(f"| {r['pair']} | {r['dataset']} | {float(r['alpha']):g} | {counts} | "
                   f"{sel.get('t_cut') or ''} | {_num(float(sel['refer'])) if sel.get('refer') is not None else ''} |")
    out.append("")
    verdict_lines = [f"- `{r['pair']}` {r['dataset']} α={float(r['alpha']):g}: {v['message']}"
                     for r in rows for c in CLAIM_ORDER if (v := r.get("verdicts", {}).get(c))]
    if verdict_lines:
        out += ["## Verdicts", "", *verdict_lines, ""]
    return "\n".join(out)


def summary_lines(results: Sequence[Mapping[str, Any]], skipped: Mapping[str, str] | None = None) -> list[str]:
    """One line per pair × claim: each (dataset, α) verdict with its relative change."""
    by_pair: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in _sorted(results):
        by_pair[r["pair"]].append(r)
    lines = []
    for pair, rs in by_pair.items():
        for c in CLAIM_ORDER:
            parts = []
            for r in rs:
                v = r.get("verdicts", {}).get(c)
                if v is None:
                    continue
                res = v.get("details", {}).get("result")
                change = f" {_pct(res['rel_change'])} [{_pct(res['ci_low'])}, {_pct(res['ci_high'])}]" if res else ""
                mark = STATUS_MARK.get(v["status"], v["status"]) + ("(known)" if v.get("known_deviation") and v["status"] == "fail" else "")
                parts.append(f"{r['dataset']} a{float(r['alpha']):g} {mark}{change}")
            if parts:
                kind = next(r["verdicts"][c]["expectation"] for r in rs if c in r.get("verdicts", {}))
                lines.append(f"{pair:<20} {c} {kind:<11} " + "; ".join(parts))
    for pair, reason in (skipped or {}).items():
        lines.append(f"{pair:<20} skipped: {reason.removeprefix(pair + ': ')}")
    return lines


def write_results_json(results: Sequence[Mapping[str, Any]], path: str | Path,
                       extra: Mapping[str, Any] | None = None) -> Path:
    payload = {"results": [{k: v for k, v in r.items() if k != "figures"} for r in _sorted(results)],
               **(extra or {})}
    return atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def write_figure_data(results: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """The per-edge and per-node data behind Fig. 2 and Fig. 3b, by case id (kept out of results.json
    for its size), so that ``eapbench report merge`` redraws every figure."""
    data = {f"{r['pair']}-{r['dataset']}-a{float(r['alpha']):g}": r["figures"] for r in _sorted(results)
            if r.get("figures")}
    return atomic_write_text(path, json.dumps(data, default=str) + "\n")


def read_report(outdir: str | Path) -> dict[str, Any]:
    """A report folder's ``results.json`` with each result's figure data put back (``figure_data.json``)."""
    folder = Path(outdir)
    try:
        payload = json.loads((folder / "results.json").read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{folder} holds no results.json: not an eapbench report folder") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{folder / 'results.json'} is not valid JSON ({exc}); rerun the suite for that report") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("results"), list):
        raise ValueError(f"{folder / 'results.json'} has no 'results' list: not an eapbench report")
    fig_path = folder / "figure_data.json"
    figs = {}
    if fig_path.is_file():
        try:
            figs = json.loads(fig_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            log.warning("ignoring unreadable %s (%s): Fig. 2 and Fig. 3b of its cases are not redrawn", fig_path, exc)
    for r in payload["results"]:
        cid = f"{r['pair']}-{r['dataset']}-a{float(r['alpha']):g}"
        if cid in figs:
            r["figures"] = figs[cid]
    return payload


def figures(results: Sequence[Mapping[str, Any]], outdir: str | Path) -> list[Path]:
    """Fig. 2 (relative edge-strength change heatmaps), Fig. 3b (output-edge entropy per source node),
    Fig. 3a (diversity base vs tuned, with intervals) and the forest plot of every verdict
    (:mod:`eapbench.suite.forest`), from measured values only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    rows = [r for r in _sorted(results) if r.get("figures")]
    for r in rows:
        f = r["figures"]
        tag = f"{r['pair']}-{r['dataset']}-a{float(r['alpha']):g}"
        base, tuned = np.asarray(f["mean_abs_base"], float), np.asarray(f["mean_abs_tuned"], float)
        mask = np.asarray(f["edge_mask"], bool)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(mask & (base > 0), (tuned - base) / base, np.nan)
        lim = float(np.nanmax(np.abs(rel))) if np.isfinite(rel).any() else 1.0
        fig, ax = plt.subplots(figsize=(max(6, 0.25 * rel.shape[1] + 2), max(4, 0.25 * rel.shape[0] + 1.5)))
        im = ax.imshow(rel, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
        ax.set_yticks(range(len(f["sources"])), f["sources"], fontsize=6)
        ax.set_xticks(range(len(f["destinations"])), f["destinations"], fontsize=6, rotation=90)
        ax.set_xlabel("destination")
        ax.set_ylabel("source")
        ax.set_title(f"Relative change of mean |edge score|, {tag} (n={f.get('n', '?')})", fontsize=9)
        fig.colorbar(im, ax=ax, label="(tuned - base) / base")
        fig.tight_layout()
        paths.append(_save(fig, out / f"fig2-edge-change-{tag}.png"))
        plt.close(fig)

        eb, et = np.asarray(f["entropy_per_node_base"], float), np.asarray(f["entropy_per_node_tuned"], float)
        fig, ax = plt.subplots(figsize=(max(6, 0.2 * len(eb) + 2), 3.5))
        x = np.arange(len(eb))
        ax.plot(x, eb, "o-", label="base", ms=3)
        ax.plot(x, et, "s-", label="tuned", ms=3)
        ax.set_xticks(x, f.get("entropy_sources", f["sources"])[:len(eb)], fontsize=6, rotation=90)
        ax.set_ylabel("normalised output-edge entropy")
        ax.set_title(f"Output-edge entropy per source node, {tag}", fontsize=9)
        ax.legend()
        fig.tight_layout()
        paths.append(_save(fig, out / f"fig3b-output-entropy-{tag}.png"))
        plt.close(fig)

    from .forest import diversity_plot, forest_plot

    fig3a = diversity_plot(results, out / "fig3a-diversity.png")
    if fig3a is not None:
        paths.append(fig3a)
    try:
        from .claims import load_claims

        claims = load_claims()
    except (FileNotFoundError, ValueError) as exc:  # titles and bands only: the plot does without them
        log.warning("claim expectations unavailable for the forest plot: %s", exc)
        claims = None
    forest = forest_plot(results, out / "forest.png", claims)
    if forest is not None:
        paths.append(forest)
    return paths


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=120)
    return path


# What write_report owns in a report folder: these names, and figures named by these patterns.
# Anything else in the folder (a user's notes, other tools' files) is never touched.
OWNED_FILES = ("results.json", "table1.md", "figure_data.json", "faithfulness.md", "stability.md", "robustness.md")
OWNED_FIGURES = ("fig2-edge-change-*.png", "fig3a-diversity.png", "fig3b-output-entropy-*.png", "forest.png",
                 "fig-faithfulness.png")


def owned_files(outdir: str | Path) -> list[Path]:
    """The files in ``outdir`` that a report writer made (:data:`OWNED_FILES`, :data:`OWNED_FIGURES`)."""
    out = Path(outdir)
    found = {out / n for n in OWNED_FILES if (out / n).is_file()}
    for pattern in OWNED_FIGURES:
        found.update(p for p in out.glob(pattern) if p.is_file())
    return sorted(found)


def completeness(results: Sequence[Mapping[str, Any]], expected: Sequence[str] | None,
                 reason: str | None = None) -> dict[str, Any]:
    """``complete`` / ``missing_cases`` of a report: a report is complete when every expected case
    (``<pair>-<dataset>-a<alpha>``) has a measurement; without ``expected``, the measured cases are it."""
    have = {f"{r['pair']}-{r['dataset']}-a{float(r['alpha']):g}" for r in results}
    expected = list(expected) if expected is not None else sorted(have)
    missing = [c for c in expected if c not in have]
    out: dict[str, Any] = {"complete": not missing, "expected_cases": expected, "missing_cases": missing}
    if missing and reason:
        out["partial_reason"] = reason
    return out


def partial_line(status: Mapping[str, Any]) -> str | None:
    """One line saying a report is partial (which cases are missing and why), or None if complete."""
    if status.get("complete", True):
        return None
    missing, expected = status["missing_cases"], status["expected_cases"]
    why = f" ({status['partial_reason']})" if status.get("partial_reason") else ""
    return (f"PARTIAL: {len(missing)} of {len(expected)} cases not measured{why}: " + ", ".join(missing))


def write_report(results: Sequence[Mapping[str, Any]], outdir: str | Path, *,
                 skipped: Mapping[str, str] | None = None, extra: Mapping[str, Any] | None = None,
                 with_figures: bool = True, expected: Sequence[str] | None = None,
                 partial_reason: str | None = None) -> dict[str, Any]:
    """Write ``results.json``, ``table1.md`` and the figures into ``outdir``; return their paths.

    ``expected`` lists the case ids the run was meant to measure: when some have no result the
    report is marked partial (``"complete": false`` and ``missing_cases`` in results.json, a
    ``**PARTIAL**`` first line in table1.md, ``partial_reason`` saying why if given). Files a
    previous report left in ``outdir`` (:func:`owned_files`) that this one does not rewrite are
    removed; other files in the folder are left alone.
    """
    from .baselines import paper_reference
    from .diagnostics import write_diagnostics

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    earlier = owned_files(out)
    try:
        reference = paper_reference()
    except (FileNotFoundError, ValueError) as exc:
        log.warning("paper reference values unavailable: %s", exc)
        reference = None
    status = completeness(results, expected, partial_reason)
    md = markdown_table(results, reference)
    partial = partial_line(status)
    if partial:
        md = f"**{partial}**\n\n" + md
    if skipped:
        md += "\n## Skipped pairs\n\n" + "\n".join(f"- `{p}`: {why}" for p, why in skipped.items()) + "\n"
    paths = {"json": write_results_json(results, out / "results.json",
                                        {"skipped": dict(skipped or {}), **status, **(extra or {})}),
             "markdown": atomic_write_text(out / "table1.md", md + "\n"),
             "figure_data": write_figure_data(results, out / "figure_data.json"),
             "figures": figures(results, out) if with_figures else []}
    paths["diagnostics"] = write_diagnostics(results, out, with_figures=with_figures)
    written = {Path(paths["json"]), Path(paths["markdown"]), Path(paths["figure_data"]), *map(Path, paths["figures"]),
               *paths["diagnostics"]}
    for stale in earlier:
        if stale not in written:
            stale.unlink(missing_ok=True)
            log.info("removed %s, left by an earlier report", stale)
    paths.update(status)
    log.info("report written to %s", out)
    return paths
