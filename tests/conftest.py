"""Library tests, one folder per room of ``eapbench/``; the shared helpers (tiny models, the
finite-difference oracle, fake pipelines) live here, importable from every folder."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
