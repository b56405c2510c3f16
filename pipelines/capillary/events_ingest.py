"""Moving received Capillary events from the event store (SQLite, pipelines/events/store.py) into the warehouse table
`loyalty_raw.capillary_events`, for the nightly run (issue 18).

Order of commits, and why nothing is lost or doubled by a crash anywhere in between:
1. In ONE DuckDB transaction: the store's events with `seq` above the warehouse's high-water mark
   (`_capillary_event_mark.ingested_seq`) are merged on `event_id` into `capillary_events`, the mark moves to the
   highest seq read, and events past the retention are pruned. A crash before COMMIT leaves the old mark and no
   rows: the next run reads the same events again.
2. After that commit: the store's `consumed` mark (SQLite). It is only used to prune the store, never to decide what
   to read, so a crash before it only delays pruning; the store never drops an event the warehouse lacks.
SQLite hands out `seq` inside the write lock and commits in that order (one writer at a time), so a reader never sees
seq N+1 committed while N is still to come: "above the mark" misses nothing.

Written with plain DuckDB SQL on the run's own connection rather than as a dlt resource because the rows and the
mark must commit in one transaction; dlt commits its load jobs and its pipeline state separately.

"Events since the previous run": each event row has `selected_at`, NULL until a run has used the event to choose
whom to query (`pending_events` / `mark_selected`), so a run that crashed after ingesting leaves them for the next
one, whatever the events' own times. Retention never prunes an event no run has used yet.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from pipelines import keyed
from pipelines.capillary.event_identifiers import own_customer_id
from pipelines.capillary.webhook import envelope
from pipelines.events.store import EventStore, StoredEvent
from pipelines.faultpoints import maybe_crash
from pipelines.state import Issue

SCHEMA = "loyalty_raw"
TABLE = f"{SCHEMA}.capillary_events"
MARK = f"{SCHEMA}._capillary_event_mark"
SOURCE = "capillary"
# crash points (pipelines/faultpoints.py) for the reliability tests: before the warehouse COMMIT, and between it and
# the store's consumed mark
CRASH_STAGES = ("events_ingest", "events_consumed")

DDL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {TABLE} (
    event_id    TEXT PRIMARY KEY,
    event_name  TEXT,
    customer_id TEXT,          -- Capillary customerId of the event's own customer, when it carries one
    occurred_at TIMESTAMPTZ,   -- the event's createdAt
    payload     JSON,          -- the body as received
    received_at TIMESTAMPTZ,   -- when the receiver stored it
    store_seq   BIGINT,
    ingested_at TIMESTAMPTZ,
    selected_at TIMESTAMPTZ    -- when a run used it to choose customers; NULL = not yet
);
CREATE TABLE IF NOT EXISTS {MARK} (
    id           INTEGER PRIMARY KEY,
    ingested_seq BIGINT NOT NULL,
    updated_at   TIMESTAMPTZ
);
"""

_ARROW = pa.schema([("event_id", pa.string()), ("event_name", pa.string()), ("customer_id", pa.string()),
                    ("occurred_at", pa.timestamp("us", tz="UTC")), ("payload", pa.string()),
                    ("received_at", pa.timestamp("us", tz="UTC")), ("store_seq", pa.int64())])


@dataclass
class IngestResult:
    read: int = 0              # store events read above the mark
    added: int = 0             # new rows in capillary_events
    duplicates: int = 0        # already there (same event_id)
    pruned_warehouse: int = 0
    pruned_store: int = 0
    mark: int = 0              # the warehouse's high-water mark after the run
    store_replaced: bool = False
    issues: list[Issue] = field(default_factory=list)


def ensure_tables(conn: duckdb.DuckDBPyConnection) -> None:
    keyed.create_tables(conn, DDL)


def _instant(value: Any) -> dt.datetime | None:
    """createdAt: epoch milliseconds in the docs' samples; an ISO string or seconds accepted too."""
    try:
        if isinstance(value, bool) or value is None:
            return None
        if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
            parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)
        number = float(value)
        seconds = number / 1000 if abs(number) >= 1e11 else number  # 1e11 s is year 5138; 1e11 ms is 1973
        return dt.datetime.fromtimestamp(seconds, dt.timezone.utc)
    except (ValueError, OverflowError, OSError):
        return None


