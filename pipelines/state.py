"""Warehouse-side bookkeeping in `loyalty_raw`, written with plain DuckDB on the run's own connection AFTER the dlt
load of the same customers committed, each commit in one transaction:

- `_customer_sync_state`: per (source, customer) the last successful window end, the last attempt and error, and a
  consecutive failure count. Not in dlt's pipeline state, which is loaded and saved whole on every run and must
  stay small for a million customers. A crash between the load and this commit only means those customers are
  fetched again next time; merge keys make that harmless.
- `sync_issues`: every failure, API warning/error and bad record, one row each.
- `runs`: one row per run (the `RunReport`), written at the end of every run, successful or not.

On a DuckLake warehouse the same tables live in the lake (no second place to back up), without their PRIMARY KEYs
(DuckLake has none): upserts are MERGE INTO on the same keys there (`pipelines/keyed.py`).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any, Iterable

import duckdb
import pyarrow as pa

from pipelines import keyed
from pipelines.logs import redact
from pipelines.report import RunReport

SCHEMA = "loyalty_raw"

DDL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {SCHEMA}._customer_sync_state (
    source TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    last_success_end TIMESTAMPTZ,
    last_attempt_at TIMESTAMPTZ,
    last_error TEXT,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    last_run_id TEXT,
    PRIMARY KEY (source, customer_id)
);
CREATE TABLE IF NOT EXISTS {SCHEMA}.sync_issues (
    run_id TEXT,
    source TEXT,
    customer_id TEXT,
    code TEXT,
    message TEXT,
    detail TEXT,
    occurred_at TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS {SCHEMA}.runs (
    run_id TEXT PRIMARY KEY,
    command TEXT,
    started_at TIMESTAMPTZ,
    ended_at TIMESTAMPTZ,
    duration_s DOUBLE,
    status TEXT,
    exit_code INTEGER,
    models TEXT,
    error TEXT,
    customers_total BIGINT,
    customers_done BIGINT,
    customers_failed BIGINT,
    customers_skipped BIGINT,
    records BIGINT,
    requests BIGINT,
    retries BIGINT,
    http_429 BIGINT,
    sources JSON,
    rows_by_table JSON,
    extra JSON
);
"""


STATE_COLUMNS = ("source", "customer_id", "last_success_end", "last_attempt_at", "last_error", "consecutive_failures",
                 "last_run_id")


@dataclass(frozen=True)
class Issue:
    """One row of `sync_issues`. Codes: not_found, http_error, retries_exhausted, unstable_paging,
    invalid_extended_data, type_coerced, unknown_field, bad_record_time, api_warning, api_error, blank_customer_id,
    duplicate_customer_id, ..."""

    source: str
    customer_id: str | None
    code: str
    message: str
    detail: str | None = None


def ensure_tables(conn: duckdb.DuckDBPyConnection) -> None:
    keyed.create_tables(conn, DDL)


def last_success_ends(conn: duckdb.DuckDBPyConnection, source: str) -> dict[str, dt.datetime]:
    """customer_id -> last successful window end, for every customer of the source that ever succeeded."""
    rows = conn.execute(
        f"SELECT customer_id, last_success_end FROM {SCHEMA}._customer_sync_state "
        "WHERE source = ? AND last_success_end IS NOT NULL", [source]
    ).fetchall()
    return {cid: end.astimezone(dt.timezone.utc) for cid, end in rows}


def _issues_table(run_id: str, issues: Iterable[Issue], at: dt.datetime) -> pa.Table:
    issues = list(issues)
    return pa.table({
        "run_id": pa.array([run_id] * len(issues), pa.string()),
        "source": pa.array([i.source for i in issues], pa.string()),
        "customer_id": pa.array([i.customer_id for i in issues], pa.string()),
        "code": pa.array([i.code for i in issues], pa.string()),
        "message": pa.array([redact(i.message) for i in issues], pa.string()),
        "detail": pa.array([redact(i.detail) if i.detail else None for i in issues], pa.string()),
        "occurred_at": pa.array([at] * len(issues), pa.timestamp("us", tz="UTC")),
    })


