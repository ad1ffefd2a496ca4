"""The package's rooms and their import rule: a module imports only from its own room and the rooms
below it (README "Layout"; each subpackage's docstring)."""

from __future__ import annotations

import ast
from pathlib import Path

import eapbench

PKG = Path(eapbench.__file__).resolve().parent
SHARED = {"records", "cache", "models"}
ALLOWED = {
    "shared": {"shared"},
    "engine": {"shared", "engine"},
    "analysis": {"shared", "analysis"},
    "pipeline": {"shared", "pipeline"},
    "zoo": {"shared", "pipeline", "zoo"},
    "suite": {"shared", "engine", "analysis", "pipeline", "zoo", "suite"},
}


def room_of(parts: tuple[str, ...]) -> str | None:
    """The room of a module given as its dotted parts below ``eapbench`` (None: the package itself, cli)."""
    if not parts or parts[0] in ("__init__", "cli", "__main__"):
        return None
    if parts[0] in SHARED:
        return "shared"
    return parts[0] if parts[0] in ALLOWED else None


def imported_modules(path: Path) -> list[tuple[str, ...]]:
    """Every eapbench module that ``path`` imports (relative or absolute), as dotted parts below eapbench."""
    here = path.relative_to(PKG).with_suffix("").parts
    package = here[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                mod = base + tuple((node.module or "").split(".")) if node.module else base
            elif node.module and node.module.split(".")[0] == "eapbench":
                mod = tuple(node.module.split(".")[1:])
            else:
                continue
            if node.module is None:  # from . import x: each name is a module (or the package's attribute)
                out.extend(mod + (a.name,) for a in node.names)
            else:
                out.append(mod)
        elif isinstance(node, ast.Import):
            out.extend(tuple(a.name.split(".")[1:]) for a in node.names if a.name.split(".")[0] == "eapbench")
    return out


def test_every_module_imports_only_its_room_and_below():
    bad = []
    files = sorted(PKG.rglob("*.py"))
    assert len(files) > 30
    for f in files:
        src_room = room_of(f.relative_to(PKG).with_suffix("").parts)
        if src_room is None:
            continue
        for mod in imported_modules(f):
            dst = room_of(mod)
            if dst is not None and dst not in ALLOWED[src_room]:
                bad.append(f"{f.relative_to(PKG)} ({src_room}) imports eapbench.{'.'.join(mod)} ({dst})")
    assert not bad, "\n".join(bad)


def test_the_rule_catches_a_violation(tmp_path, monkeypatch):
    """The checker itself: an engine module importing the suite is reported."""
    fake = PKG / "engine" / "graph.py"
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: "from ..suite.runner import Runner\n")
    mods = imported_modules(fake)
    assert mods == [("suite", "runner")] and room_of(mods[0]) not in ALLOWED["engine"]


def test_every_room_documents_what_it_may_import():
    for room in ALLOWED:
        if room == "shared":
            continue
        doc = (PKG / room / "__init__.py").read_text()
        assert "May import" in doc, room
