"""The example task specs shipped in docs/examples load and validate."""

from __future__ import annotations

from pathlib import Path

import pytest

from plexus.spec import load_spec

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "docs" / "examples").glob("*.yaml"))


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 2


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_spec_is_valid(path: Path) -> None:
    spec = load_spec(path)
    assert spec.name == path.stem
    assert (spec.sync is not None) == (spec.mode == "sync")
    assert (spec.async_ is not None) == (spec.mode == "async")
    assert (spec.split is not None) == (spec.mode == "split")
