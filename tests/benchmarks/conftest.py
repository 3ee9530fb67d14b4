"""The benchmark scripts run as `python benchmarks/NAME.py` and import their siblings
(`outdir`) by name; their tests import them the same way."""

from __future__ import annotations

import sys
from pathlib import Path

BENCHMARKS = str(Path(__file__).resolve().parents[2] / "benchmarks")
if BENCHMARKS not in sys.path:
    sys.path.insert(0, BENCHMARKS)
