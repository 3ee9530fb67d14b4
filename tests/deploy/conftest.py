"""Shared fixtures for the deploy tests: a root check and testbed names unique to this run."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable

import pytest

_counter = itertools.count()


@pytest.fixture
def root() -> None:
    """Skip the test when not root: namespaces, qdiscs and cgroups need it."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, tc, cgroups)")


@pytest.fixture
def names() -> Callable[[], tuple[str, str]]:
    """A factory of (prefix, subnet) pairs no other run on this host uses at the same time."""

    def make() -> tuple[str, str]:
        n = next(_counter)
        pid = os.getpid()
        return f"t{pid % 10000:04d}{n % 10}", f"10.213.{100 + (pid * 7 + n) % 150}.0/24"

    return make
