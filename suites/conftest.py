"""Wiring of the claim suite: options → pairs → parametrized cases → one session runner.

Thin on purpose (DESIGN.md): measurement lives in :mod:`eapbench.suite.runner`, judgement in
:mod:`eapbench.suite.claims`, layout in :mod:`eapbench.suite.report`. Tests marked
``@pytest.mark.claim("C1")`` get a ``case`` parameter per (pair, dataset, α) of the selected,
runnable pairs whose method class the claim applies to; every registered pair that is not
selected or cannot run here appears once per test as a skip whose reason says what is
missing and the command that runs it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pytest

from eapbench.suite import baselines as B
from eapbench.suite import canonical
from eapbench.suite import options as O
from eapbench.suite import pairs as P
from eapbench.suite.claims import load_claims
from eapbench.suite.runner import RunConfig, Runner, case_id
from eapbench.suite.sharding import parse_shard, shard_pairs, worker_gpus

log = logging.getLogger("eapbench.suite")
_SUITE = pytest.StashKey["Suite"]()
_WORKER_RESULTS = pytest.StashKey[list]()  # xdist controller: what each worker measured
# This suite's own checkout: its baselines, tolerances and expectations, wherever the package is installed.
BASELINES = Path(__file__).resolve().parent.parent / "baselines"


@dataclass(frozen=True)
class Case:
    pair: P.PairSpec
    dataset: str
    alpha: float

    @property
    def id(self) -> str:
        return case_id(self.pair.id, self.dataset, self.alpha)


@dataclass
class Suite:
    runner: Runner
    selected: tuple[P.PairSpec, ...]
    skipped: dict[str, str]  # pair id -> reason
    strict: bool
    regen: bool
    report_dir: str | None
    baselines: Path = BASELINES  # where baselines are read and written (this checkout's baselines/)
    regen_variant: bool = False  # --regen-variant: non-canonical regeneration writes beside, not over

    def expected_cases(self) -> list[str]:
        """The run's plan: every case of this session's pairs (its shard) × datasets × α."""
        return [case_id(p.id, d, a) for p in self.selected for d, a in self.runner.cases(p)]

    def noncanonical(self, case: "Case") -> dict:
        """This run's settings that differ from ``case.pair``'s canonical ones (eapbench.suite.canonical)."""
        return canonical.differences(case.pair, self.runner.config, case.dataset, case.alpha)


def _csv(value: str | None, cast=str) -> tuple | None:
    if not value:
        return None
    return tuple(cast(x.strip()) for x in value.split(",") if x.strip())


def build_suite(config: pytest.Config) -> Suite:
    opt = config.getoption
    try:  # every option checked before any model loads (eapbench.suite.options, shared with `eapbench compare`)
        O.check_run_options(device=opt("--device"), n_samples=opt("--n-samples"), n_resamples=opt("--n-resamples"),
                            batch_size=opt("--batch-size"), threads=opt("--threads"), limit=opt("--limit"),
                            gen_batch_size=opt("--gen-batch-size"), dtype=opt("--dtype"))
        selected = P.select_pairs(opt("--pairs"), opt("--pair"))
        alphas = O.check_alphas("--alphas", _csv(opt("--alphas")))
        O.check_datasets("--datasets", _csv(opt("--datasets")))
        O.check_report("--report", opt("--report"))
        O.check_placement(opt("--device-map"), opt("--max-memory"))
        O.check_gen_token_budget("--gen-token-budget", opt("--gen-token-budget"))
        backend = O.check_backend("--backend", opt("--backend"), opt("--device"))
        O.check_memory_budget("--memory-budget", opt("--memory-budget"))
        O.check_attribution(opt("--attribution"), opt("--ig-steps"), opt("--granularity"))
        shard = parse_shard(opt("--shard")) if opt("--shard") else None
    except (ValueError, KeyError, FileNotFoundError) as exc:
        raise pytest.UsageError(str(exc).strip("'\"")) from None
    device = opt("--device")
    named = O.named_pairs(opt("--pairs"), opt("--pair"), selected)  # asked for by name: must run, or an error
    cfg = RunConfig(n_samples=opt("--n-samples"), granularity=opt("--granularity"), device=device,
                    dtype=opt("--dtype"), n_resamples=opt("--n-resamples"), batch_size=opt("--batch-size"),
                    gen_batch_size=opt("--gen-batch-size"), threads=opt("--threads") or None,
                    gen_token_budget=opt("--gen-token-budget"), backend=backend,
                    limit=opt("--limit"), data_dir=opt("--data-dir"), memory_budget=opt("--memory-budget"),
                    device_map=opt("--device-map"), attribution=opt("--attribution"), ig_steps=opt("--ig-steps"),
                    faithfulness=not opt("--no-faithfulness"), share_scores=opt("--share-scores"),
                    max_memory=opt("--max-memory"))
    runnable, skipped = [], {}
    chosen = {p.id for p in selected}
    for p in (*selected, *(p for p in P.REGISTRY.values() if p.id not in chosen)):
        why = p.availability(device)
        if p.id not in chosen:
            cmd = (P.GPU_COMMAND.format(group=p.group) if p.requires_gpu
                   else f"pytest suites/ --pairs {p.id}")
            skipped[p.id] = (f"{p.id}: not selected (--pairs {opt('--pairs')}); "
                             + (why if why else f"run: `{cmd}`"))
        elif why and p.id in named:
            how = (f"; run it where those are: `{P.GPU_COMMAND.format(group=p.id)}`" if p.requires_gpu
                   else "; fix the pair (paths, weights) or drop it from the options")
            raise pytest.UsageError(f"{named[p.id]}: pair {p.id!r} cannot run here: needs "
                                    + "; ".join(dict.fromkeys(p.missing(device))) + how)
        elif why:
            skipped[p.id] = f"{p.id}: {why}"
        else:
            try:
                O.check_pair_models(named.get(p.id, f"--pairs {opt('--pairs')}"), p)
            except O.OptionError as exc:
                raise pytest.UsageError(str(exc)) from None
            runnable.append(p)
    B.use_checkout(BASELINES)
    # The runner knows every runnable pair (the DPO exception is judged against the online pairs, even
    # those another shard tests); this session's tests, and its report's plan, cover its shard only.
    runner = Runner(runnable, cfg, datasets=_csv(opt("--datasets")), alphas=alphas,
                    claims=load_claims(BASELINES / "expectations.yaml"), use_disk_cache=not opt("--no-suite-cache"))
    if shard is not None:
        mine = shard_pairs(runnable, *shard)
        for p in runnable:
            if p not in mine:
                other = next(i for i in range(1, shard[1] + 1) if p in shard_pairs(runnable, i, shard[1]))
                skipped[p.id] = f"{p.id}: in shard {other}/{shard[1]} (this run: --shard {shard[0]}/{shard[1]})"
        runnable = mine
    suite = Suite(runner, tuple(runnable), skipped, bool(config.getini("strict")), opt("--regen-baselines"),
                  opt("--report"), baselines=BASELINES, regen_variant=bool(opt("--regen-variant")))
    check_regen(suite)
    return suite


def check_regen(suite: Suite) -> None:
    """``--regen-baselines`` rewrites canonical baselines only: refuse (before measuring) a run whose
    settings differ from a selected pair's canonical ones, unless ``--regen-variant`` stores them beside."""
    if not suite.regen or suite.regen_variant:
        return
    off = {}
    for p in suite.selected:
        for dataset, alpha in suite.runner.cases(p):
            diffs = canonical.differences(p, suite.runner.config, dataset, alpha)
            if diffs:
                off.setdefault(p.id, canonical.describe(diffs))
    if off:
        raise pytest.UsageError(
            "--regen-baselines rewrites each pair's canonical baselines (the settings a default run of the pair "
            "uses), but this run differs: " + " | ".join(f"{pid}: {why}" for pid, why in off.items())
            + ". Drop those options to regenerate the canonical baselines, or add --regen-variant to store this "
            "run's values beside them, under baselines/<pair>/<dataset>/variants/<settings>/.")


