"""The CareCloud customer list from the API (`customers = "api"`): `GET /customers` kept in
`loyalty_raw.carecloud_customers` (customer_id, state, last_change, first_seen).

The first sync pages the whole roster. Later syncs page it by `last_change` descending only down to the newest
`last_change` already stored minus the lookback (a change the vendor records late, or a clock skew, still lands), so a
night costs a few pages, not the roster. Written with plain DuckDB in one transaction, like the bookkeeping: the
roster decides which customers a run loads, so it must be whole or unchanged, never half-written.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa

from pipelines import keyed
from pipelines.carecloud.settings import CUSTOMERS_TABLE
from pipelines.errors import ListingIncomplete

LOCAL_FORMAT = "%Y-%m-%d %H:%M:%S"


@dataclass
class RosterSync:
    ids: list[str] = field(default_factory=list)       # customers to load: every stored one
    new: list[str] = field(default_factory=list)       # first seen by this sync
    fetched: int = 0                                    # customers the pages held
    requests: int = 0
    error: str | None = None                            # the roster could not be read: `ids` are the stored ones


def ensure_table(conn: duckdb.DuckDBPyConnection, schema: str) -> None:
    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    keyed.create_tables(conn, f"""CREATE TABLE IF NOT EXISTS {schema}.{CUSTOMERS_TABLE} (
        customer_id TEXT PRIMARY KEY, state INTEGER, last_change TEXT, first_seen TIMESTAMPTZ, last_run_id TEXT)""")


def change_floor(newest: str | None, lookback: dt.timedelta) -> str | None:
    """The `last_change` down to which a sync pages: the newest stored minus the lookback; None = the whole roster."""
    if not newest:
        return None
    try:
        at = dt.datetime.strptime(newest, LOCAL_FORMAT)
    except ValueError:
        return None
    return (at - lookback).strftime(LOCAL_FORMAT)


def sync(api: Any, conn: duckdb.DuckDBPyConnection, schema: str, lookback: dt.timedelta, run_id: str) -> RosterSync:
    """Read the new and changed customers and store them. When the roster cannot be read down to the floor nothing
    is written and `error` says why (the stored customers are still returned)."""
    ensure_table(conn, schema)
    newest = conn.execute(f"SELECT max(last_change) FROM {schema}.{CUSTOMERS_TABLE}").fetchall()[0][0]
    try:
        items, requests = api.roster(change_floor(newest, lookback))
    except ListingIncomplete as exc:
        return RosterSync(ids=stored_ids(conn, schema), requests=exc.requests, error=str(exc))
    rows: dict[str, tuple] = {}
    for c in items:  # a customer that changed while the roster was paged can appear twice: keep its newest
        cid = c.get("customer_id")
        if not isinstance(cid, str) or not cid:
            continue
        state = c.get("state") if isinstance(c.get("state"), int) else None
        last = c.get("last_change") if isinstance(c.get("last_change"), str) else None
        if cid not in rows or (last or "") > (rows[cid][2] or ""):
            rows[cid] = (cid, state, last)
    out = RosterSync(fetched=len(items), requests=requests)
    now = dt.datetime.now(dt.timezone.utc)
    batch = pa.table({"customer_id": [r[0] for r in rows.values()],
                      "state": pa.array([r[1] for r in rows.values()], pa.int32()),
                      "last_change": pa.array([r[2] for r in rows.values()], pa.string())})
    conn.execute("BEGIN")
    try:
        conn.register("roster_batch", batch)
        out.new = [r[0] for r in conn.execute(
            f"SELECT b.customer_id FROM roster_batch b LEFT JOIN {schema}.{CUSTOMERS_TABLE} t USING (customer_id) "
            "WHERE t.customer_id IS NULL ORDER BY b.customer_id").fetchall()]
        keyed.upsert(conn, f"{schema}.{CUSTOMERS_TABLE}",
                     ["customer_id", "state", "last_change", "first_seen", "last_run_id"],
                     "SELECT customer_id, state, last_change, ?::TIMESTAMPTZ AS first_seen, ?::TEXT AS last_run_id "
                     "FROM roster_batch", keys=["customer_id"],
                     update={"state": "excluded.state", "last_change": "excluded.last_change",
                             "last_run_id": "excluded.last_run_id"}, params=[now, run_id])
        conn.unregister("roster_batch")
        conn.execute("COMMIT")
    except BaseException:
        keyed.rollback(conn)
        raise
    out.ids = stored_ids(conn, schema)
    return out


def stored_ids(conn: duckdb.DuckDBPyConnection, schema: str) -> list[str]:
    """The stored customers a run loads, oldest first. Deleted ones (state 0) too: their history stays theirs, the
    vendor documents nothing about what it answers for them, and the movements just before a deletion must land like
    any other (a `not_found` answer is recorded like for any unknown customer)."""
    return [r[0] for r in conn.execute(
        f"SELECT customer_id FROM {schema}.{CUSTOMERS_TABLE} ORDER BY first_seen, customer_id").fetchall()]
