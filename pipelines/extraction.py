"""What every source shares while extracting: the job of one chunk of customers (their windows in, successes,
failures and issues out), `fetched`, which keeps `concurrency` customers in flight on one thread, the one producer
loop (`produce`: records -> the source's Arrow batches), the switch between extracting in this process and in
worker processes (`extract_batches`, `pipelines/workers.py`), and the dlt resource with its table hints
(`resource`, `hinted`). A source brings only its `SourceSpec` (`pipelines/spec.py`).

Within a process, one thread: the work per customer is mostly waiting on HTTP, and libcurl's multi interface keeps
many customers' requests in flight on the thread that also normalizes (`pipelines/multiplex.py`). Across
processes: the Python work per request and per record (HTTP handling, JSON, normalization) needs more than the one
core a GIL allows; the rate limiter and the login token live in shared memory (`pipelines/http.py`)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import pendulum

from pipelines.columns import ColumnTypes, with_required
from pipelines.credentials import lane_function, lanes as credential_lanes, make_api, total_concurrency
from pipelines.errors import CustomerFailed, SourceUnavailable
from pipelines.faultpoints import maybe_crash
from pipelines.http import HttpStats, Steps
from pipelines.multiplex import run_multiplexed
from pipelines.progress import RunProgress
from pipelines.spec import RecordBatch, SourceApi, SourceSpec, Tables, required_columns
from pipelines.state import Issue
from pipelines.windows import Window, utc, window_end


@dataclass
class ExtractJob:
    """One source, one chunk of customers, one load. Filled in by the source during extraction; committed to
    `_customer_sync_state` by the runner only after dlt's load of the same data succeeded."""

    source: str
    run_id: str
    tasks: Iterable[tuple[str, Window]]      # consumed once, by the source's resource
    types: ColumnTypes
    concurrency: int
    batch_rows: int
    stats: HttpStats
    progress: RunProgress | None = None
    pool: Any = None                         # a `workers.ExtractPool`: extract in worker processes
    feed: Any = None                         # the source's `runner.TaskFeed` (the pool works ahead from it)
    crash_points: bool = True                # False inside a worker: crash points fire in the run's own process
    lanes: list[int] | None = None           # several credentials: customers in flight per credential
                                             # (`credentials.lanes`); `concurrency` is then their sum
    succeeded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    issues: list[Issue] = field(default_factory=list)
    records_fetched: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def succeed(self, customer_id: str, records: int) -> None:
        self.succeeded.append(customer_id)
        self.records_fetched += records
        if self.progress:
            self.progress.update(self.source, customers_done=1, records=records)

    def fail(self, customer_id: str, code: str, message: str, detail: str | None = None) -> None:
        self.failed[customer_id] = f"{code}: {message}"
        self.issues.append(Issue(self.source, customer_id, code, message, detail))
        if self.progress:
            self.progress.update(self.source, customers_failed=1)


def fetched(job: ExtractJob, fetch_steps: Callable[[tuple[str, Window]], Steps],
            lane_of: Callable[[str], int] | None = None) -> Iterator[tuple[str, Window, Any]]:
    """Fetch every task of `job`, `job.concurrency` customers in flight on this thread (`pipelines/multiplex.py`),
    and yield (customer, window, result) for those that worked. A failed customer is recorded on the job and the
    run goes on; a source-wide failure (login refused) stops it. The caller adds the records to its batch, then
    calls `job.succeed`. `lane_of`: the customer's credential, when the source has several (`job.lanes` each)."""
    lanes = None
    if lane_of is not None and job.lanes:
        lanes = (lambda task: lane_of(task[0]), job.lanes)
    for (customer_id, window), result in run_multiplexed(job.tasks, fetch_steps, job.concurrency, lanes):
        if isinstance(result, SourceUnavailable):
            raise result
        if isinstance(result, CustomerFailed):
            job.fail(customer_id, result.code, result.message, result.detail)
        elif isinstance(result, BaseException):
            job.fail(customer_id, "error", f"{type(result).__name__}: {result}")
        else:
            yield customer_id, window, result  # type: ignore[misc]
        if job.crash_points:
            maybe_crash("extract")


