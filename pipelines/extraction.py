"""What both sources share while extracting: the job of one chunk of customers (their windows in, successes,
failures and issues out), `fetched`, which keeps `concurrency` customers in flight on one thread, and the switch
between extracting in this process and in worker processes (`extract_batches`, `pipelines/workers.py`).

Within a process, one thread: the work per customer is mostly waiting on HTTP, and libcurl's multi interface keeps
many customers' requests in flight on the thread that also normalizes (`pipelines/multiplex.py`). Across
processes: the Python work per request and per record (HTTP handling, JSON, normalization) needs more than the one
core a GIL allows; the rate limiter and the login token live in shared memory (`pipelines/http.py`)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from pipelines.columns import ColumnTypes
from pipelines.errors import CustomerFailed, SourceUnavailable
from pipelines.faultpoints import maybe_crash
from pipelines.http import HttpStats, Steps
from pipelines.multiplex import run_multiplexed
from pipelines.progress import RunProgress
from pipelines.state import Issue
from pipelines.windows import Window


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


def fetched(job: ExtractJob, fetch_steps: Callable[[tuple[str, Window]], Steps]) -> Iterator[tuple[str, Window, Any]]:
    """Fetch every task of `job`, `job.concurrency` customers in flight on this thread (`pipelines/multiplex.py`),
    and yield (customer, window, result) for those that worked. A failed customer is recorded on the job and the
    run goes on; a source-wide failure (login refused) stops it. The caller adds the records to its batch, then
    calls `job.succeed`."""
    for (customer_id, window), result in run_multiplexed(job.tasks, fetch_steps, job.concurrency):
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


Tables = list[tuple[str, Any]]  # (table name, pyarrow.Table)


def extract_batches(job: ExtractJob, api: Any, produce: Callable[[Any, ExtractJob], Iterator[Tables]]) -> Iterator[Tables]:
    """The Arrow tables of `job`, batch by batch: `produce(api, job)` runs here, or in the worker processes of
    `job.pool` for chunks of the job's customers (same function, same tables; the job's outcome is merged back)."""
    if job.pool is None:
        yield from produce(api, job)
    else:
        yield from job.pool.extract(job, produce)
