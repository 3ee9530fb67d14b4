"""PostgreSQL for tests: the server PLEXUS_TEST_DB_URL names, a fresh database per use."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest


def postgres_url() -> str:
    """The PostgreSQL server URL of PLEXUS_TEST_DB_URL; skips without it (fails in CI)."""
    import os

    url = os.environ.get("PLEXUS_TEST_DB_URL")
    if not url:
        reason = ("PostgreSQL: set PLEXUS_TEST_DB_URL=postgresql+psycopg://user:pw@host/db "
                  "(.ci/run installs and starts one)")
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI must run the PostgreSQL tests")
        pytest.skip(reason)
    return url


@contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new, empty database on the server `server_url` names, dropped afterwards."""
    import secrets

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    server = make_url(server_url)
    name = f"plexus_test_{secrets.token_hex(4)}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(text(f"CREATE DATABASE {name}"))
        yield server.set(database=name).render_as_string(False)
    finally:
        with admin.connect() as c:
            c.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()
