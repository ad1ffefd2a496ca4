"""Root pytest configuration shared by suites/ (the claims) and tests/ (the library).

``--benchmarks`` enables the pytest-benchmark speed/memory benchmarks (marker ``perf``),
which are excluded from the default runs.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("eapbench")
    group.addoption("--benchmarks", action="store_true", default=False,
                    help="run the speed/memory benchmarks (tests marked perf)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--benchmarks"):
        return
    skip = pytest.mark.skip(reason="benchmark: run with `pytest tests/ -m perf --benchmarks`")
    for item in items:
        if "perf" in item.keywords:
            item.add_marker(skip)
