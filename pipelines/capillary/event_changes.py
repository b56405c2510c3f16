"""Capillary's change discovery: the customers its event notifications named since the previous run (issue 18).

Capillary cannot be asked "who changed since T"; it pushes events instead (`loyalty-etl events serve` stores them).
At the start of a `selection = "changed"` run, `discover_from_events`:
1. ingests the event store into `loyalty_raw.capillary_events` (pipelines/capillary/events_ingest.py, its own transaction);
2. takes every event no run has used yet (whatever the event's own time: an event about a transfer after `--until`
   still names its customers) and collects the customers each names as `identifier_name`
   (pipelines/capillary/event_identifiers.py);
3. records the customers of `customerAdded` events in `_capillary_added_customers`, so they join the Capillary
   customer list for good (`with_added_customers`), not only for the 30 days their event is kept;
4. says whether the webhook has gone silent (`events_silence`).
After the run's loads have committed, `EventChanges.commit` marks the events used; a run that dies before that
leaves them for the next one. Events cost no API request (`requests` stays 0). Customers no event named, including
those of events that never arrived and identifiers an event lacks, are the rolling sweep's (pipelines/sweep.py).

The object answers the change-discovery protocol the engine asks a source for (`requests`, `errors`, `complete`,
`tables()`, `named(windows, last_success)`), so the engine needs no Capillary-specific branch.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import duckdb
import pyarrow as pa

from pipelines import keyed
from pipelines.capillary.event_identifiers import named_customers
import pipelines.capillary.events_ingest as events_ingest
from pipelines.events.store import EventStore
from pipelines.state import Issue

ADDED = f"{events_ingest.SCHEMA}._capillary_added_customers"
CUSTOMER_ADDED = "customerAdded"


@dataclass
class EventChanges:
    named_ids: list[str] = field(default_factory=list)   # as identifier_name, first-named order
    added: list[str] = field(default_factory=list)       # customers of customerAdded events, in this run
    unresolved: list[str] = field(default_factory=list)  # customerIds whose object lacked identifier_name
    event_ids: list[str] = field(default_factory=list)   # the events used (marked after the loads commit)
    silence: str | None = None
    ingested: events_ingest.IngestResult | None = None
    requests: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.errors

    @property
    def issues(self) -> list[Issue]:
        out = list(self.ingested.issues) if self.ingested else []
        if self.silence:
            out.append(Issue(events_ingest.SOURCE, None, "events_silent", self.silence))
        return out

    def tables(self) -> list[tuple[str, list[dict], dict]]:
        return []  # the events are already in the warehouse (step 1)

    def named(self, windows: Mapping[str, Any] | None = None,
              last_success: Mapping[str, dt.datetime] | None = None) -> set[str]:
        return set(self.named_ids) | set(self.added)

    def listed(self, ids: list[str], conn: duckdb.DuckDBPyConnection) -> list[str]:
        """The customer list with every customer a customerAdded event announced (`with_added_customers`)."""
        return with_added_customers(ids, conn)

    def commit(self, conn: duckdb.DuckDBPyConnection, at: dt.datetime | None = None) -> None:
        """After the run's loads committed: the events count as used."""
        events_ingest.mark_selected(conn, self.event_ids, at or dt.datetime.now(dt.timezone.utc))


def _ensure_added(conn: duckdb.DuckDBPyConnection) -> None:
    keyed.create_tables(conn, f"""CREATE TABLE IF NOT EXISTS {ADDED} (
                                    customer_id TEXT PRIMARY KEY,   -- as identifier_name
                                    event_id    TEXT,
                                    added_at    TIMESTAMPTZ)""")


def added_customers(conn: duckdb.DuckDBPyConnection) -> list[str]:
    """Every customer a customerAdded event ever named, in the order they were recorded."""
    events_ingest.ensure_tables(conn)
    _ensure_added(conn)
    return [r[0] for r in conn.execute(f"SELECT customer_id FROM {ADDED} ORDER BY added_at, customer_id").fetchall()]


def with_added_customers(listed: list[str], conn: duckdb.DuckDBPyConnection) -> list[str]:
    """The configured customer list, then the customers Capillary announced that it does not hold yet."""
    have = set(listed)
    return listed + [c for c in added_customers(conn) if c not in have]


def _ingest_store(out: EventChanges, conn: duckdb.DuckDBPyConnection, store_path: str | Path, retention_days: int,
                  silence: dt.timedelta, now: dt.datetime) -> None:
    """Step 1 and 4: the store's new events into the warehouse, and whether it has gone silent."""
    try:
        store = EventStore(store_path)
    except Exception as exc:  # StoreError, sqlite3 errors: the run must still load the sweep's customers
        out.errors.append(f"the Capillary event store cannot be read: {exc}")
        return
    try:
        out.ingested = events_ingest.ingest(conn, store, retention_days=retention_days, now=now)
        out.silence = events_ingest.silence_warning(store.newest_received_at(), now, silence, store.path)
    finally:
        store.close()


def discover_from_events(conn: duckdb.DuckDBPyConnection, store_path: str | Path, *, identifier_name: str,
                         retention_days: int, silence: dt.timedelta,
                         now: dt.datetime | None = None, store_optional: bool = False) -> EventChanges:
    """Steps 1-4 of the module docstring. A store that cannot be read is an error in `errors` (the run goes on with
    the sweep and warns), not an exception. `store_optional` (an `all`-mode run): no store file is no webhook, not
    silence; only the events already in the warehouse are used."""
    now = now or dt.datetime.now(dt.timezone.utc)
    out = EventChanges()
    if not (store_optional and not Path(store_path).exists()):
        _ingest_store(out, conn, store_path, retention_days, silence, now)
    pending = events_ingest.pending_events(conn)
    seen: set[str] = set()
    added_rows: list[tuple[str, str]] = []
    for event in pending:
        found = named_customers(event.payload, identifier_name)
        for cid in found.ids:
            if cid not in seen:
                seen.add(cid)
                out.named_ids.append(cid)
        out.unresolved += [u for u in found.unresolved if u not in out.unresolved]
        if event.event_name == CUSTOMER_ADDED:
            added_rows += [(cid, event.event_id) for cid in found.ids]
        out.event_ids.append(event.event_id)
    _ensure_added(conn)
    if added_rows:
        conn.register("_added", pa.table({"customer_id": [c for c, _ in added_rows],
                                          "event_id": [e for _, e in added_rows]}))
        try:
            keyed.upsert(conn, ADDED, ["customer_id", "event_id", "added_at"],
                         "SELECT DISTINCT ON (customer_id) customer_id, event_id, ?::TIMESTAMPTZ AS added_at "
                         "FROM _added", keys=["customer_id"], params=[now])
        finally:
            conn.unregister("_added")
    added_seen: set[str] = set()
    out.added = [c for c, _ in added_rows if not (c in added_seen or added_seen.add(c))]
    return out
