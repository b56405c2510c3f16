"""Backfills: load a long history in fixed chunks, resumable after a crash, without touching the nightly state.

A backfill splits `[since, until)` into chunks (`--chunk 7d`) and, per source and chunk, calls the runner's
`run_window(..., update_customer_state=False)`: the same extraction, normalization and merge as a nightly run, for
a fixed window and every listed customer, leaving `_customer_sync_state` (where each customer's nightly window
starts) exactly as it was.

Resumability: after a chunk's load and bookkeeping commit, one row goes into `loyalty_raw._backfill_progress`.
A rerun of the same command skips every chunk already covered by completed rows (coverage is by interval, so a rerun
with another `--chunk` still skips what is done), and for a chunk that completed with failed customers it retries
only those customers. Progress is kept per customer list (a fingerprint of the ids): with a changed list nothing
counts as done, since a chunk loaded for yesterday's list never fetched a customer added since. A crash between a
chunk's load and its progress row only means that chunk is loaded again: raw tables merge on their keys, so the
rerun leaves the data identical.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import duckdb
import pendulum

from pipelines import keyed, runner, state
from pipelines.customers import load_customers
from pipelines.logs import get_logger, redact
from pipelines.progress import RunProgress
from pipelines.report import RunReport, SourceReport
from pipelines.warehouse import open_warehouse
from pipelines.workers import ExtractPool, start_pool

log = get_logger("backfill")

SCHEMA = "loyalty_raw"
TABLE = f"{SCHEMA}._backfill_progress"
DDL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {TABLE} (
    source TEXT NOT NULL,
    customer_set TEXT NOT NULL,  -- fingerprint of the customer list the chunk was loaded for
    chunk_start TIMESTAMPTZ NOT NULL,
    chunk_end TIMESTAMPTZ NOT NULL,
    run_id TEXT,
    customers BIGINT,
    customers_failed BIGINT,
    failed_customers JSON,      -- retried (alone) by the next run of the same backfill
    records BIGINT,
    completed_at TIMESTAMPTZ,
    PRIMARY KEY (source, customer_set, chunk_start, chunk_end)
);
"""
PROGRESS_COLUMNS = ("source", "customer_set", "chunk_start", "chunk_end", "run_id", "customers", "customers_failed",
                    "failed_customers", "records", "completed_at")


@dataclass(frozen=True)
class Chunk:
    start: pendulum.DateTime
    end: pendulum.DateTime

    def __str__(self) -> str:
        return f"[{self.start.isoformat()}, {self.end.isoformat()})"


def plan_chunks(since: dt.datetime, until: dt.datetime, chunk: dt.timedelta) -> list[Chunk]:
    """`[since, until)` cut into consecutive chunks of `chunk`; the last one ends at `until`."""
    start, end = pendulum.instance(since).in_timezone("UTC"), pendulum.instance(until).in_timezone("UTC")
    if end <= start:
        raise ValueError(f"--until ({end.isoformat()}) must be after --since ({start.isoformat()})")
    if chunk.total_seconds() <= 0:
        raise ValueError("--chunk must be positive")
    out = []
    while start < end:
        nxt = min(start + chunk, end)
        out.append(Chunk(start, nxt))
        start = nxt
    return out


def ensure_table(conn: duckdb.DuckDBPyConnection) -> None:
    keyed.create_tables(conn, DDL)


def _merge(intervals: list[tuple[dt.datetime, dt.datetime]]) -> list[tuple[dt.datetime, dt.datetime]]:
    merged: list[tuple[dt.datetime, dt.datetime]] = []
    for s, e in sorted(intervals):
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged


def customer_set(customers: Sequence[str]) -> str:
    """Fingerprint of a customer list (order and duplicates ignored). Progress counts only for the same list: a
    chunk done for yesterday's list says nothing about a customer added since."""
    digest = hashlib.sha256()
    for cid in sorted(set(customers)):
        digest.update(cid.encode() + b"\n")
    return f"{len(set(customers))}:{digest.hexdigest()[:16]}"


@dataclass
class ChunkPlan:
    chunk: Chunk
    customers: list[str]          # who to load in this chunk (all, or only those that failed last time)
    customer_set: str             # the whole list's fingerprint, under which the chunk is recorded
    retry: bool = False


def pending(conn: duckdb.DuckDBPyConnection, source: str, chunks: Sequence[Chunk],
            customers: list[str]) -> list[ChunkPlan]:
    """What is left to do for `source` and this customer list: chunks not covered by fully completed rows, and for
    a chunk recorded with failures, just its failed customers."""
    cset = customer_set(customers)
    rows = conn.execute(
        f"SELECT chunk_start, chunk_end, customers_failed, failed_customers FROM {TABLE} "
        "WHERE source = ? AND customer_set = ?", [source, cset]
    ).fetchall()
    covered = _merge([(s, e) for s, e, failed, _ in rows if not failed])
    partial = {(s, e): json.loads(f or "[]") for s, e, failed, f in rows if failed}
    listed = set(customers)
    plans = []
    for c in chunks:
        if any(s <= c.start and c.end <= e for s, e in covered):
            continue
        retry = partial.get((c.start, c.end))
        if retry is not None:
            plans.append(ChunkPlan(c, [x for x in retry if x in listed], cset, retry=True))
        else:
            plans.append(ChunkPlan(c, list(customers), cset))
    return plans


