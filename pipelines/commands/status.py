"""`loyalty-etl status`: the last runs, their windows, and the customers currently failing, read from the warehouse.

Reads like every other reader (docs/architecture.md, "Readers and the single writer"): opens the warehouse
read-only (`Warehouse.connect(read_only=True)`), runs its few queries, closes it. The file: while a load holds it
the open fails at once; we say so and exit 75 (EX_TEMPFAIL) rather than wait, so `status` can never delay a load.
A lake is never held by a load (its readers see the last committed snapshot); a catalog that cannot be reached
exits 1 with the reason (no password).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.errors import WarehouseBusy, WarehouseMissing

if TYPE_CHECKING:
    from pipelines.warehouse import Warehouse

HELP = "show the last runs, their windows and the customers currently failing (read-only)"
EXIT_BUSY = 75      # EX_TEMPFAIL: a load holds the warehouse, retry shortly
EXIT_MISSING = 1
SCHEMA = "loyalty_raw"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help=HELP, description=HELP + ". Exit codes: 0 shown, 1 no warehouse yet (or a "
                       f"lake catalog that cannot be reached), {EXIT_BUSY} a load holds the embedded file (retry "
                       "shortly).")
    p.add_argument("--runs", type=int, default=10, metavar="N", help="how many recent runs to list (default 10)")
    p.add_argument("--failing", type=int, default=20, metavar="N",
                   help="how many failing customers to list (default 20; the total is always shown)")
    p.add_argument("--json", action="store_true", help="print the same facts as one JSON object")
    p.set_defaults(func=handle)


def read_status(warehouse: "Warehouse | Path", runs: int = 10, failing: int = 20) -> dict[str, Any]:
    """Everything `status` shows, as plain data (a Path: the embedded file there). Raises WarehouseMissing,
    WarehouseBusy (the file, during a load), WarehouseUnavailable (a lake's catalog cannot be reached)."""
    from pipelines.warehouse import FileWarehouse

    wh = warehouse if hasattr(warehouse, "connect") else FileWarehouse(Path(warehouse))
    con = wh.connect(read_only=True)
    try:
        tables = {r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_catalog = current_database() "
            "AND table_schema = ?", [SCHEMA]).fetchall()}

        def rows(sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
            cur = con.execute(sql, params or [])
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r)) for r in cur.fetchall()]

        out: dict[str, Any] = {"warehouse": wh.describe(), "runs": [], "failing": [], "failing_total": 0,
                               "backfill": []}
        if "runs" in tables:
            out["runs"] = rows(
                f"SELECT run_id, command, status, exit_code, started_at, ended_at, duration_s, customers_done, "
                f"customers_failed, customers_skipped, records, requests, retries, http_429, models, error, sources "
                f"FROM {SCHEMA}.runs ORDER BY started_at DESC LIMIT ?", [runs])
            for r in out["runs"]:
                r["sources"] = json.loads(r["sources"]) if r["sources"] else {}
        if "_customer_sync_state" in tables:
            where = f"FROM {SCHEMA}._customer_sync_state WHERE consecutive_failures > 0"
            out["failing_total"] = con.execute(f"SELECT count(*) {where}").fetchone()[0]
            out["failing"] = rows(
                f"SELECT source, customer_id, consecutive_failures, last_attempt_at, last_success_end, last_error "
                f"{where} ORDER BY consecutive_failures DESC, last_attempt_at DESC, source, customer_id LIMIT ?",
                [failing])
        if "_backfill_progress" in tables:
            out["backfill"] = rows(
                f"SELECT source, min(chunk_start) AS covered_from, max(chunk_end) AS covered_until, "
                f"count(*) AS chunks, sum(records) AS records, sum(customers_failed) AS failed, "
                f"max(completed_at) AS last_chunk_at "
                f"FROM {SCHEMA}._backfill_progress GROUP BY source ORDER BY source")
        return out
    finally:
        con.close()


def events_status(warehouse: Path) -> dict[str, Any] | None:
    """The Capillary event store's newest receipt and the silence warning, when a store exists (read-only)."""
    import datetime as dt

    from pipelines.capillary.webhook import event_store_path
    from pipelines.config import ConfigError, load_settings
    from pipelines.capillary.events_ingest import silence_warning
    from pipelines.events.store import newest_receipt

    try:
        store = event_store_path(warehouse)
        silence = load_settings().source("capillary").events_silence_duration
    except (ConfigError, KeyError):
        return None
    if not store.exists():
        return None
    newest = newest_receipt(store)
    return {"store": str(store), "newest_received_at": newest,
            "warning": silence_warning(newest, dt.datetime.now(dt.timezone.utc), silence, store)}


def _ts(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):  # instants inside the `sources` JSON are ISO 8601 strings
        value = dt.datetime.fromisoformat(value)
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


def _windows(sources: dict[str, Any]) -> str:
    return "\n".join(f"{name}: {_ts(s.get('window_start'))} → {_ts(s.get('window_end'))}"
                     for name, s in sources.items()) or "-"