def commit(conn: duckdb.DuckDBPyConnection, *, run_id: str, source: str, window_end: dt.datetime | None,
           succeeded: list[str], failed: dict[str, str], issues: list[Issue],
           report: RunReport | None = None, update_customer_state: bool = True) -> None:
    """Record one loaded chunk: customers that succeeded move their `last_success_end` to `window_end`, failed
    ones keep theirs and count a failure; issues are appended; the run row too when given. One transaction."""
    now = dt.datetime.now(dt.timezone.utc)

    def work() -> None:
        if update_customer_state and (succeeded or failed):
            ok = pa.table({"customer_id": pa.array(succeeded, pa.string())})
            bad = pa.table({"customer_id": pa.array(list(failed), pa.string()),
                            "error": pa.array([redact(e)[:2000] for e in failed.values()], pa.string())})
            conn.register("_ok_customers", ok)
            conn.register("_failed_customers", bad)
            try:
                if succeeded:
                    keyed.upsert(
                        conn, f"{SCHEMA}._customer_sync_state", STATE_COLUMNS,
                        "SELECT ?::TEXT AS source, customer_id, ?::TIMESTAMPTZ AS last_success_end, "
                        "?::TIMESTAMPTZ AS last_attempt_at, NULL::TEXT AS last_error, 0 AS consecutive_failures, "
                        "?::TEXT AS last_run_id FROM _ok_customers", keys=["source", "customer_id"],
                        update={"last_success_end": "excluded.last_success_end",
                                "last_attempt_at": "excluded.last_attempt_at", "last_error": "NULL",
                                "consecutive_failures": "0", "last_run_id": "excluded.last_run_id"},
                        params=[source, window_end, now, run_id])
                if failed:
                    keyed.upsert(
                        conn, f"{SCHEMA}._customer_sync_state", STATE_COLUMNS,
                        "SELECT ?::TEXT AS source, customer_id, NULL::TIMESTAMPTZ AS last_success_end, "
                        "?::TIMESTAMPTZ AS last_attempt_at, error AS last_error, 1 AS consecutive_failures, "
                        "?::TEXT AS last_run_id FROM _failed_customers", keys=["source", "customer_id"],
                        update={"last_attempt_at": "excluded.last_attempt_at", "last_error": "excluded.last_error",
                                "consecutive_failures": "s.consecutive_failures + 1",
                                "last_run_id": "excluded.last_run_id"},
                        params=[source, now, run_id])
            finally:
                conn.unregister("_ok_customers")
                conn.unregister("_failed_customers")
        if issues:
            conn.register("_new_issues", _issues_table(run_id, issues, now))
            try:
                conn.execute(f"INSERT INTO {SCHEMA}.sync_issues SELECT * FROM _new_issues")
            finally:
                conn.unregister("_new_issues")
        if report is not None:
            _write_run(conn, report)

    keyed.transaction(conn, work)


def _json(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)


def _write_run(conn: duckdb.DuckDBPyConnection, report: RunReport) -> None:
    sources = report.to_dict()["sources"]
    total = lambda attr: sum(getattr(s, attr) for s in report.sources.values())  # noqa: E731
    conn.execute(f"DELETE FROM {SCHEMA}.runs WHERE run_id = ?", [report.run_id])
    conn.execute(
        f"INSERT INTO {SCHEMA}.runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [report.run_id, report.command, report.started_at, report.ended_at, report.duration_s, report.status,
         report.exit_code, report.models, redact(report.error) if report.error else None,
         total("customers_total"), total("customers_done"), total("customers_failed"), total("customers_skipped"),
         total("records"), total("requests"), total("retries"), total("http_429"),
         redact(_json(sources)), _json(report.rows_by_table), redact(_json(report.extra))])


def write_run(conn: duckdb.DuckDBPyConnection, report: RunReport, issues: list[Issue] | None = None) -> None:
    """The `runs` row (and any last issues) on its own, e.g. for a run that failed before loading anything."""
    commit(conn, run_id=report.run_id, source="", window_end=None, succeeded=[], failed={}, issues=issues or [],
           report=report, update_customer_state=False)


# Change discovery (issue 17): the end of the last discovery window read completely, per source. Its own table (not
# `_customer_sync_state`): it belongs to the source's listings, not to any customer.
DISCOVERY_DDL = f"""
CREATE TABLE IF NOT EXISTS {SCHEMA}._discovery_state (
    source TEXT PRIMARY KEY,
    last_end TIMESTAMPTZ NOT NULL,
    last_run_id TEXT,
    updated_at TIMESTAMPTZ
);
"""


def discovery_end(conn: duckdb.DuckDBPyConnection, source: str) -> dt.datetime | None:
    """The end of the source's last discovery window read completely (None before the first)."""
    keyed.create_tables(conn, DISCOVERY_DDL)
    rows = conn.execute(f"SELECT last_end FROM {SCHEMA}._discovery_state WHERE source = ?", [source]).fetchall()
    return rows[0][0].astimezone(dt.timezone.utc) if rows else None


def set_discovery_end(conn: duckdb.DuckDBPyConnection, source: str, end: dt.datetime, run_id: str) -> None:
    keyed.create_tables(conn, DISCOVERY_DDL)
    keyed.transaction(conn, lambda: keyed.upsert(
                 conn, f"{SCHEMA}._discovery_state", ["source", "last_end", "last_run_id", "updated_at"],
                 "SELECT ?::TEXT AS source, ?::TIMESTAMPTZ AS last_end, ?::TEXT AS last_run_id, "
                 "?::TIMESTAMPTZ AS updated_at", keys=["source"],
                 update={"last_end": "excluded.last_end", "last_run_id": "excluded.last_run_id",
                         "updated_at": "excluded.updated_at"},
                 params=[source, end, run_id, dt.datetime.now(dt.timezone.utc)]))


def failing_customers(conn: duckdb.DuckDBPyConnection, source: str) -> set[str]:
    """Customers whose last attempt failed (a `changed` run retries them whatever discovery says)."""
    return {r[0] for r in conn.execute(
        f"SELECT customer_id FROM {SCHEMA}._customer_sync_state WHERE source = ? AND consecutive_failures > 0",
        [source]).fetchall()}
