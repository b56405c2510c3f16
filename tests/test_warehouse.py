"""The Warehouse contract (pipelines/warehouse.py): the embedded file exactly as before, and the DuckLake
configuration (dlt's own `[destination.ducklake.credentials]`) without a catalog server. The lake against a real
PostgreSQL: tests/test_lake_pipeline.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.config import ConfigError, load_settings
from pipelines.errors import WarehouseBusy, WarehouseMissing
from pipelines.lock import RunLocked
from pipelines.logs import redact
from pipelines.warehouse import FileWarehouse, LakeWarehouse, configured_warehouse, open_warehouse

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "pw-not-for-logs-8f2c"
CATALOG = f"postgresql://loader:{PASSWORD}@127.0.0.1:1/loyalty_lake"


@pytest.fixture
def env(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith(("SOURCES__", "LOYALTY__", "DESTINATION__")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("DESTINATION__DUCKDB__CREDENTIALS", str(tmp_path / "wh" / "w.duckdb"))
    return monkeypatch


def test_the_default_is_the_embedded_file(env, tmp_path) -> None:
    wh = open_warehouse(load_settings())
    assert isinstance(wh, FileWarehouse) and wh.kind == "duckdb"
    assert wh.path == tmp_path / "wh" / "w.duckdb" and wh.describe() == str(wh.path)
    assert wh.lock_path == tmp_path / "wh" / "w.duckdb.lock"
    assert wh.pipelines_dir == tmp_path / "wh" / ".dlt-pipelines"
    assert wh.dbt_env() == {"LOYALTY_WAREHOUSE_PATH": str(wh.path)}
    assert isinstance(configured_warehouse(), FileWarehouse)
    assert not wh.exists()
    with pytest.raises(WarehouseMissing, match="does not exist yet"):
        wh.connect(read_only=True)
    conn = wh.connect()
    conn.execute("CREATE TABLE t AS SELECT 1 AS a")
    assert conn.execute("SELECT current_setting('memory_limit')").fetchone()[0] == "244.1 MiB"  # 256MB, the settings' limit
    conn.close()
    assert wh.exists()
    with wh.connect(read_only=True) as ro:
        assert ro.execute("SELECT a FROM t").fetchall() == [(1,)]


def test_file_lock_refuses_a_second_run_whatever_the_scope(env) -> None:
    wh = open_warehouse(load_settings())
    with wh.lock("run"):
        assert wh.lock_path.exists()
        for scope in ("run", "merge", "run:carecloud:shard 1/2"):
            with pytest.raises(RunLocked, match="another run is using this warehouse"):
                wh.lock(scope).acquire()
    wh.lock("run").acquire().release()


def test_a_reader_is_told_at_once_that_a_load_holds_the_file(env, tmp_path) -> None:
    wh = open_warehouse(load_settings())
    wh.connect().close()
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
                               "print('held', flush=True); time.sleep(60)", str(wh.path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(WarehouseBusy, match="being written by another process"):
            wh.connect(read_only=True)
        assert time.monotonic() - started < 5
    finally:
        holder.kill()
        holder.wait()


def test_an_unknown_warehouse_kind_is_refused(env) -> None:
    env.setenv("LOYALTY__WAREHOUSE", "duckdb-file")
    with pytest.raises(ConfigError, match="warehouse must be one of 'duckdb', 'ducklake', not 'duckdb-file'"):
        load_settings()


def test_lake_needs_a_postgres_catalog(env) -> None:
    env.setenv("LOYALTY__WAREHOUSE", "ducklake")
    with pytest.raises(ConfigError, match="needs the lake's catalog.*DESTINATION__DUCKLAKE__CREDENTIALS__CATALOG"):
        open_warehouse(load_settings())
    env.setenv("DESTINATION__DUCKLAKE__CREDENTIALS__CATALOG", "sqlite:///catalog.sqlite")
    with pytest.raises(ConfigError, match="catalog must be a PostgreSQL URL.*not a sqlite catalog"):
        open_warehouse(load_settings())
    env.setenv("DESTINATION__DUCKLAKE__CREDENTIALS__CATALOG", CATALOG)
    env.setenv("DESTINATION__DUCKLAKE__CREDENTIALS__DUCKLAKE_NAM", "x")
    with pytest.raises(ConfigError, match="DESTINATION__DUCKLAKE__CREDENTIALS__DUCKLAKE_NAM; did you mean DESTINATION__DUCKLAKE__CREDENTIALS__DUCKLAKE_NAME"):
        open_warehouse(load_settings())


def test_lake_configuration_from_dlts_own_keys(env, tmp_path) -> None:
    """The catalog URL and a storage given as a plain string (dlt's docs' form, which dlt's own resolution
    ignores) or as dlt's [storage] table; the password is redacted everywhere it could show."""
    env.setenv("LOYALTY__WAREHOUSE", "ducklake")
    env.setenv("DESTINATION__DUCKLAKE__CREDENTIALS__CATALOG", CATALOG)
    wh = open_warehouse(load_settings())
    assert isinstance(wh, LakeWarehouse) and wh.kind == "ducklake"
    c = wh.config
    assert (c.name, c.metadata_schema) == ("ducklake", "ducklake")
    assert c.storage_url == str(tmp_path / "wh" / "ducklake.files")  # beside the file by default, absolute
    assert wh.pipelines_dir == tmp_path / "wh" / ".dlt-pipelines-ducklake"
    assert PASSWORD not in wh.describe() and "loader@127.0.0.1:1/loyalty_lake" in wh.describe()
    attach = c.attach_sql()
    assert attach.startswith("ATTACH IF NOT EXISTS 'ducklake:postgres:") and PASSWORD in attach
    assert "READ_ONLY" not in attach and c.attach_sql(read_only=True).endswith(", READ_ONLY)")
    assert PASSWORD not in redact(attach) and PASSWORD not in redact(str(wh.dbt_env()))

    env.setenv("DESTINATION__DUCKLAKE__CREDENTIALS__STORAGE", "relative/lake-files")
    env.setenv("DESTINATION__DUCKLAKE__CREDENTIALS__DUCKLAKE_NAME", "loyalty_lake")
    env.setenv("DESTINATION__DUCKLAKE__CREDENTIALS__METADATA_SCHEMA", "lake_meta")
    c = open_warehouse(load_settings()).config
    assert (c.name, c.metadata_schema, c.storage_url) == ("loyalty_lake", "lake_meta",
                                                          str(ROOT / "relative" / "lake-files"))
    assert "METADATA_SCHEMA 'lake_meta'" in c.attach_sql() and " AS loyalty_lake " in c.attach_sql()
    env.delenv("DESTINATION__DUCKLAKE__CREDENTIALS__STORAGE")
    env.setenv("DESTINATION__DUCKLAKE__CREDENTIALS__STORAGE__BUCKET_URL", str(tmp_path / "b"))
    assert open_warehouse(load_settings()).config.storage_url == str(tmp_path / "b")
    assert c.lock_key("run") != c.lock_key("merge") and c.lock_key("run") == c.lock_key("run")


def test_lake_unreachable_catalog_is_a_clear_error_without_the_password(env) -> None:
    from pipelines.errors import WarehouseUnavailable

    env.setenv("LOYALTY__WAREHOUSE", "ducklake")
    env.setenv("DESTINATION__DUCKLAKE__CREDENTIALS__CATALOG", CATALOG)  # port 1: nothing listens
    wh = open_warehouse(load_settings())
    for attempt in (wh.connect, wh.lock("run").acquire):
        with pytest.raises(WarehouseUnavailable) as info:
            attempt()
        assert "127.0.0.1:1/loyalty_lake" in str(info.value) and PASSWORD not in str(info.value)
