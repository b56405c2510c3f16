"""Keyed bookkeeping tables (pipelines/keyed.py): the same upserts give the same rows on the embedded file
(PRIMARY KEY + ON CONFLICT) and on a DuckLake on a real PostgreSQL catalog (no keys: MERGE INTO)."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest

from pipelines import keyed

DDL = """CREATE SCHEMA IF NOT EXISTS loyalty_raw;
CREATE TABLE IF NOT EXISTS loyalty_raw.k (
    source TEXT NOT NULL,
    id TEXT NOT NULL,
    v TEXT,
    n INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (source, id)
);
CREATE TABLE IF NOT EXISTS loyalty_raw.one (id INTEGER PRIMARY KEY, v TEXT);"""


def test_without_keys() -> None:
    out = keyed.without_keys(DDL)
    assert "PRIMARY KEY" not in out and "n INTEGER NOT NULL DEFAULT 0\n);" in out and "(id INTEGER, v TEXT)" in out


def _exercise(conn: duckdb.DuckDBPyConnection) -> list[tuple]:
    keyed.create_tables(conn, DDL)
    keyed.create_tables(conn, DDL)  # IF NOT EXISTS: a second run
    conn.register("batch", pa.table({"id": ["a", "b"], "v": ["x", "y"]}))
    up = dict(update={"v": "excluded.v", "n": "s.n + excluded.n"})
    src = "SELECT ?::TEXT AS source, id, v, 1 AS n FROM batch"
    for _ in range(2):
        conn.execute("BEGIN")
        keyed.upsert(conn, "loyalty_raw.k", ["source", "id", "v", "n"], src, ["source", "id"], params=["s1"], **up)
        conn.execute("COMMIT")
    keyed.upsert(conn, "loyalty_raw.k", ["source", "id", "v", "n"], src, ["source", "id"], params=["s2"], **up)
    # insert-only: an existing key keeps its row
    keyed.upsert(conn, "loyalty_raw.k", ["source", "id", "v", "n"],
                 "SELECT 's1' AS source, 'a' AS id, 'new' AS v, 9 AS n UNION ALL SELECT 's1', 'c', 'z', 9",
                 ["source", "id"])
    keyed.upsert(conn, "loyalty_raw.one", ["id", "v"], "SELECT 1 AS id, ?::TEXT AS v", ["id"],
                 update={"v": "excluded.v"}, params=["first"])
    keyed.upsert(conn, "loyalty_raw.one", ["id", "v"], "SELECT 1 AS id, ?::TEXT AS v", ["id"],
                 update={"v": "excluded.v"}, params=["second"])
    return (conn.execute("SELECT * FROM loyalty_raw.k ORDER BY ALL").fetchall()
            + conn.execute("SELECT * FROM loyalty_raw.one").fetchall())


EXPECTED = [("s1", "a", "x", 2), ("s1", "b", "y", 2), ("s1", "c", "z", 9), ("s2", "a", "x", 1), ("s2", "b", "y", 1),
            (1, "second")]


def test_upserts_on_the_file(tmp_path) -> None:
    conn = duckdb.connect(str(tmp_path / "w.duckdb"))
    assert not keyed.is_lake(conn)
    assert _exercise(conn) == EXPECTED
    with pytest.raises(duckdb.ConstraintException):  # the file still enforces its keys
        conn.execute("INSERT INTO loyalty_raw.one VALUES (1, 'dup')")


def test_upserts_on_the_lake(postgres, tmp_path) -> None:
    conn = _lake(postgres, tmp_path)
    assert keyed.is_lake(conn)
    assert _exercise(conn) == EXPECTED


def _lake(postgres, tmp_path) -> duckdb.DuckDBPyConnection:
    from pipelines import lake

    conn = duckdb.connect()
    lake.load_extensions(conn)
    conn.execute(f"ATTACH 'ducklake:postgres:{postgres.url}' AS lk (DATA_PATH '{tmp_path / 'files'}', "
                 "METADATA_SCHEMA 'lk')")
    conn.execute("USE lk")
    return conn


def test_a_commit_that_loses_to_a_concurrent_writer_is_redone(postgres, tmp_path) -> None:
    """Two writers update rows of one table at once: DuckLake refuses the second COMMIT (a logical conflict it does
    not retry itself); `keyed.transaction` redoes it at the new snapshot, and both changes are there."""
    a, b = _lake(postgres, tmp_path), _lake(postgres, tmp_path)
    keyed.create_tables(a, DDL)
    a.execute("INSERT INTO loyalty_raw.k SELECT 's', 'c' || range, 'x', 0 FROM range(50)")

    def bump(conn: duckdb.DuckDBPyConnection, cid: str) -> None:
        keyed.upsert(conn, "loyalty_raw.k", ["source", "id", "v", "n"],
                     "SELECT 's' AS source, ?::TEXT AS id, 'y' AS v, 1 AS n", ["source", "id"],
                     update={"n": "s.n + excluded.n"}, params=[cid])

    attempts = []

    def work() -> None:
        attempts.append(1)
        bump(b, "c2")
        if len(attempts) == 1:  # another writer commits a change to the same table meanwhile
            keyed.transaction(a, lambda: bump(a, "c1"))

    with pytest.raises(duckdb.TransactionException, match="conflict"):
        keyed.transaction(b, work, attempts=1)
    attempts.clear()
    keyed.transaction(b, work)
    assert len(attempts) == 2
    assert a.execute("SELECT id, n FROM loyalty_raw.k WHERE n > 0 ORDER BY id").fetchall() == [("c1", 2), ("c2", 1)]
