"""Model cards: one JSON file beside each shipped checkpoint, and their verification.

A card records how the checkpoint was made (parent, method, hyper-parameters, seed, steps,
thread count, wall time, machine load), what it scores (held-out accuracy), which library
versions made it, and the sha256 of every file in the folder, so a loader can prove the
weights it reads are the ones the card describes.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any

from ..cache import atomic_write_text, file_sha256

CARD_FILE = "model_card.json"
LOG_FILE = "training_log.json"


def library_versions() -> dict[str, str]:
    import numpy
    import tokenizers
    import torch
    import transformers

    from .. import __version__

    return {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "numpy": numpy.__version__, "eapbench": __version__,
            "platform": platform.platform()}


def folder_hashes(folder: str | Path) -> dict[str, str]:
    """sha256 of every file in ``folder`` except the card itself."""
    folder = Path(folder)
    return {p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != CARD_FILE}


def write_card(folder: str | Path, card: dict[str, Any]) -> Path:
    folder = Path(folder)
    card = dict(card)
    card["files_sha256"] = folder_hashes(folder)
    card["library_versions"] = library_versions()
    return atomic_write_text(folder / CARD_FILE, json.dumps(card, indent=2, sort_keys=False) + "\n")


def read_card(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no model card at {path}; rebuild the zoo with `python -m eapbench.zoo`")
    return json.loads(path.read_text())


def verify_card(folder: str | Path, weights: str = "model.safetensors") -> list[str]:
    """Problems found (empty list = every file the card lists exists and matches its hash, ``weights`` among them)."""
    folder = Path(folder)
    card = read_card(folder)
    problems = []
    expected = card.get("files_sha256", {})
    if weights not in expected:
        problems.append(f"card lists no hash for {weights}")
    for name, digest in expected.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name}: listed in the card but missing")
        elif file_sha256(path) != digest:
            problems.append(f"{name}: sha256 differs from the card")
    return problems
