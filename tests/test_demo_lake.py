"""`make demo-lake` (`loyalty-etl demo --lake`): the demo on a DuckLake whose catalog is a PostgreSQL the demo
starts itself beside the warehouse. It is left running, and attaching it exactly as printed (read-only, the password
from its file through PGPASSWORD) reads what was loaded; a second demo joins the same server and loads
incrementally; `--stop-lake` stops it. The catalog password never appears in the output."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Iterator

import duckdb
import pytest

from tests.helpers.cli import cli_env, run_cli
from tests.helpers.postgres import _need_postgres


@pytest.fixture
def demo_dir(tmp_path: Path) -> Iterator[Path]:
    """The demo's warehouse directory; whatever the test does, the demo's server is stopped afterwards."""
    _need_postgres()
    yield tmp_path / "wh"
    from pipelines.localpg import LocalPostgres

    directory = tmp_path / "wh" / "demo-lake" / "postgres"
    if directory.exists():
        LocalPostgres(directory).close()
        # run as root, the server's files live in a private directory the account can reach (localpg.py)
        pointer = directory / "server-root"
        if pointer.exists():
            shutil.rmtree(pointer.read_text().strip(), ignore_errors=True)


def test_demo_lake_leaves_a_lake_to_attach_then_stops(demo_dir: Path) -> None:
    from pipelines.localpg import LocalPostgres

    env = cli_env({}, DESTINATION__DUCKDB__CREDENTIALS=str(demo_dir / "loyalty_warehouse.duckdb"))
    first = run_cli(env, "demo", "--lake", "--customers", "15", "--no-models")
    assert first.returncode == 0, first.stdout + first.stderr[-3000:]
    server = LocalPostgres(demo_dir / "demo-lake" / "postgres")
    assert server.running(), "left running for analysts"
    assert server.password not in first.stdout + first.stderr
    assert "loyalty_raw.carecloud_point_history" in first.stdout
    assert not (demo_dir / "loyalty_warehouse.duckdb").exists(), "the lake, not the file"
    assert any((demo_dir / "demo-lake" / "files").rglob("*.parquet")), "the lake's data under the demo's directory"

    # attach it the way the output says, from another process's point of view: in-memory DuckDB, read-only
    attach = re.search(r"^\s*(ATTACH 'ducklake:postgres:[^\n]*READ_ONLY[^\n]*\));?$", first.stdout, re.M)
    assert attach, first.stdout
    assert f"PGPASSWORD=$(cat {demo_dir / 'demo-lake' / 'postgres' / 'password'})" in first.stdout
    from pipelines.lake import load_extensions

    os.environ["PGPASSWORD"] = (demo_dir / "demo-lake" / "postgres" / "password").read_text().strip()
    try:
        con = duckdb.connect()
        load_extensions(con)
        con.execute(attach.group(1))
        con.execute("USE ducklake")
        loaded = con.execute("SELECT count(*) FROM loyalty_raw.carecloud_point_history").fetchone()[0]
        runs = con.execute("SELECT count(*) FROM loyalty_raw.runs").fetchone()[0]
        con.close()
    finally:
        del os.environ["PGPASSWORD"]
    assert loaded > 0 and runs == 1

    # a second demo joins the running server and goes on incrementally on the same lake
    second = run_cli(env, "demo", "--lake", "--customers", "15", "--no-models")
    assert second.returncode == 0, second.stdout + second.stderr[-3000:]
    assert re.search(r"loyalty_raw\.runs\s+2 rows", second.stdout), second.stdout
    assert server.running()

    stopped = run_cli(env, "demo", "--stop-lake")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not server.running()
    again = run_cli(env, "demo", "--stop-lake")
    assert again.returncode == 0 and "not running" in again.stdout
