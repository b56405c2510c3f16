"""CareCloud change discovery (issue 17): which customers have something new in their window, read from the
cross-customer listings instead of asking every customer.

A run in `selection = "changed"` mode reads, for the discovery window `[previous discovery end - lookback, until)`
(`initial_start` the first time, so point records created long ago whose expiry falls tonight are known):
- `GET /points` by creation time: an earning;
- `GET /purchases` by payment time: a purchase and a purchase-linked redemption;
- the point records already known (`loyalty_raw.carecloud_points`, and those just read) whose `valid_to` falls in
  the window: a scheduled expiry.

A point record or purchase names its customer when its time lies inside the customer's own window (its last success
minus the lookback .. until) and the customer has not been loaded since the item was first seen
(`_first_seen_until`, kept in the raw tables: the window end of the run that first listed it). The lookback re-reads
the last nights' items every night; without that second condition each change would select its customer again on
every night of the lookback. An expiry names its customer whenever its `valid_to` lies in the customer's window: the
expiration record may arrive late, and expiries are few. Movements without a trace here (manual corrections,
vouchers, transfers) wait for the rolling sweep (`pipelines/sweep.py`).

The discovery window's end is committed (`state.set_discovery_end`) only when every listing was read to its end;
otherwise the next run reads the same window again and the run reports the failure (exit code 2).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Mapping

import duckdb
import pyarrow as pa

from pipelines.carecloud.settings import LISTINGS, POINTS_TABLE, PURCHASES_TABLE
from pipelines.errors import ListingIncomplete
from pipelines.windows import Window, local_bounds, local_to_utc

FIRST_SEEN = "_first_seen_until"   # the window end of the run that first listed the item (raw tables)


# Raw tables with the vendor's field names, merged on the vendor's ids (a point record's available_points and state
# change when it expires). Times stay text as sent (project local wall clock, like point_history_record_time's raw
# string): typed here so dlt never guesses them as UTC timestamps.
def table_hints(table: str) -> dict:
    """Fresh dicts on every call: dlt writes into the hint dicts it is given."""
    text = ("point_id", "customer_id", "created_at", "valid_to", "note") if table == POINTS_TABLE else (
        "purchase_id", "customer_id", "payment_time", "last_change", "external_purchase_id", "cashdesk_number",
        "card_number")
    columns: dict[str, dict] = {c: {"data_type": "text", "nullable": True} for c in text}
    columns[FIRST_SEEN] = {"data_type": "timestamp", "nullable": True}
    return {"write_disposition": "merge", "primary_key": "point_id" if table == POINTS_TABLE else "purchase_id",
            "columns": columns}


@dataclass
class Discovery:
    window: Window
    points: list[dict] = field(default_factory=list)
    purchases: list[dict] = field(default_factory=list)
    # customer -> (change instant, first seen: the window end of the run that first listed it; None for an expiry)
    changes: dict[str, list[tuple[dt.datetime, dt.datetime | None]]] = field(default_factory=dict)
    requests: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.errors

    def note(self, customer_id: Any, local_time: Any, timezone: str, first_seen: dt.datetime | None) -> None:
        if not isinstance(customer_id, str) or not isinstance(local_time, str):
            return
        at = local_to_utc(local_time, timezone)
        if at is not None and self.window.contains(at):
            self.changes.setdefault(customer_id, []).append((at, first_seen))

    def tables(self) -> list[tuple[str, list[dict], dict]]:
        """(raw table, rows, dlt hints) of what the listings held."""
        return [(table, rows, table_hints(table))
                for table, rows in ((POINTS_TABLE, self.points), (PURCHASES_TABLE, self.purchases)) if rows]

    def named(self, windows: Mapping[str, Window], last_success: Mapping[str, dt.datetime]) -> set[str]:
        """The customers with a discovered change they have not loaded yet (`windows`: customer -> its window;
        `last_success`: customer -> end of its last successful load)."""
        out = set()
        for cid, found in self.changes.items():
            w, last = windows.get(cid), last_success.get(cid)
            if w is not None and any(w.contains(at) and (seen is None or last is None or seen > last)
                                     for at, seen in found):
                out.add(cid)
        return out


def known_expiries(conn: duckdb.DuckDBPyConnection, schema: str, time_from: str, time_to: str) -> list[tuple]:
    """(customer_id, valid_to) of the point records already loaded whose valid_to lies between the two local strings
    (as text: the vendor's wall-clock format sorts as it reads)."""
    exists = conn.execute("SELECT count(*) FROM information_schema.columns WHERE table_schema = ? AND table_name = ? "
                          "AND column_name IN ('customer_id', 'valid_to')", [schema, POINTS_TABLE]).fetchall()[0][0]
    if exists < 2:
        return []
    return conn.execute(f"SELECT customer_id, valid_to FROM {schema}.{POINTS_TABLE} "
                        "WHERE valid_to >= ? AND valid_to <= ?", [time_from, time_to]).fetchall()


def first_seen(conn: duckdb.DuckDBPyConnection, schema: str, table: str, key: str, items: list[dict],
               until: dt.datetime) -> None:
    """Set `_first_seen_until` on each item: the stored one for an item listed before, else `until`."""
    stored: dict[str, dt.datetime] = {}
    has = conn.execute("SELECT count(*) FROM information_schema.columns WHERE table_schema = ? AND table_name = ? "
                       "AND column_name = ?", [schema, table, FIRST_SEEN]).fetchall()[0][0]
    if has and items:
        ids = pa.table({key: [str(i.get(key)) for i in items]})
        conn.register("discovered_ids", ids)
        try:
            stored = dict(conn.execute(f"SELECT t.{key}, t.{FIRST_SEEN} FROM {schema}.{table} t "
                                       f"JOIN discovered_ids d USING ({key})").fetchall())
        finally:
            conn.unregister("discovered_ids")
    for item in items:
        item[FIRST_SEEN] = stored.get(str(item.get(key))) or until


def discover(api: Any, conn: duckdb.DuckDBPyConnection, schema: str, window: Window) -> Discovery:
    """Read the listings for `window` (a failing listing is recorded in `errors`, the others still count)."""
    found = Discovery(window)
    tz = api.timezone
    time_from, time_to = local_bounds(window, tz)
    for kind, table, key in (("points", POINTS_TABLE, "point_id"), ("purchases", PURCHASES_TABLE, "purchase_id")):
        try:
            items, requests = api.listing(kind, time_from, time_to)
        except ListingIncomplete as exc:
            found.errors.append(str(exc))
            found.requests += exc.requests
            continue
        found.requests += requests
        first_seen(conn, schema, table, key, items, window.end)
        setattr(found, kind, items)
        field_name = LISTINGS[kind][3]
        for item in items:
            found.note(item.get("customer_id"), item.get(field_name), tz, item[FIRST_SEEN])
    for cid, valid_to in known_expiries(conn, schema, time_from, time_to):
        found.note(cid, valid_to, tz, None)
    for lot in found.points:
        found.note(lot.get("customer_id"), lot.get("valid_to"), tz, None)
    return found