def get_suite(config: pytest.Config) -> Suite:
    if _SUITE not in config.stash:
        config.stash[_SUITE] = build_suite(config)
    return config.stash[_SUITE]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" not in metafunc.fixturenames:
        return
    suite = get_suite(metafunc.config)
    runner = suite.runner
    claim_mark = metafunc.definition.get_closest_marker("claim")
    claim = runner.claims.get(claim_mark.args[0]) if claim_mark else None
    params = []
    for p in suite.selected:
        if claim is not None and not claim.expectation(runner.method_class(p)):
            continue
        for dataset, alpha in runner.cases(p):
            c = Case(p, dataset, alpha)
            # --dist loadgroup (made the mode under -n): all tests of a pair on one xdist worker
            params.append(pytest.param(c, id=c.id, marks=pytest.mark.xdist_group(p.id)))
    for pid, why in suite.skipped.items():
        p = P.REGISTRY.get(pid)
        if claim is not None and p is not None and not claim.expectation(runner.claims.method_class(p.method)):
            continue
        params.append(pytest.param(None, id=pid, marks=pytest.mark.skip(reason=why)))
    if not params:
        params = [pytest.param(None, id="no-pairs", marks=pytest.mark.skip(
            reason="no selected pair this claim applies to (see --pairs / --pair)"))]
    metafunc.parametrize("case", params)


