"""Where a benchmark writes its JSON and PNG.

`--out-dir DIR` wins. Without it a full run writes `benchmarks/results/` (the figures that
docs/results.md shows) and a `--quick` run writes `benchmarks/results/quick/` (ignored by git),
so a quick check never overwrites the committed results.
"""

from __future__ import annotations

import argparse
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def add_out_dir(parser: argparse.ArgumentParser) -> None:
    """Add `--out-dir` to a benchmark's command line."""
    parser.add_argument(
        "--out-dir", type=Path, default=None,
        help="where to write JSON and PNG (default: benchmarks/results, or "
             "benchmarks/results/quick with --quick)",
    )


def results_dir(args: argparse.Namespace) -> Path:
    """The directory this run writes to, created."""
    out: Path | None = getattr(args, "out_dir", None)
    if out is None:
        out = RESULTS / "quick" if getattr(args, "quick", False) else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    return out
