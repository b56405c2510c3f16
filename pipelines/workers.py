"""Extraction in worker processes: the customers of a round are fetched and turned into Arrow tables by N forked
processes, while the run's own process only feeds dlt (extract, normalize, load) and keeps the books.

Why: the Python work per request and per record (HTTP handling, JSON parsing, records -> Arrow) is bound to one
core by the GIL; the benchmark (`make bench`, docs/decisions/session-1-profiling.md) showed the single-process pipeline using one
core fully while the other sat mostly idle. A process pool with the *same* producer functions the in-process path
uses (`extraction.produce` with the source's spec) spreads that work over the machine's cores.

How the processes stay one client towards the APIs:
- the rate limiter of each credential and its login token are in shared memory created before the fork
  (`pipelines/http.py`: `RateLimiter`, `SharedToken`; one of each per credential, `pipelines/credentials.py`), so
  each credential's request budget and single-flight re-login hold across processes;
- each source's `concurrency` (with several credentials: each credential's) is split between the workers, so the
  requests in flight stay at most what is configured;
- a worker returns, per chunk of customers: the tables, who succeeded or failed, the issues, and its request
  counters; the run merges them into the round's `ExtractJob`, so bookkeeping, progress and the report are the
  same as in-process.

Why fork: workers inherit the imported modules (dlt, pyarrow: seconds of start-up each under spawn) and the shared
memory. The pool is started at the beginning of a run, while the process has no other threads (forking a threaded
process can deadlock the child). Off Linux (no PR_SET_PDEATHSIG to tie the workers' lives to the run), or with
`extract_processes` 1, the run extracts in its own process as before.

Why hand-made chunking around `ProcessPoolExecutor` rather than `map`: submissions are bounded (a few chunks in
flight), so a round still ends after `round_records` records, and memory stays flat whatever the customer count.
"""

from __future__ import annotations

import ctypes
import gc
import math
import multiprocessing
import os
import resource
import signal
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Iterable, Iterator, Sequence

import pyarrow as pa

from pipelines import credentials, registry
from pipelines.columns import ARROW_TYPES, BOOL, DOUBLE, TEXT, ColumnTypes, convert, problem_message
from pipelines.extraction import ExtractJob, Tables, produce
from pipelines.faultpoints import maybe_crash
from pipelines.http import Counts, HttpStats, SharedToken
from pipelines.logs import get_logger
from pipelines.state import Issue
from pipelines.windows import Window

log = get_logger("workers")

CHUNK_CUSTOMERS = 200   # customers per task sent to a worker: ~3,000 records; small enough to balance the tail
LOOKAHEAD_PER_WORKER = 6  # chunks of the next round a worker may work on while the run loads the current one


def chunk_size(base: int, rate_limit: float) -> int:
    """Customers per chunk for a source limited to `rate_limit` requests/s. Between two chunks a worker hands its
    result over and waits for the next chunk (idle for that source); under a tight rate limit a default chunk lasts
    only a few seconds, so those hand-overs cost a visible share of the request budget (bench rate-limit scenario,
    docs/decisions/session-2-worker-processes.md). A rate-limited chunk spans ~20 s of the budget instead (at most
    2,000 customers)."""
    if base < CHUNK_CUSTOMERS or rate_limit <= 0 or rate_limit >= 500:
        return base
    return min(2000, max(base, int(rate_limit * 20)))