@pytest.fixture(scope="session")
def suite(request: pytest.FixtureRequest) -> Suite:
    return get_suite(request.config)


def pytest_configure(config: pytest.Config) -> None:
    # Under pytest-xdist (-n N) all tests of a pair run on one worker, so each pair is measured once:
    # loadgroup is the effective distribution mode (cases carry xdist_group(<pair id>)).
    if getattr(config.option, "numprocesses", None) and getattr(config.option, "dist", "no") not in ("no", "loadgroup"):
        config.option.dist = "loadgroup"
    if not hasattr(config, "workerinput"):
        get_suite(config)  # option errors (and the --regen-baselines check) now, before anything is measured
    else:
        pin_worker_gpus(config)


def pin_worker_gpus(config: pytest.Config) -> None:
    """On an xdist worker of a CUDA run: see only this worker's GPUs (CUDA_VISIBLE_DEVICES, set before
    CUDA starts), so that workers measure their pairs side by side, one GPU (group) each."""
    import os

    device = config.getoption("--device")
    if not str(device).startswith("cuda") or ":" in str(device):  # an explicit cuda:N is the user's choice
        return
    n_workers = int(config.workerinput.get("workercount", os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        import torch

        visible = ",".join(str(i) for i in range(torch.cuda.device_count()))
    mine = worker_gpus(config.workerinput["workerid"], n_workers, [v for v in visible.split(",") if v.strip()])
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
    log.info("xdist worker %s: CUDA_VISIBLE_DEVICES=%s", config.workerinput["workerid"], os.environ["CUDA_VISIBLE_DEVICES"])


def _is_xdist_controller(config: pytest.Config) -> bool:
    return config.pluginmanager.hasplugin("dsession")


def pytest_sessionfinish(session: pytest.Session) -> None:
    """On an xdist worker: hand this worker's measurements (with verdicts) and errors to the controller."""
    config = session.config
    suite = config.stash.get(_SUITE, None)
    if suite is None or not hasattr(config, "workeroutput"):
        return
    import json

    from eapbench.suite.measurement import json_default

    config.workeroutput["eapbench_results"] = json.dumps(suite.runner.results(measure=False), default=json_default)
    config.workeroutput["eapbench_errors"] = json.dumps(suite.runner.errors())


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """On the xdist controller: keep what each worker measured, for the summary and the report."""
    out = getattr(node, "workeroutput", None) or {}
    if "eapbench_results" in out:
        node.config.stash.setdefault(_WORKER_RESULTS, []).append(out)


def session_results(config: pytest.Config, suite: Suite) -> tuple[list[dict], dict[str, str]]:
    """This session's results and measurement errors: the runner's, or on the xdist controller the
    workers' merged (a case measured on several workers counts once, the copy with most verdicts)."""
    outputs = config.stash.get(_WORKER_RESULTS, None)
    if outputs is None and not _is_xdist_controller(config):
        return suite.runner.results(measure=False), suite.runner.errors()
    import json

    merged: dict[tuple, dict] = {}
    errors: dict[str, str] = {}
    for out in outputs or ():
        for r in json.loads(out["eapbench_results"]):
            key = (r["pair"], r["dataset"], float(r["alpha"]))
            if key not in merged or len(r.get("verdicts", {})) > len(merged[key].get("verdicts", {})):
                merged[key] = r
        errors.update(json.loads(out.get("eapbench_errors", "{}")))
    return list(merged.values()), errors


def partial_reason(terminalreporter, exitstatus, config: pytest.Config, errors: dict[str, str]) -> str:
    """Why some planned cases may have no measurement (interrupt, -x/--maxfail, deselection, errors)."""
    stats = terminalreporter.stats
    why = []
    if exitstatus == pytest.ExitCode.INTERRUPTED:
        why.append("interrupted")
    maxfail = config.getoption("maxfail", 0) or 0
    if maxfail and len(stats.get("failed", [])) + len(stats.get("error", [])) >= maxfail:
        why.append(f"stopped after {maxfail} failure(s) (-x/--maxfail)")
    if stats.get("deselected"):
        why.append(f"{len(stats['deselected'])} test(s) deselected (-k/-m)")
    if errors:
        why.append("measurement errors: " + "; ".join(f"{c}: {e}" for c, e in sorted(errors.items())))
    return ", ".join(why) or "the tests that measure them did not run"


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    """The verdict summary (on the xdist controller: of all workers) and, with --report, one report.

    The report is *complete* when every case of the selected, runnable pairs × their datasets × α
    (the run's plan, ``Runner.expected_cases``) has a measurement; otherwise (Ctrl-C, -x/--maxfail,
    a -k deselection that leaves a case unmeasured, a failed measurement) it is marked partial:
    ``"complete": false`` with ``missing_cases`` and ``partial_reason`` in results.json, a first
    ``**PARTIAL: ...**`` line in table1.md and a PARTIAL line here."""
    from eapbench.suite.report import completeness, partial_line, summary_lines, write_report

    if hasattr(config, "workerinput") or config.getoption("collectonly", False):
        return
    suite = config.stash.get(_SUITE, None)
    if suite is None:
        return
    results, errors = session_results(config, suite)
    if not results and not suite.skipped and not suite.report_dir:
        return
    expected = suite.expected_cases()
    reason = partial_reason(terminalreporter, exitstatus, config, errors)
    partial = partial_line(completeness(results, expected, reason))
    terminalreporter.section("eapbench verdicts (pair, claim, expectation: dataset alpha verdict change [95% CI])")
    for line in summary_lines(results, {k: v for k, v in suite.skipped.items()}):
        terminalreporter.write_line(line)
    if partial:
        terminalreporter.write_line(partial, yellow=True, bold=True)
    if suite.report_dir:
        paths = write_report(results, suite.report_dir, skipped=suite.skipped, expected=expected,
                             partial_reason=reason,
                             extra={"options": {"pairs": config.getoption("--pairs"), "strict": suite.strict},
                                    "measurement_errors": errors})
        terminalreporter.write_line(f"report: {Path(paths['markdown']).parent} "
                                    f"(results.json, table1.md, {len(paths['figures'])} figures)"
                                    + ("" if paths["complete"] else " -- PARTIAL"))