def render(status: dict[str, Any], console: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    from pipelines.logs import redact

    console.print(f"warehouse: {status['warehouse']}")
    if status.get("run_in_progress"):
        console.print(f"a run is in progress ({status['run_in_progress']}); shown: what it has committed so far",
                      markup=False)
    runs = Table(title="Last runs (times UTC)", title_justify="left")
    for col, kw in [("run", {}), ("command", {}), ("status", {}), ("exit", {"justify": "right"}),
                    ("started", {}), ("duration", {"justify": "right"}), ("window per source", {"no_wrap": True}),
                    ("customers done/failed/skipped", {"justify": "right"}), ("records", {"justify": "right"}),
                    ("requests (retries, 429s)", {"justify": "right"}), ("models", {})]:
        runs.add_column(col, **kw)
    style = {"ok": "green", "partial": "yellow"}
    for r in status["runs"]:
        runs.add_row(
            escape(r["run_id"]), escape(r["command"]), f"[{style.get(r['status'], 'red')}]{r['status']}[/]", str(r["exit_code"]),
            _ts(r["started_at"]), f"{r['duration_s'] or 0:.1f}s", _windows(r["sources"]),
            f"{r['customers_done'] or 0:,}/{r['customers_failed'] or 0:,}/{r['customers_skipped'] or 0:,}",
            f"{r['records'] or 0:,}", f"{r['requests'] or 0:,} ({r['retries'] or 0:,}, {r['http_429'] or 0:,})",
            escape(r["models"] or "-"),
        )
    if status["runs"]:
        console.print(runs)
        last = status["runs"][0]
        if last.get("error"):
            console.print(f"last run error: {redact(last['error'])}", markup=False)
    else:
        console.print("no runs recorded yet")

    total = status["failing_total"]
    if not total:
        console.print("no customer is currently failing")
    else:
        failing = Table(title=f"Customers currently failing: {total:,}"
                        + (f" (showing {len(status['failing'])})" if total > len(status["failing"]) else ""),
                        title_justify="left")
        for col in ["source", "customer", "failures in a row", "last attempt", "loaded until", "last error"]:
            failing.add_column(col, overflow="fold")
        for f in status["failing"]:
            # data, not markup: an error text like "[Errno 111]" must print as it is
            failing.add_row(f["source"], escape(f["customer_id"]), str(f["consecutive_failures"]),
                            _ts(f["last_attempt_at"]), _ts(f["last_success_end"]),
                            escape(redact(f["last_error"] or "")[:200]))
        console.print(failing)

    events = status.get("capillary_events")
    if events:
        if events["warning"]:
            console.print(f"[yellow]warning:[/] {escape(events['warning'])}")
        else:
            console.print(f"Capillary events: last received {events['newest_received_at']}", markup=False)

    if status["backfill"]:
        bf = Table(title="Backfill coverage", title_justify="left")
        for col in ["source", "from", "until", "chunks", "records", "customer-chunks failed (rerun to retry)",
                    "last chunk"]:
            bf.add_column(col)
        for b in status["backfill"]:
            bf.add_row(b["source"], _ts(b["covered_from"]), _ts(b["covered_until"]), str(b["chunks"]),
                       f"{b['records'] or 0:,}", f"{b['failed'] or 0:,}", _ts(b["last_chunk_at"]))
        console.print(bf)


def handle(args: argparse.Namespace) -> int:
    from rich.console import Console

    from pipelines.config import ConfigError, warehouse_path
    from pipelines.errors import WarehouseUnavailable
    from pipelines.lock import holder
    from pipelines.logs import redact
    from pipelines.warehouse import configured_warehouse

    err = Console(stderr=True)
    try:
        warehouse = configured_warehouse()
        status = read_status(warehouse, runs=args.runs, failing=args.failing)
    except WarehouseMissing:
        err.print(f"no warehouse at {warehouse.describe()} yet: run `loyalty-etl run` (or `loyalty-etl demo`) first",
                  markup=False)
        return EXIT_MISSING
    except WarehouseBusy:
        err.print(f"a load is running on {warehouse.describe()} (it holds the file); retry shortly", markup=False)
        return EXIT_BUSY
    except (ConfigError, WarehouseUnavailable) as exc:
        err.print(f"error: {redact(str(exc))}", markup=False)
        return EXIT_MISSING
    # the Capillary event store lives on the loading machine, beside where the embedded file would be
    status["capillary_events"] = events_status(warehouse_path())
    # the embedded file is free while a run fetches (docs/architecture.md): say that one is under way
    if warehouse.kind == "duckdb":
        status["run_in_progress"] = holder(warehouse.lock_path)
    if args.json:
        print(json.dumps(status, default=str, indent=2))
        return 0
    # a log file or a pipe gets the full width, not rich's 80-column default for non-terminals
    out = Console() if sys.stdout.isatty() else Console(width=200)
    render(status, out)
    return 0
