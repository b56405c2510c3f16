"""pipelines/localpg.py: the throwaway PostgreSQL the lake tests and `make demo-lake` use, against the real server
binaries (skipped with the reason where the machine has none)."""

from __future__ import annotations

import socket

import duckdb
import pytest

from pipelines.localpg import HOST, LocalPostgres, LocalPostgresError, unavailable_reason

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=f"no local PostgreSQL: {unavailable_reason()}")


def _pg(url: str) -> duckdb.DuckDBPyConnection:
    """DuckDB attached to the server with its postgres extension (the client the lake uses)."""
    from duckdb_extensions import import_extension

    import_extension("postgres")
    con = duckdb.connect()
    con.execute("load postgres")
    con.execute(f"attach '{url}' as pg (type postgres)")
    return con


def _sql(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple]:
    return con.execute("select * from postgres_query('pg', ?)", [sql]).fetchall()


def test_start_kill_restart_keeps_committed_data_and_url(tmp_path):
    with LocalPostgres(tmp_path / "pg") as pg:
        url = pg.url
        assert pg.password not in pg.describe() and pg.password not in repr(pg)
        con = _pg(url)
        assert _sql(con, "select current_database(), current_setting('listen_addresses')") == [
            ("loyalty_lake", HOST)]
        con.execute("call postgres_execute('pg', 'create table t as select generate_series(1, 100) as i')")
        con.close()

        pg.kill()                                  # a crash: no shutdown checkpoint, crash recovery at start
        assert not pg.running()
        with pytest.raises(duckdb.Error):
            _pg(url)
        pg.start()
        assert pg.url == url                       # same port: the URL a run holds stays valid
        con = _pg(url)
        assert _sql(con, "select count(*), sum(i) from t") == [(100, 5050)]
        con.close()

        pg.stop()
        assert not pg.running()
        pg.start()
        con = _pg(url)
        assert _sql(con, "select count(*) from t") == [(100,)]
        con.close()
    assert not pg.running()


def test_password_is_enforced(tmp_path):
    with LocalPostgres(tmp_path / "pg") as pg:
        wrong = pg.url.replace(pg.password, "not-the-password")
        with pytest.raises(duckdb.Error, match="password authentication failed"):
            _pg(wrong)


def test_port_in_use_is_a_clear_error(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind((HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        pg = LocalPostgres(tmp_path / "pg", port=port)
        with pytest.raises(LocalPostgresError, match=f"port {port} on {HOST} is in use"):
            pg.start()
        pg.close()


def test_start_failure_shows_the_server_log(tmp_path):
    pg = LocalPostgres(tmp_path / "pg")
    pg.start()
    pg.stop()
    with (pg.data_dir / "postgresql.conf").open("a") as conf:
        conf.write("shared_buffers = 'not a size'\n")
    with pytest.raises(LocalPostgresError) as err:
        pg.start()
    assert "server log" in str(err.value) and "shared_buffers" in str(err.value)
    assert pg.password not in str(err.value)
    pg.close()


def test_fixture_gives_each_test_its_own_database(postgres, postgres_server):
    assert postgres.port == postgres_server.port and postgres.database != postgres_server.database
    con = _pg(postgres.url)
    assert _sql(con, "select current_database()") == [(postgres.database,)]
    con.close()
