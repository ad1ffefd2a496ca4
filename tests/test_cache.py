"""The shared cache helpers (eapbench.cache) and the converted-SmolLM2 cache (eapbench.models):
a corrupt cache entry is named in a warning, dropped and recomputed, never a traceback."""

from __future__ import annotations

import logging
import types

import pytest

import eapbench.models as models
from eapbench.cache import atomic_write_text, read_json_entry

GARBAGE = b"\x80\xff\xfe binary \x00\x9c garbage"


@pytest.mark.parametrize("content", [GARBAGE, b"", b'{"a": ', b"[1, 2]"], ids=["binary", "empty", "truncated", "list"])
def test_read_json_entry_names_and_drops_a_corrupt_entry(tmp_path, caplog, content):
    path = tmp_path / "entry.json"
    atomic_write_text(path, '{"a": 1}')
    assert read_json_entry(path) == {"a": 1}
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING):
        assert read_json_entry(path, "test entry") is None
    assert f"corrupt test entry {path}" in caplog.text and not path.exists()
    assert read_json_entry(path) is None  # missing: None, silently
    assert read_json_entry(tmp_path / "list.json", expect=list) is None


def test_garbage_conversion_marker_reconverts_smollm2(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("EAPBENCH_CACHE", str(tmp_path))
    gguf = tmp_path / "pkg" / "model.gguf"
    conversions = []

    class Saved:
        def __init__(self):
            self.config = types.SimpleNamespace(quantization_config=None)

        def save_pretrained(self, folder):
            conversions.append(folder)

    monkeypatch.setattr(models, "smollm2_gguf_path", lambda: gguf)
    monkeypatch.setattr(models, "load_model", lambda *a, **k: (Saved(), Saved()))
    folder = models.smollm2_checkpoint()
    assert len(conversions) == 2 and models.smollm2_checkpoint() == folder and len(conversions) == 2
    marker = folder / "converted-from.txt"
    marker.write_bytes(GARBAGE)
    with caplog.at_level(logging.WARNING):
        assert models.smollm2_checkpoint() == folder
    assert str(marker) in caplog.text and len(conversions) == 4  # model and tokenizer saved again
    assert marker.read_text() == str(gguf)
