"""The readers on the DuckLake warehouse (a real PostgreSQL catalog): `status`, `check` and every dashboard page
show the same as on the embedded file for the same data.

One sandbox run by the real CLI loads a file; its raw schema is copied into a lake (warehouse migrate's copy) and
dbt builds the marts on both with one as-of date. Then the readers read each, through the project's `Warehouse`
(the lake attached read-only), and must agree: status's runs and failing customers, check's result, and each page's
metrics and tables.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from dashboard import db
from dashboard.db import TIMEZONE_ENV, WAREHOUSE_ENV
from pipelines.carecloud.audit import check_flattening
from pipelines.commands.dashboard import app_path
from pipelines.commands.status import read_status
from pipelines.localpg import LocalPostgres
from pipelines.migrate import migrate_raw
from pipelines.models import run_dbt
from pipelines.sandbox import FaultConfig, Sandbox, SandboxConfig
from pipelines.warehouse import FileWarehouse, configured_warehouse
from tests.helpers.lake import Lake
from tests.test_models import VARS

ROOT = Path(__file__).resolve().parent.parent
NOW = "2026-11-20T00:00:00+00:00"
PAGES = ["overview", "trends", "stores", "transfers", "expirations", "customer", "health"]


@pytest.fixture(scope="module")
def warehouses(postgres_server, tmp_path_factory):
    """(file, lake settings): the same raw data and marts in an embedded file and in a lake."""
    d = tmp_path_factory.mktemp("lake-readers")
    file = d / "file" / "loyalty_warehouse.duckdb"
    sb = Sandbox(SandboxConfig(customers=20, seed=11, now=NOW), FaultConfig())
    sb.start("127.0.0.1", 0)
    try:
        env = {**os.environ, **sb.env(file),
               "SOURCES__CARECLOUD__RATE_LIMIT": "1000", "SOURCES__CAPILLARY__RATE_LIMIT": "1000"}
        run = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "--until", NOW, "--no-models"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    finally:
        sb.stop()
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    pg = LocalPostgres(postgres_server.directory, port=postgres_server.port,
                       database=f"t_{uuid.uuid4().hex[:12]}").start()
    settings = {**Lake(pg, d / "lake-data").env(),
                "DESTINATION__DUCKDB__CREDENTIALS": str(d / "lake" / "loyalty_warehouse.duckdb")}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in settings.items():
            mp.setenv(key, value)
        lake = configured_warehouse()
        con = lake.connect()
        try:
            assert all(t.ok for t in migrate_raw(con, str(file), source="file", target="lake").tables)
        finally:
            con.close()
        for wh in (FileWarehouse(file), lake):
            assert run_dbt(wh, ["build", *VARS], quiet=True, target_dir=d / f"target-{wh.kind}") == 0
    try:
        yield file, settings
    finally:
        pg.drop_database(pg.database)


@pytest.fixture
def lake(warehouses, monkeypatch):
    _, settings = warehouses
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv(WAREHOUSE_ENV, raising=False)
    monkeypatch.setattr(db, "_configured", None)
    yield configured_warehouse()
    for con in list(db._lake.values()):
        con.close()
    db._lake.clear()


def test_status_and_check_read_the_same_on_the_lake(warehouses, lake) -> None:
    file, _ = warehouses
    on_file, on_lake = read_status(file), read_status(lake)
    assert on_lake["warehouse"] == lake.describe() and on_file["warehouse"] == str(file)
    assert on_file["runs"] and on_lake["runs"] == on_file["runs"]
    assert (on_lake["failing"], on_lake["failing_total"]) == (on_file["failing"], on_file["failing_total"])
    results = []
    for wh in (FileWarehouse(file), lake):
        con = wh.connect(read_only=True)
        try:
            results.append(check_flattening(con, examples=5).to_dict())
        finally:
            con.close()
    assert results[0]["rows"] > 0 and results[1] == results[0]


def page_contents(at: AppTest) -> dict[str, list]:
    """What a page shows in its main area: metrics and tables (the sidebar names the warehouse: left out)."""
    main = at.main
    return {
        "metrics": [(m.label, m.value, m.delta) for m in main.metric],
        "tables": [pd.DataFrame(t.value).reset_index(drop=True) for t in main.dataframe],
        "warnings": [w.value for w in main.warning] + [e.value for e in main.error],
    }


def test_every_dashboard_page_shows_the_same_on_the_lake(warehouses, lake, monkeypatch) -> None:
    file, _ = warehouses
    monkeypatch.setenv(TIMEZONE_ENV, "UTC")
    shown: dict[str, dict[str, dict]] = {}
    for name, on_lake in (("lake", True), ("file", False)):
        if on_lake:
            monkeypatch.delenv(WAREHOUSE_ENV, raising=False)
        else:
            monkeypatch.setenv(WAREHOUSE_ENV, str(file))
        at = AppTest.from_file(str(app_path()), default_timeout=600)
        for page in PAGES:
            at.switch_page(f"views/{page}.py").run()
            assert not at.exception, (name, page, [e.value for e in at.exception])
            shown.setdefault(page, {})[name] = page_contents(at)
        if on_lake:
            assert list(db._lake) == [lake.describe()]   # the pages shared one kept read-only attachment
    for page, both in shown.items():
        lake_page, file_page = both["lake"], both["file"]
        assert not lake_page["warnings"], (page, lake_page["warnings"])
        assert lake_page["metrics"] == file_page["metrics"], page
        assert len(lake_page["tables"]) == len(file_page["tables"]), page
        for a, b in zip(lake_page["tables"], file_page["tables"]):
            pd.testing.assert_frame_equal(a, b, check_dtype=False)
    assert any(both["lake"]["metrics"] for both in shown.values())
    assert sum(len(both["lake"]["tables"]) for both in shown.values()) >= 5