def produce(spec: SourceSpec, api: SourceApi, job: ExtractJob) -> Iterator[Tables]:
    """Fetch `job.tasks` through `api` and turn the records into Arrow tables with the source's `new_batch`,
    `job.batch_rows` rows at a time: the one producer loop of every source. Runs in this process or in a worker
    process (`pipelines/workers.py`); no dlt here."""

    def build(batch: RecordBatch) -> Tables:
        tables, issues = batch.build()
        job.issues.extend(issues)
        return tables

    def steps(task: tuple[str, Window]) -> Steps:
        return api.customer_steps(task[0], task[1])

    source = job.source
    batch = spec.new_batch(api, job)
    for customer_id, window, (records, api_issues) in fetched(job, steps, lane_function(api)):
        for code, message, detail in api_issues:
            job.issues.append(Issue(source, customer_id, code, message, detail))
        batch.add(customer_id, window, records)
        job.succeed(customer_id, len(records))
        if len(batch) >= job.batch_rows:
            yield build(batch)
            batch = spec.new_batch(api, job)
    yield build(batch)


def extract_batches(job: ExtractJob, api: SourceApi, spec: SourceSpec) -> Iterator[Tables]:
    """The Arrow tables of `job`, batch by batch: `produce` runs here, or in the worker processes of `job.pool` for
    chunks of the job's customers (same function, same tables; the job's outcome is merged back)."""
    if job.pool is None:
        yield from produce(spec, api, job)
    else:
        yield from job.pool.extract(job)


def hinted(spec: SourceSpec, tables: Tables) -> Iterator[Any]:
    """The tables as dlt items, each with the complete hints of its table (`spec.table_hints`) and its key columns
    non-nullable in the Arrow schema (dlt warns on every batch otherwise)."""
    import dlt

    for name, table in tables:
        hints = spec.table_hints(name)
        # every table as a variant with its own complete hints: hints set on the resource itself would be
        # inherited by child tables (dlt copies resource column hints into variants)
        yield dlt.mark.with_hints(with_required(table, required_columns(hints)),
                                  dlt.mark.make_hints(table_name=name, **hints), create_table_variant=True)


def resource(spec: SourceSpec, api: SourceApi, job: ExtractJob, close: Callable[[], None] | None = None) -> Any:
    """The source's dlt resource over `job`: parallelized, so a run extracts every source's resource side by side
    into one load package. `close` is called once the resource is exhausted (an API client it owns)."""
    import dlt

    @dlt.resource(name=spec.resource_name, write_disposition="merge", parallelized=True)
    def tables() -> Iterator[Any]:
        try:
            for batch in extract_batches(job, api, spec):
                yield from hinted(spec, batch)
        finally:
            if close is not None:
                close()

    return tables


class Extraction:
    """What the runner hands a source function (`spec.source(extraction=...)`): its API client and the round's job.
    A plain class on purpose: dlt makes a config field of every source-function argument whose type it can
    resolve from config (dataclasses included), and these two are objects, not settings."""

    __slots__ = ("api", "job")

    def __init__(self, api: SourceApi, job: ExtractJob) -> None:
        self.api = api
        self.job = job


def source_resource(spec: SourceSpec, customer_ids: Iterable[str] | None, start: Any, end: Any,
                    extraction: Extraction | None) -> Any:
    """The body of every `@dlt.source` function. With `extraction` (the runner): the resource over its job. Alone
    (a dlt user's own pipeline): the customers' records in [`start`, `end`) with the source's settings; no
    bookkeeping, the merge keys make a repeated load harmless."""
    if extraction is not None:
        return resource(spec, extraction.api, extraction.job)
    if customer_ids is None:
        raise ValueError(f"{spec.name}: give customer_ids (or set {spec.section}.customer_ids)")
    import uuid

    from pipelines.config import ConfigError, load_loyalty, load_source, parse_instant

    settings = load_source(spec.name, spec.configspec, load_loyalty().allow_insecure_http)
    try:
        until = parse_instant(end, "end") if end is not None else None
        since = parse_instant(start, "start") if start is not None else settings.initial_start
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    window_to = window_end(pendulum.now("UTC"), settings.safety_lag_duration, until)
    window = Window(utc(since), window_to)
    stats = HttpStats()
    api = make_api(spec, settings, stats)
    api.check()
    job = ExtractJob(source=spec.name, run_id=uuid.uuid4().hex[:16], tasks=[(c, window) for c in customer_ids],
                     types=ColumnTypes(), concurrency=total_concurrency(settings), batch_rows=10_000, stats=stats,
                     crash_points=False, lanes=credential_lanes(settings))
    return resource(spec, api, job, close=api.close)
