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

from eapbench.suite import pairs as P
from eapbench.suite.claims import load_claims
from eapbench.suite.runner import RunConfig, Runner, case_id

log = logging.getLogger("eapbench.suite")
_SUITE = pytest.StashKey["Suite"]()


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


def _csv(value: str | None, cast=str) -> tuple | None:
    if not value:
        return None
    return tuple(cast(x.strip()) for x in value.split(",") if x.strip())


def build_suite(config: pytest.Config) -> Suite:
    opt = config.getoption
    try:
        selected = P.select_pairs(opt("--pairs"), opt("--pair"))
        alphas = _csv(opt("--alphas"), float)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        raise pytest.UsageError(str(exc).strip("'\"")) from None
    device = opt("--device")
    cfg = RunConfig(n_samples=opt("--n-samples"), granularity=opt("--granularity"), device=device,
                    dtype=opt("--dtype"), n_resamples=opt("--n-resamples"), batch_size=opt("--batch-size"),
                    gen_batch_size=opt("--gen-batch-size"), threads=opt("--threads") or None,
                    limit=opt("--limit"), data_dir=opt("--data-dir"))
    runnable, skipped = [], {}
    chosen = {p.id for p in selected}
    for p in (*selected, *(p for p in P.REGISTRY.values() if p.id not in chosen)):
        why = p.availability(device)
        if p.id not in chosen:
            cmd = (P.GPU_COMMAND.format(group=p.group) if p.requires_gpu
                   else f"pytest suites/ --pairs {p.id}")
            skipped[p.id] = (f"{p.id}: not selected (--pairs {opt('--pairs')}); "
                             + (why if why else f"run: `{cmd}`"))
        elif why:
            skipped[p.id] = f"{p.id}: {why}"
        else:
            runnable.append(p)
    runner = Runner(runnable, cfg, datasets=_csv(opt("--datasets")), alphas=alphas, claims=load_claims(),
                    use_disk_cache=not opt("--no-suite-cache"))
    return Suite(runner, tuple(runnable), skipped, bool(config.getini("strict")), opt("--regen-baselines"), opt("--report"))


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
            params.append(pytest.param(c, id=c.id))
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


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    from eapbench.suite.report import summary_lines, write_report

    suite = config.stash.get(_SUITE, None)
    if suite is None:
        return
    results = suite.runner.results()
    if not results and not suite.skipped:
        return
    terminalreporter.section("eapbench verdicts (pair, claim, expectation: dataset alpha verdict change [95% CI])")
    for line in summary_lines(results, {k: v for k, v in suite.skipped.items()}):
        terminalreporter.write_line(line)
    if suite.report_dir:
        paths = write_report(results, suite.report_dir, skipped=suite.skipped,
                             extra={"options": {"pairs": config.getoption("--pairs"),
                                                "strict": suite.strict}})
        terminalreporter.write_line(f"report: {Path(paths['markdown']).parent} "
                                    f"(results.json, table1.md, {len(paths['figures'])} figures)")