def chunk_customers(round_records: int) -> int:
    """Customers per worker task: 200, fewer when rounds are small (a round ends once `round_records` records were
    fetched; the chunks already in flight when it does overshoot it, by at most a few chunks)."""
    return max(1, min(CHUNK_CUSTOMERS, round_records // 200))


# ---------------------------------------------------------------------------------------------- worker side
_WORKER: dict[str, Any] = {}
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _init_worker(settings: Any, slots: dict[str, list[SharedToken]], parent: int) -> None:
    # a worker must not outlive its run: if the run process is killed (SIGKILL, OOM killer, a crash test), the
    # kernel kills the workers too (Linux PR_SET_PDEATHSIG) instead of leaving them blocked on the task queue and
    # holding the run's stdout/stderr open
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the run died between the fork and the prctl
        os._exit(1)
    _WORKER.clear()
    _WORKER.update(settings=settings, slots=slots, apis={})


def _ping() -> int:
    return os.getpid()


def _api(source: str) -> tuple[Any, HttpStats]:
    apis = _WORKER["apis"]
    if source not in apis:
        stats = HttpStats()
        settings = _WORKER["settings"]
        apis[source] = (credentials.make_api(registry.get(source), settings.source(source), stats,
                                             _WORKER["slots"].get(source)), stats)
    return apis[source]


@dataclass
class ChunkResult:
    tables: Tables
    succeeded: list[str]
    failed: dict[str, str]
    issues: list[Issue]
    records: int
    counters: tuple[Counts, dict[str, Counts]]   # (requests, retries, 429s, logins) in total and per credential


def _extract_chunk(source: str, run_id: str, kinds: dict[str, dict[str, str]], tasks: list[tuple[str, Window]],
                   concurrency: int, batch_rows: int, lanes: list[int] | None = None) -> ChunkResult:
    # the previous chunk's Arrow buffers were freed after they were sent; hand that memory back to the OS, else the
    # allocator keeps each worker at its high-water mark (the memory run measures the whole process tree)
    pa.default_memory_pool().release_unused()
    api, stats = _api(source)
    job = ExtractJob(source=source, run_id=run_id, tasks=tasks, types=ColumnTypes(kinds), concurrency=concurrency,
                     batch_rows=batch_rows, stats=stats, crash_points=False, lanes=lanes)
    try:
        tables = [t for batch in produce(registry.get(source), api, job) for t in batch]
    finally:
        counters = stats.take()
    return ChunkResult(tables, job.succeeded, job.failed, job.issues, job.records_fetched, counters)


# ---------------------------------------------------------------------------------------------- run side
@dataclass
class ExtractPool:
    """The worker processes of one run (or one backfill), shared by both sources' resources.

    Fair shares: a worker runs one chunk at a time; when both sources took chunks first come first served, the two
    APIs often waited for each other, and under a rate limit (where processes do not help, the limiter is the wall)
    each source reached well under its allowed request rate (bench rate-limit scenario,
    docs/decisions/session-2-worker-processes.md). So while
    k sources are extracting, each keeps at most `processes / k` chunks in flight: each source always has a worker,
    and once one source is done the other gets them all. (One executor per source would double the processes, and
    each worker costs memory of its own: docs/decisions/design-figures.md.)"""

    settings: Any
    processes: int
    chunk_customers: int = CHUNK_CUSTOMERS
    slots: dict[str, list[SharedToken]] = field(default_factory=dict)   # per source, one per credential
    _executor: ProcessPoolExecutor | None = None
    _active: set[str] = field(default_factory=set)   # sources whose `extract` is running (dlt runs them in threads)

    @classmethod
    def start(cls, settings: Any, sources: Sequence[str], processes: int) -> "ExtractPool":
        pool = cls(settings, processes, chunk_customers(settings.round_records))
        # everything a worker will run, imported once here rather than once per worker after the fork (importing
        # dlt is expensive: docs/decisions/session-2-worker-processes.md)
        import dlt  # noqa: F401

        registry.specs(sources)  # the packages of the sources it will extract

        # pyarrow imports pandas (when installed) on the first `pa.array` of Python objects: CPU and memory that
        # each worker paid on its own first batch unless done here (docs/decisions/session-4-staging-in-memory.md)
        pa.array([0])

        for source in sources:
            cfg = settings.source(source)
            pool.slots[source] = credentials.credential_slots(cfg)
            # registers each credential's shared rate limiter before the fork (the clients are thrown away)
            credentials.make_api(registry.get(source), cfg, HttpStats(), pool.slots[source]).close()
        pool._executor = ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context("fork"),
                                             initializer=_init_worker, initargs=(settings, pool.slots, os.getpid()))
        # the first submit forks every worker, now, while this process has no other threads. Objects frozen out of
        # the garbage collector are never traversed by the workers' collections, so their pages stay shared with
        # this process instead of being copied into every worker (copy-on-write)
        gc.freeze()
        try:
            pool._executor.submit(_ping).result()
        finally:
            gc.unfreeze()
        pids = sorted(p.pid for p in pool._executor._processes.values())  # type: ignore[attr-defined]
        log.info("extraction workers started", extra={"fields": {"processes": processes, "pids": pids}})
        return pool

    def close(self) -> None:
        if self._executor is not None:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            me = resource.getrusage(resource.RUSAGE_SELF)
            log.info("extraction workers stopped", extra={"fields": {
                "workers_cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2),
                "run_process_cpu_s": round(me.ru_utime + me.ru_stime, 2)}})

    def __enter__(self) -> "ExtractPool":  # `with start_pool(...) or nullcontext() as pool` (pipelines/backfill.py)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def in_flight_per_worker(self, concurrency: int) -> int:
        """A worker's share of the source's customers in flight (on one thread, `pipelines/multiplex.py`)."""
        return max(1, math.ceil(concurrency / self.processes))

    def extract(self, job: ExtractJob) -> Iterator[Tables]:
        """`extraction.produce` over the job's customers in the workers, chunk by chunk, at most its fair share of the workers
        in flight; each finished chunk is merged into `job` and its tables yielded (types conformed).

        Working ahead: once the round has handed out its last chunk, up to `LOOKAHEAD_PER_WORKER` chunks per worker
        of the NEXT round are started from the source's feed, so the workers keep fetching while this process
        normalizes and loads the round (measured: the load step of a 200,000-record round is ~3 s in which the
        workers would otherwise sit idle). Those chunks are carried on the feed and merged into the next round's
        job, so their customers are committed with the round that loads them."""
        assert self._executor is not None, "pool closed"
        cfg = self.settings.source(job.source)
        size = chunk_size(self.chunk_customers, credentials.total_rate(cfg))
        chunks = _chunks(job.tasks, size)
        # several credentials: each credential's customers in flight split between the workers, lane by lane
        lanes = credentials.lanes(cfg, self.processes) if job.lanes else None
        per_worker = sum(lanes) if lanes else self.in_flight_per_worker(job.concurrency)
        feed = job.feed
        in_flight: dict[Future, list[tuple[str, Window]]] = {}
        if feed is not None and feed.carried:
            in_flight.update(feed.carried)
            feed.carried = {}

        def start(chunk: list[tuple[str, Window]]) -> Future:
            return self._executor.submit(_extract_chunk, job.source, job.run_id,  # type: ignore[union-attr]
                                         job.types.snapshot(), chunk, per_worker, job.batch_rows, lanes)

        def submit() -> bool:
            chunk = next(chunks, None)
            if chunk is None:
                return False
            in_flight[start(chunk)] = chunk
            return True

        def fill() -> None:
            share = max(1, self.processes // max(1, len(self._active)))
            while len(in_flight) < share:
                if not submit():
                    work_ahead()
                    return

        def work_ahead() -> None:
            # bounded in customers (not chunks: rate-limited chunks are larger), so memory stays bounded
            budget = LOOKAHEAD_PER_WORKER * self.processes * self.chunk_customers
            while feed is not None and sum(map(len, feed.carried.values())) < budget:
                chunk = feed.take_ahead(min(size, self.chunk_customers))
                if not chunk:
                    return
                feed.carried[start(chunk)] = chunk

        merged = _Coalescer(job.batch_rows)
        self._active.add(job.source)
        try:
            fill()
            while in_flight:
                done, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
                for fut in done:
                    in_flight.pop(fut)
                    result: ChunkResult = fut.result()  # a worker's SourceUnavailable is raised here
                    _absorb(job, result)
                    tables = merged.add(_conform(job, result.tables))
                    fill()  # keep the workers busy while dlt writes these tables
                    if tables:
                        yield tables
            if tables := merged.flush():
                yield tables
        finally:
            self._active.discard(job.source)
            for fut in in_flight:
                fut.cancel()  # chunks not started; running ones finish and are dropped (their customers stay due)


class _Coalescer:
    """Chunks' tables joined per table name until `rows` rows, then handed to dlt as one item. dlt's extract costs
    per item, not only per row (hints, schema inference of the Arrow table, naming), and a chunk gives a few
    thousand point-history rows but only a few dozen rows per child table
    (docs/decisions/session-3-coalescing-and-sandbox.md)."""

    def __init__(self, rows: int) -> None:
        self.rows = max(1, rows)
        self._parts: dict[str, list[pa.Table]] = {}
        self._count: dict[str, int] = {}

    def add(self, tables: Tables) -> Tables:
        out: Tables = []
        for name, table in tables:
            self._parts.setdefault(name, []).append(table)
            self._count[name] = self._count.get(name, 0) + table.num_rows
            if self._count[name] >= self.rows:
                out.extend(self._take(name))
        return out

    def flush(self) -> Tables:
        return [t for name in list(self._parts) for t in self._take(name)]

    def _take(self, name: str) -> Tables:
        parts = self._parts.pop(name)
        self._count.pop(name)
        if len(parts) == 1:
            return [(name, parts[0])]
        try:
            # columns one table lacks (sparse extended-data keys) are filled with nulls; types agree after _conform
            return [(name, pa.concat_tables(parts, promote_options="default"))]
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return [(name, t) for t in parts]  # a type _conform does not govern differs: hand them over one by one


def _chunks(tasks: Iterable[tuple[str, Window]], size: int) -> Iterator[list[tuple[str, Window]]]:
    it = iter(tasks)
    while chunk := list(islice(it, size)):
        yield chunk


def _absorb(job: ExtractJob, result: ChunkResult) -> None:
    """A worker's outcome for its chunk, merged into the run's job as if extracted here."""
    job.stats.add_counts(*result.counters)
    job.succeeded.extend(result.succeeded)
    job.records_fetched += result.records
    for customer_id, reason in result.failed.items():
        job.failed[customer_id] = reason
    job.issues.extend(result.issues)
    if job.progress:
        job.progress.update(job.source, customers_done=len(result.succeeded), records=result.records)
        if result.failed:
            job.progress.update(job.source, customers_failed=len(result.failed))
    if job.crash_points:
        for _ in range(len(result.succeeded) + len(result.failed)):
            maybe_crash("extract")  # the same crash points as extracting in this process: one per customer


_KIND_OF = {pa.float64(): DOUBLE, pa.string(): TEXT, pa.bool_(): BOOL}


def _conform(job: ExtractJob, tables: Tables) -> Tables:
    """One type per warehouse column across workers: a worker types a column it sees first from its own records;
    when another worker (or an earlier batch) fixed another kind for it, the values are coerced here as the
    in-process path would (`columns.convert`), and the drift is recorded."""
    out: Tables = []
    for name, table in tables:
        for i, f in enumerate(table.schema):
            kind = _KIND_OF.get(f.type)
            if kind is None:
                continue
            want = job.types.kind_for(name, f.name, kind)
            if want != kind:
                problems: list = []
                arr = convert(table.column(i).to_pylist(), want, f.name, problems)
                table = table.set_column(i, pa.field(f.name, ARROW_TYPES[want]), arr)
                ids = table.column("customer_id") if "customer_id" in table.column_names else None
                for row, cname, code, value in problems:
                    job.issues.append(Issue(job.source, ids[row].as_py() if ids is not None else None, code,
                                            problem_message(f"{name}.{cname}", code, value), repr(value)[:200]))
        out.append((name, table))
    return out


def start_pool(settings: Any, sources: Sequence[str]) -> ExtractPool | None:
    """The run's worker pool per `[loyalty] extract_processes` (`settings.worker_processes`), or None to extract
    in this process."""
    if settings.worker_processes < 2:
        return None
    return ExtractPool.start(settings, sources, settings.worker_processes)
