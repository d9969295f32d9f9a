"""Make the package importable from the source tree when it is not installed."""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import spasticity_cds.synth  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
