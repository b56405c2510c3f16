"""Keyed bookkeeping tables on either warehouse: the embedded file enforces their keys (PRIMARY KEY, upserts with
INSERT ... ON CONFLICT, as it always did); DuckLake has no PRIMARY KEY, UNIQUE or ON CONFLICT, so there the same
tables are created without the constraint and every upsert is one MERGE INTO on the same key, which keeps the key
unique as long as every writer goes through `upsert` (a MERGE is atomic: within the caller's transaction, or its
own). Which one is decided by the connection itself (`is_lake`), so callers pass only their connection.

    create_tables(conn, ddl)                       # ddl with its PRIMARY KEYs, as for the file
    upsert(conn, "loyalty_raw.t", ["k", "v", "n"], "SELECT ? AS k, v, 1 AS n FROM batch", keys=["k"],
           update={"v": "excluded.v", "n": "s.n + excluded.n"}, params=[...])   # s = the table, excluded = the new row
    upsert(..., update=None)                        # insert the new keys only (ON CONFLICT DO NOTHING)
    transaction(conn, work)                         # BEGIN; work(); COMMIT, redone on a lake's commit conflict

Concurrent writers (shards of one night on several machines) only exist on a lake. DuckLake retries a commit that
lost the race for the next snapshot by itself when the two changes do not touch the same data, but two transactions
that update or delete rows of the same table (same data file, or rows inlined in the catalog) are a logical
conflict: the loser's COMMIT fails. A bookkeeping transaction is a pure function of what the round loaded, so
`transaction` redoes it from BEGIN at the new snapshot (jittered backoff): MERGE then applies its changes on top of
the winner's, which is what a serial order would have given.
"""

from __future__ import annotations

import random
import re
import time
from typing import Any, Callable, Sequence, TypeVar

import duckdb

_TABLE_KEY = re.compile(r",\s*(?:PRIMARY\s+KEY|UNIQUE)\s*\([^)]*\)", re.IGNORECASE)
_COLUMN_KEY = re.compile(r"\s+(?:PRIMARY\s+KEY|UNIQUE)\b", re.IGNORECASE)


def is_lake(conn: duckdb.DuckDBPyConnection) -> bool:
    """Whether the connection's default catalog is a DuckLake (`Warehouse.connect()` of a lake)."""
    row = conn.execute("SELECT type FROM duckdb_databases() WHERE database_name = current_database()").fetchone()
    return bool(row) and row[0] == "ducklake"


def without_keys(ddl: str) -> str:
    """`ddl` without its PRIMARY KEY / UNIQUE constraints (column and table level)."""
    return _COLUMN_KEY.sub("", _TABLE_KEY.sub("", ddl))


def create_tables(conn: duckdb.DuckDBPyConnection, ddl: str) -> None:
    """`ddl` (CREATE ... IF NOT EXISTS); on a lake without keys, and redone when another writer created the same
    table at the same moment (DuckLake's conflict for two creates of one name: the redo then finds it there)."""
    if is_lake(conn):
        transaction(conn, lambda: conn.execute(without_keys(ddl)))
    else:
        conn.execute(ddl)


def upsert_sql(lake: bool, table: str, columns: Sequence[str], source: str, keys: Sequence[str],
               update: dict[str, str] | None) -> str:
    """The statement `upsert` runs (see the module doc). `source` must name its columns as `columns`, in order."""
    cols = ", ".join(columns)
    sets = ", ".join(f"{c} = {e}" for c, e in (update or {}).items())
    if not lake:
        action = f"DO UPDATE SET {sets}" if update else "DO NOTHING"
        return (f"INSERT INTO {table} AS s ({cols}) SELECT {cols} FROM ({source}) AS _new "
                f"ON CONFLICT ({', '.join(keys)}) {action}")
    on = " AND ".join(f"s.{k} = excluded.{k}" for k in keys)
    matched = f" WHEN MATCHED THEN UPDATE SET {sets}" if update else ""
    values = ", ".join(f"excluded.{c}" for c in columns)
    return (f"MERGE INTO {table} AS s USING ({source}) AS excluded ON {on}{matched} "
            f"WHEN NOT MATCHED THEN INSERT ({cols}) VALUES ({values})")


def upsert(conn: duckdb.DuckDBPyConnection, table: str, columns: Sequence[str], source: str, keys: Sequence[str],
           update: dict[str, str] | None = None, params: Sequence[Any] = ()) -> None:
    conn.execute(upsert_sql(is_lake(conn), table, columns, source, keys, update), list(params))


T = TypeVar("T")
CONFLICT_ATTEMPTS = 12


def is_conflict(exc: BaseException) -> bool:
    """A DuckLake commit that lost to a concurrent writer (not retried by DuckLake itself)."""
    text = str(exc)
    return isinstance(exc, duckdb.TransactionException) and ("conflict" in text.lower()
                                                             or "Failed to commit DuckLake transaction" in text)


def rollback(conn: duckdb.DuckDBPyConnection) -> None:
    """ROLLBACK when a transaction is open (a failed COMMIT has already ended it: no second error over the first)."""
    try:
        conn.execute("ROLLBACK")
    except duckdb.TransactionException:
        pass


def transaction(conn: duckdb.DuckDBPyConnection, work: Callable[[], T], attempts: int = CONFLICT_ATTEMPTS) -> T:
    """`work()` in one transaction; on a lake, redone from the start when its commit conflicts (module doc). Not
    inside an open transaction (DuckDB aborts a transaction on a nested BEGIN): `create_tables` and the upserts'
    callers run it between transactions."""
    lake = is_lake(conn)
    delay = 0.05
    for attempt in range(1, attempts + 1):
        conn.execute("BEGIN TRANSACTION")
        try:
            result = work()
            conn.execute("COMMIT")
            return result
        except BaseException as exc:
            rollback(conn)
            if not (lake and is_conflict(exc)) or attempt == attempts:
                raise
        time.sleep(delay * random.uniform(0.5, 1.5))
        delay = min(delay * 2, 2.0)
    raise AssertionError("unreachable")