def record_chunk(conn: duckdb.DuckDBPyConnection, source: str, plan: ChunkPlan, run_id: str, failed: list[str],
                 records: int) -> None:
    """Mark a chunk done (or done with these failures). Written only after the chunk's load committed."""
    keyed.upsert(
        conn, TABLE, PROGRESS_COLUMNS,
        "SELECT ?::TEXT AS source, ?::TEXT AS customer_set, ?::TIMESTAMPTZ AS chunk_start, "
        "?::TIMESTAMPTZ AS chunk_end, ?::TEXT AS run_id, ?::BIGINT AS customers, ?::BIGINT AS customers_failed, "
        "?::JSON AS failed_customers, ?::BIGINT AS records, ?::TIMESTAMPTZ AS completed_at",
        keys=["source", "customer_set", "chunk_start", "chunk_end"],
        update={"run_id": "excluded.run_id", "customers": "excluded.customers",
                "customers_failed": "excluded.customers_failed", "failed_customers": "excluded.failed_customers",
                "records": "s.records + excluded.records", "completed_at": "excluded.completed_at"},
        params=[source, plan.customer_set, plan.chunk.start, plan.chunk.end, run_id, len(plan.customers),
                len(failed), json.dumps(failed), records, pendulum.now("UTC")])


@contextmanager
def _worker_pool(settings: Any, sources: Sequence[str]) -> Iterator[ExtractPool | None]:
    """The run's worker pool (or None: extract in this process), closed when the backfill ends."""
    pool = start_pool(settings, sources)
    try:
        yield pool
    finally:
        if pool is not None:
            pool.close()


def backfill(settings: Any, sources: Sequence[str], since: dt.datetime, until: dt.datetime,
             chunk: dt.timedelta, *, models: bool = True, customers_file: str | None = None) -> RunReport:
    """Run (or resume) a backfill; returns the run report (also written as a `runs` row, command `backfill`).
    Raises `RunLocked` when another run holds the warehouse."""
    chunks = plan_chunks(since, until, chunk)
    report = RunReport(command="backfill")
    report.extra.update(since=chunks[0].start.isoformat(), until=chunks[-1].end.isoformat(),
                        chunk_s=chunk.total_seconds(), chunks=len(chunks))
    issues: list[state.Issue] = []
    progress: RunProgress | None = None
    wh = open_warehouse(settings)
    with wh.lock("run"), _worker_pool(settings, sources) as pool:
        # the worker pool first: its processes fork before this one starts any thread (pipelines/workers.py)
        conn = wh.connect()
        try:
            try:
                state.ensure_tables(conn)
                ensure_table(conn)
                work: dict[str, list[ChunkPlan]] = {}
                for source in sources:
                    listed = load_customers(customers_file or settings.source(source).customers, conn)
                    issues.extend(listed.issues(source))
                    work[source] = pending(conn, source, chunks, listed.ids)
                    # customer counts of a backfill are customer-chunks: every customer is loaded once per chunk
                    report.sources[source] = SourceReport(
                        window_start=chunks[0].start, window_end=chunks[-1].end,
                        customers_total=sum(len(p.customers) for p in work[source]),
                        customers_skipped=listed.skipped)
                    retries = sum(1 for p in work[source] if p.retry)
                    log.info("backfill %s: %d chunks of %s; %d done before, %d to load, %d to retry for failed "
                             "customers", source, len(chunks), chunk, len(chunks) - len(work[source]),
                             len(work[source]) - retries, retries)
                progress = RunProgress({s: r.customers_total for s, r in report.sources.items()})
                for source, plans in work.items():
                    for plan in plans:
                        _load_chunk(settings, source, plan, report, conn, progress, pool)
                if models and not report.error:
                    report.models = runner._run_models(settings)
            except Exception as exc:  # noqa: BLE001 - the runs row and the alert must still be written
                log.exception("backfill failed")
                report.error = redact(f"{type(exc).__name__}: {exc}")
            finally:
                if progress is not None:
                    progress.close()
            # one customer failing in several chunks is one failing customer
            for s in report.sources.values():
                s.failed_customers = sorted(set(s.failed_customers))
            report.finish()
            state.write_run(conn, report, issues)
        finally:
            conn.close()
    return report


def _load_chunk(settings: Any, source: str, plan: ChunkPlan, report: RunReport, conn: duckdb.DuckDBPyConnection,
                progress: RunProgress, pool: ExtractPool | None) -> None:
    src = report.sources[source]
    failed_before, records_before = len(src.failed_customers), src.records
    if plan.customers:
        runner.run_window(settings, source, plan.chunk.start, plan.chunk.end, plan.customers, report,
                          update_customer_state=False, conn=conn, progress=progress, pool=pool)
    failed = src.failed_customers[failed_before:]
    # only after the chunk's load and bookkeeping committed: a crash before this line reloads the chunk (harmless)
    record_chunk(conn, source, plan, report.run_id, failed, src.records - records_before)
    log.info("backfill %s chunk %s: %d customers, %d failed, %d records", source, plan.chunk,
             len(plan.customers), len(failed), src.records - records_before)