def _received(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _not_json(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # Python's parser accepts NaN/Infinity; the JSON column would not


def parse(stored: StoredEvent) -> tuple[dict | None, Issue | None]:
    """One warehouse row of a stored event, or the issue why it cannot be one."""
    # the receiver stores bytes; a row written by anything else may hold text
    raw = stored.body if isinstance(stored.body, bytes) else str(stored.body).encode("utf-8")
    try:
        text = raw.decode("utf-8")
        body = json.loads(text, parse_constant=_not_json)
        event_id, name = envelope(body)
    except (ValueError, UnicodeDecodeError) as exc:
        return None, Issue(SOURCE, None, "bad_event", f"stored event {stored.event_id!r} (seq {stored.seq}) is "
                           f"not an event: {exc}", raw[:500].decode("utf-8", "replace"))
    attributes = body.get("attributes") if isinstance(body.get("attributes"), dict) else {}
    created = body.get("createdAt", attributes.get("createdAt"))
    return {"event_id": event_id, "event_name": name or stored.event_name, "customer_id": own_customer_id(body),
            "occurred_at": _instant(created), "payload": text,
            "received_at": _received(stored.received_at), "store_seq": stored.seq}, None


def _count(conn: duckdb.DuckDBPyConnection) -> int:
    # fetchall, not fetchone: a half-read result blocks the connection's next statement
    return conn.execute(f"SELECT count(*) FROM {TABLE}").fetchall()[0][0]


def ingest(conn: duckdb.DuckDBPyConnection, store: EventStore, *, retention_days: int = 30,
           now: dt.datetime | None = None) -> IngestResult:
    """Move the store's new events into `capillary_events` (see the module docstring for the commit order)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    cutoff = now - dt.timedelta(days=retention_days)
    out = IngestResult()
    ensure_tables(conn)
    rows_ = conn.execute(f"SELECT ingested_seq FROM {MARK} WHERE id = 1").fetchall()
    mark = int(rows_[0][0]) if rows_ else 0
    if store.max_seq() < mark:
        # A new store file numbers from 1 again: read it whole; the merge on event_id keeps the rows single.
        out.store_replaced = True
        out.issues.append(Issue(SOURCE, None, "event_store_replaced",
                                f"the event store {store.path} numbers below the warehouse's mark ({mark}): it was "
                                "replaced or recreated; reading it from the start (duplicates are merged away)"))
        mark = 0
    events = store.events(after_seq=mark)
    out.read = len(events)
    rows = []
    for stored in events:
        parsed, issue = parse(stored)
        if issue is not None:
            out.issues.append(issue)
        else:
            rows.append(parsed)
    new_mark = max([mark] + [e.seq for e in events])
    table = pa.Table.from_pylist(rows, schema=_ARROW)
    conn.execute("BEGIN TRANSACTION")
    try:
        conn.register("_new_events", table)
        try:
            before = _count(conn)
            keyed.upsert(conn, TABLE, ["event_id", "event_name", "customer_id", "occurred_at", "payload",
                                       "received_at", "store_seq", "ingested_at", "selected_at"],
                         # text DuckDB's JSON reader refuses is kept, as a JSON string, not lost; one row per event
                         # even when the batch repeats one (ON CONFLICT would refuse a batch with a key twice)
                         """SELECT DISTINCT ON (event_id) event_id, event_name, customer_id, occurred_at,
                                   coalesce(try_cast(payload AS JSON), to_json(payload)) AS payload, received_at,
                                   store_seq, ?::TIMESTAMPTZ AS ingested_at, NULL::TIMESTAMPTZ AS selected_at
                            FROM _new_events ORDER BY event_id, store_seq""", keys=["event_id"], params=[now])
            out.added = _count(conn) - before
        finally:
            conn.unregister("_new_events")
        out.duplicates = len(rows) - out.added
        keyed.upsert(conn, MARK, ["id", "ingested_seq", "updated_at"],
                     "SELECT 1 AS id, ?::BIGINT AS ingested_seq, ?::TIMESTAMPTZ AS updated_at", keys=["id"],
                     update={"ingested_seq": "excluded.ingested_seq", "updated_at": "excluded.updated_at"},
                     params=[new_mark, now])
        # counted, then deleted, in the same transaction (DuckLake has no DELETE ... RETURNING)
        prunable = f"FROM {TABLE} WHERE received_at < ? AND selected_at IS NOT NULL"
        out.pruned_warehouse = conn.execute(f"SELECT count(*) {prunable}", [cutoff]).fetchall()[0][0]
        if out.pruned_warehouse:
            conn.execute(f"DELETE {prunable}", [cutoff]).fetchall()
        maybe_crash("events_ingest")
        conn.execute("COMMIT")
    except BaseException:
        keyed.rollback(conn)
        raise
    out.mark = new_mark
    maybe_crash("events_consumed")
    try:
        store.mark_consumed(new_mark)
        out.pruned_store = store.prune_consumed(cutoff.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    except sqlite3.Error as exc:  # e.g. the receiver held the write lock past the busy timeout: prune next run
        out.issues.append(Issue(SOURCE, None, "event_store_busy",
                                f"the event store's consumed mark was not written ({exc}); pruning waits for the "
                                "next run, nothing is lost"))
    return out


@dataclass(frozen=True)
class PendingEvent:
    event_id: str
    event_name: str | None
    payload: Any


def pending_events(conn: duckdb.DuckDBPyConnection) -> list[PendingEvent]:
    """The events ingested since the previous run used them (selected_at IS NULL), in the order received."""
    ensure_tables(conn)
    rows = conn.execute(f"SELECT event_id, event_name, payload FROM {TABLE} WHERE selected_at IS NULL "
                        "ORDER BY received_at, store_seq").fetchall()
    return [PendingEvent(eid, name, json.loads(payload)) for eid, name, payload in rows]


def mark_selected(conn: duckdb.DuckDBPyConnection, event_ids: list[str], at: dt.datetime) -> None:
    """The run has loaded the customers these events named (call inside the run's final commit, or alone)."""
    if not event_ids:
        return
    conn.register("_selected", pa.table({"event_id": pa.array(event_ids, pa.string())}))
    try:
        conn.execute(f"UPDATE {TABLE} SET selected_at = ? WHERE selected_at IS NULL "
                     "AND event_id IN (SELECT event_id FROM _selected)", [at]).fetchall()
    finally:
        conn.unregister("_selected")


def silence_warning(newest_received_at: str | None, now: dt.datetime, silence: dt.timedelta,
                    where: str | Path) -> str | None:
    """A warning when no event has been received for longer than `silence` (or none ever) in the store at `where`:
    a webhook that broke must not quietly turn into stale data. None when events are arriving."""
    if newest_received_at is None:
        return (f"no Capillary event has ever been received in {where}: is the webhook registered and "
                "`loyalty-etl events serve` running? Changed selection sees only the sweep")
    quiet = now - _received(newest_received_at)
    if quiet > silence:
        hours = quiet.total_seconds() / 3600
        return (f"no Capillary event received for {hours:.1f} h (last at {newest_received_at}; silence limit "
                f"{silence.total_seconds() / 3600:g} h): check the webhook in InTouch and the receiver; until then "
                "changed selection sees only the sweep")
    return None
