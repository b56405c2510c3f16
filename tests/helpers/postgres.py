"""pytest fixtures for a real PostgreSQL on loopback (pipelines/localpg.py): the lake's catalog in tests.

- `postgres_server` (session scope: one per xdist worker): the server, started once (~1 s: initdb + start).
- `postgres` (per test): a `LocalPostgres` on that server with a database of its own (fresh, dropped after the test),
  so tests never see each other's catalogs. It is the whole server: a test may `stop()`, `kill()` and `start()` it
  (the port stays, so its `url` stays valid); the fixture starts it again after the test if the test left it down.

Both skip with the reason when the machine cannot run a server (no initdb, or root without an account to run it as),
unless `LOYALTY_REQUIRE_POSTGRES=1` (CI: a missing server is then a failure, not a silent skip).
Registered for every test module in tests/conftest.py.
"""

from __future__ import annotations

import os
import uuid
from typing import Iterator

import pytest

from pipelines.localpg import LocalPostgres, unavailable_reason

REQUIRE_ENV = "LOYALTY_REQUIRE_POSTGRES"


def _need_postgres() -> None:
    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get(REQUIRE_ENV, "").strip() not in ("", "0"):
        pytest.fail(f"{REQUIRE_ENV} is set but no local PostgreSQL can run here: {reason}")
    pytest.skip(f"no local PostgreSQL: {reason}")


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPostgres]:
    _need_postgres()
    server = LocalPostgres(tmp_path_factory.mktemp("postgres"))
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def postgres(postgres_server: LocalPostgres) -> Iterator[LocalPostgres]:
    if not postgres_server.running():
        postgres_server.start()
    db = LocalPostgres(postgres_server.directory, port=postgres_server.port,
                       database=f"t_{uuid.uuid4().hex[:12]}").start()
    yield db
    if not postgres_server.running():
        postgres_server.start()
    db.drop_database(db.database)

