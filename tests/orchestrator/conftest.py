"""Fixtures for the orchestrator tests: a real orchestrator process on a loopback port."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from orchestrator.local.fleet import LocalFleet


@pytest.fixture(scope="module")
def shared_orchestrator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    """One `plexus orchestrator serve` process (no agents) for a whole test module."""
    fleet = LocalFleet(tmp_path_factory.mktemp("orch") / "data")
    try:
        fleet.start_orchestrator()
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture
def admin(shared_orchestrator: LocalFleet) -> Iterator[httpx.Client]:
    """An HTTP client sending the orchestrator's admin token."""
    with httpx.Client(base_url=shared_orchestrator.url, timeout=30.0,
                      headers={"Authorization": f"Bearer {shared_orchestrator.admin_token}"}
                      ) as client:
        yield client
