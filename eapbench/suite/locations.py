"""Where the suite's hand-written and stored files are: the suite's own checkout, not the installed package.

Baselines (``baselines/<pair>/<dataset>/alpha-<a>.json``), tolerances, expectations and the
paper's reference values belong to the checkout that holds ``suites/``: ``pytest suites/``
passes that folder explicitly (``suites/conftest.py`` knows its own path), so a non-editable
``pip install .`` (the package in site-packages) still reads and writes the checkout's files.

Without an explicit folder (``eapbench compare``, library use) the files are looked up in the
checkout around the current directory (the nearest parent holding ``baselines/expectations.yaml``
and ``suites/``), then in the checkout the package was imported from (an editable install), and
the two hand-written files ``eapbench compare`` needs, ``expectations.yaml`` and
``paper_reference.yaml``, finally in the copies shipped inside the package (``eapbench/suite/data/``,
kept identical to ``baselines/`` by ``tests/suite/test_locations.py``).
"""

from __future__ import annotations

from pathlib import Path

PACKAGED = Path(__file__).resolve().parent / "data"
SOURCE_CHECKOUT = Path(__file__).resolve().parents[2]  # the checkout when the package is used in place
SHIPPED = ("expectations.yaml", "paper_reference.yaml")


def is_checkout(folder: str | Path) -> bool:
    folder = Path(folder)
    return (folder / "baselines" / "expectations.yaml").is_file() and (folder / "suites").is_dir()


def find_checkout(start: str | Path | None = None) -> Path | None:
    """The nearest folder at or above ``start`` (default: the current directory) that is an eapbench
    checkout, else the checkout the package itself lives in, else None (an installed package)."""
    here = Path(start if start is not None else Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if is_checkout(folder):
            return folder
    return SOURCE_CHECKOUT if is_checkout(SOURCE_CHECKOUT) else None


def baselines_dir(start: str | Path | None = None) -> Path:
    """``<checkout>/baselines`` (see :func:`find_checkout`); outside any checkout, the package's own
    ``baselines`` location (where nothing is stored: a missing baseline then says how to create it)."""
    checkout = find_checkout(start)
    return (checkout or SOURCE_CHECKOUT) / "baselines"


def hand_written(name: str, baselines: str | Path | None = None) -> Path:
    """A hand-written file of ``baselines/``: from ``baselines`` if given, else from the checkout
    (:func:`baselines_dir`), else the copy shipped in the package (expectations, paper reference)."""
    if baselines is not None:
        return Path(baselines) / name
    found = baselines_dir() / name
    if found.is_file() or name not in SHIPPED:
        return found
    return PACKAGED / name
