"""The lake's reliability rig: a `Rig` (tests/chaos/fixtures.py: sandbox + the real CLI) whose runs load a DuckLake
on the real PostgreSQL of the `postgres` fixture (the test's own catalog database) with a local data directory;
`rig.warehouse` is the `Lake` (tests/helpers/lake.py), so `rig.compare()` and `rig.invariant()` read the lake.

The tests: tests/test_lake_reader.py (a reader during a load), tests/test_lake_kill.py (kill -9 mid-load, then a
rerun), tests/test_lake_outage.py (the catalog's PostgreSQL stopped mid-run), tests/test_lake_writers.py (two writers
at once). Each checks row for row against the sandbox's truth. `make test` runs short versions, `make chaos` longer.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.chaos.fixtures import Rig
from tests.helpers.lake import Lake


@pytest.fixture
def lake_rig(rig_factory, postgres, tmp_path):
    """`lake_rig(name, customers=..., chunk_customers=..., **sandbox)` -> a Rig whose runs load a lake (catalog: the
    test's own database on the real PostgreSQL; data: a directory of the test); `rig.warehouse` is the `Lake`."""

    def make(name: str = "lake", *, chunk_customers: int | None = None, env: dict[str, str] | None = None,
             **sandbox: Any) -> Rig:
        lake = Lake(postgres, tmp_path / name / "lake-data")
        run_env = {**lake.env(), **(env or {})}
        if chunk_customers:
            run_env["LOYALTY__CHUNK_CUSTOMERS"] = str(chunk_customers)
        rig = rig_factory(name, env=run_env, **sandbox)
        rig.warehouse = lake
        return rig

    return make
