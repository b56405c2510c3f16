"""dbt on the DuckLake warehouse, on a real PostgreSQL catalog (the `postgres` fixture) and a local data directory.

The same raw rows (tests/test_models.py's hand-made warehouse) are put in an embedded file and in a lake; dbt builds
both; every mart must be equal, EXCEPT ALL both ways, after the first build (tables, views, seeds, unit and data
tests) and again after new raw rows arrive (the incremental marts MERGE INTO the lake). The catalog's password must
not appear in anything dbt writes (target/, its logs) or prints. Then the commands: `loyalty-etl models`, `status`
and `check` on the lake while a reader keeps the lake attached, and a catalog that cannot be reached.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import duckdb
import pytest

from pipelines.migrate import migrate_raw
from pipelines.models import SQL_DIR, last_results, run_dbt
from pipelines.warehouse import configured_warehouse
from tests.helpers.lake import Lake
from tests.test_models import LATE_CARECLOUD, NEW_TRANSFER, VARS, build_raw_warehouse, insert_carecloud, insert_transfer

ROOT = Path(__file__).resolve().parent.parent
MARTS = ["fct_points_ledger", "dim_customers", "agg_customer_points_daily", "agg_store_points_monthly",
         "agg_transfer_network", "agg_points_expiring"]
AUDIT_COLUMNS = {"_dbt_updated_at", "_dbt_invocation_id"}   # which invocation wrote a row: differs by design


@pytest.fixture
def lake_settings(postgres, tmp_path, monkeypatch) -> dict[str, str]:
    """`[loyalty] warehouse = "ducklake"` on the fixture's catalog (env vars, for this process and the CLI's)."""
    env = {**Lake(postgres, tmp_path / "lake-data").env(),
           "DESTINATION__DUCKDB__CREDENTIALS": str(tmp_path / "loyalty_warehouse.duckdb")}  # dlt's dirs go beside
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def raw_into_lake(file: Path, lake) -> None:
    """The file's loyalty_raw copied into the lake (`loyalty-etl warehouse migrate`'s copy)."""
    con = lake.connect()
    try:
        migration = migrate_raw(con, str(file), source="file", target="lake")
    finally:
        con.close()
    assert len(migration.tables) == 4 and all(t.ok for t in migration.tables)


def password_forms(url: str) -> set[str]:
    in_url = urlsplit(url).password
    assert in_url and len(in_url) >= 8
    return {in_url, unquote(in_url), quote(unquote(in_url), safe="")}


def project_copy(tmp_path: Path) -> Path:
    """The dbt project in a folder of the test's own, so dbt's logs/ and target/ land there (and get searched)."""
    project = tmp_path / "sql"
    shutil.copytree(SQL_DIR, project, ignore=shutil.ignore_patterns("target", "logs", "dbt_packages"))
    return project


def mart_differences(file: Path, lake: duckdb.DuckDBPyConnection) -> dict[str, tuple[int, int, int]]:
    """Per mart: (rows only in the file, rows only in the lake, rows in the lake), audit columns left out."""
    lake.execute(f"ATTACH '{file}' AS file_wh (READ_ONLY)")
    try:
        out = {}
        for mart in MARTS:
            columns = [c for (c,) in lake.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_catalog = current_database() "
                "AND table_schema = 'loyalty' AND table_name = ? ORDER BY ordinal_position", [mart]).fetchall()
                if c not in AUDIT_COLUMNS]
            cols = ", ".join(f'"{c}"' for c in columns)
            only_file = lake.execute(f"SELECT count(*) FROM (SELECT {cols} FROM file_wh.loyalty.{mart} "
                                     f"EXCEPT ALL SELECT {cols} FROM loyalty.{mart})").fetchone()[0]
            only_lake = lake.execute(f"SELECT count(*) FROM (SELECT {cols} FROM loyalty.{mart} "
                                     f"EXCEPT ALL SELECT {cols} FROM file_wh.loyalty.{mart})").fetchone()[0]
            out[mart] = (only_file, only_lake, lake.execute(f"SELECT count(*) FROM loyalty.{mart}").fetchone()[0])
        return out
    finally:
        lake.execute("DETACH file_wh")


def assert_equal_marts(file: Path, warehouse) -> None:
    con = warehouse.connect(read_only=True)
    try:
        diff = mart_differences(file, con)
    finally:
        con.close()
    assert all(d[:2] == (0, 0) and d[2] > 0 for d in diff.values()), diff


def test_dbt_builds_the_same_marts_on_the_lake_as_on_the_file(lake_settings, postgres, tmp_path, capfd,
                                                              caplog) -> None:
    lake = configured_warehouse()
    assert lake.kind == "ducklake"
    file = tmp_path / "file.duckdb"
    build_raw_warehouse(file)
    raw_into_lake(file, lake)
    project = project_copy(tmp_path)

    def build(warehouse, target: str) -> dict[str, str]:
        rc = run_dbt(warehouse, ["build", *VARS], target_dir=tmp_path / target, project_dir=project)
        statuses = {n.unique_id: n.status for n in last_results()}
        assert rc == 0, {k: v for k, v in statuses.items() if v not in ("success", "pass")}
        return statuses

    build(file, "target-file")
    statuses = build(lake, "target-lake")
    kinds = [uid.split(".")[0] for uid in statuses]
    # every kind of node ran on the lake: seed, views, tables, incremental models, unit and data tests
    assert kinds.count("unit_test") >= 4 and kinds.count("test") >= 60 and kinds.count("seed") == 1, kinds
    manifest = json.loads((tmp_path / "target-lake" / "manifest.json").read_text())
    materialized = {n["config"]["materialized"] for n in manifest["nodes"].values() if n["resource_type"] == "model"}
    assert materialized == {"view", "table", "incremental"}
    assert_equal_marts(file, lake)

    con = lake.connect(read_only=True)
    try:
        first_build = con.execute("SELECT DISTINCT _dbt_invocation_id FROM loyalty.fct_points_ledger").fetchall()
    finally:
        con.close()
    assert len(first_build) == 1

    # New raw rows in both: a late CareCloud record for an earlier day and a new transfer.
    for target in (duckdb.connect(str(file)), lake.connect()):
        try:
            insert_carecloud(target, [LATE_CARECLOUD], "run-2")
            insert_transfer(target, NEW_TRANSFER)
        finally:
            target.close()
    build(file, "target-file")
    build(lake, "target-lake")
    assert_equal_marts(file, lake)
    # Incremental on the lake: the rows of the first build are still the first build's (merged into, not rebuilt),
    # and the model ran as a MERGE INTO the lake's table.
    con = lake.connect(read_only=True)
    try:
        by_build = dict(con.execute("SELECT _dbt_invocation_id, count(*) FROM loyalty.fct_points_ledger "
                                    "GROUP BY ALL").fetchall())
    finally:
        con.close()
    assert by_build.pop(first_build[0][0]) == 17 and list(by_build.values()) == [3], by_build
    compiled = (tmp_path / "target-lake" / "run" / "loyalty_warehouse" / "models" / "marts" / "fct_points_ledger.sql")
    assert "merge into" in compiled.read_text().lower()

    # The catalog password is nowhere dbt writes or prints, nor in our log lines.
    secrets = password_forms(postgres.url)
    out, err = capfd.readouterr()
    written = [p for d in (tmp_path / "target-lake", project / "logs") for p in d.rglob("*") if p.is_file()]
    assert written
    for secret in secrets:
        assert secret not in out + err + caplog.text
        leaked = [str(p) for p in written if secret.encode() in p.read_bytes()]
        assert not leaked, leaked


def cli(env: dict[str, str], *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_models_status_and_check_commands_on_the_lake(lake_settings, postgres, tmp_path) -> None:
    """`loyalty-etl models` builds the marts on the lake while a reader that attached the lake before keeps
    querying it (zero failures) and then sees the marts; `status` and `check` read the lake; a catalog that cannot
    be reached gives a clear message without the password (exit 1, 2 for `check`: its "no warehouse" code)."""
    lake = configured_warehouse()
    file = tmp_path / "file.duckdb"
    build_raw_warehouse(file)
    raw_into_lake(file, lake)
    env = {**os.environ, **lake_settings}
    env.pop("LOYALTY_WAREHOUSE_PATH", None)

    reader = lake.connect(read_only=True)
    seen: list[int] = []
    failures: list[str] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                seen.append(reader.cursor().execute(
                    f'SELECT count(*) FROM "{lake.config.name}".loyalty_raw.carecloud_point_history').fetchone()[0])
            except Exception as exc:  # noqa: BLE001 - counted, the assertion says what
                failures.append(repr(exc))
            time.sleep(0.2)

    thread = threading.Thread(target=read)
    thread.start()
    try:
        models = cli(env, "models")
    finally:
        done.set()
        thread.join()
    assert models.returncode == 0, models.stdout[-3000:] + models.stderr[-3000:]
    assert not failures and len(seen) >= 3 and set(seen) == {11}, (failures, len(seen))
    assert reader.execute("SELECT count(*) FROM loyalty.fct_points_ledger").fetchone()[0] == 17
    reader.close()

    status = cli(env, "status", "--json")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["warehouse"] == lake.describe() and data["runs"] == [] and data["failing_total"] == 0
    check = cli(env, "check", "--json")
    assert check.returncode == 0, check.stdout + check.stderr
    assert json.loads(check.stdout)["rows"] == 11

    # The catalog unreachable (the same server and password, a port nothing listens on).
    parts = urlsplit(postgres.url)
    dead = parts._replace(netloc=parts.netloc.rsplit(":", 1)[0] + ":1").geturl()
    env["DESTINATION__DUCKLAKE__CREDENTIALS__CATALOG"] = dead
    for args, code in ((["status"], 1), (["check"], 2), (["models"], 1)):
        result = cli(env, *args, timeout=120)
        assert result.returncode == code, (args, result.stdout, result.stderr)
        assert "127.0.0.1:1" in result.stderr, (args, result.stderr)
        for secret in password_forms(postgres.url):
            assert secret not in result.stdout + result.stderr, args


def test_a_runs_marts_step_on_the_lake_waits_for_another_build(lake_settings, tmp_path, monkeypatch) -> None:
    """`loyalty-etl models` and `merge` hold the lake's "merge" lock while they build; an unsharded run holds only
    "run", so its marts step takes "merge" first: it waits while another build holds it (that build may predate the
    run's rows), builds once it is free, and gives up ("skipped", the marts left to the next build) after
    MERGE_LOCK_WAIT_S. Two builds never MERGE into one mart at once."""
    from pipelines import runner

    lake = configured_warehouse()
    file = tmp_path / "file.duckdb"
    build_raw_warehouse(file)
    raw_into_lake(file, lake)

    other_build = lake.lock("merge").acquire()
    try:
        monkeypatch.setattr(runner, "MERGE_LOCK_WAIT_S", 1.0)
        assert runner._run_models(None, wh=lake, merge_lock=True) == "skipped"
        monkeypatch.setattr(runner, "MERGE_LOCK_WAIT_S", 600.0)
        outcome: list[str] = []
        step = threading.Thread(target=lambda: outcome.append(runner._run_models(None, wh=lake, merge_lock=True)))
        step.start()
        time.sleep(3)
        assert step.is_alive() and not outcome   # waiting: nothing built under the other build's lock
    finally:
        other_build.release()
    step.join(timeout=600)
    assert outcome == ["ok"]
    con = lake.connect(read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM loyalty.fct_points_ledger").fetchone()[0] == 17
    finally:
        con.close()
    assert lake.lock("merge").acquire().release() is None   # the step released it
