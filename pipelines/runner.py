"""One run: lock, customer windows, the dlt pipeline, state commit, report, models.

Entry points (contract, docs/architecture.md):
- `run(settings, sources, customers_file=None, until=None, models=True, command="run") -> RunReport`: the nightly
  incremental run. Exit code in `report.exit_code`: 0 all customers done, 2 some failed (listed), 1 the run failed.
- `run_window(settings, source, start, end, customers, report, update_customer_state=False)`: load a fixed window
  for the given customers (backfills), inside a caller that already holds the lock and the warehouse.

Order of commits per chunk of customers: extract -> normalize -> load (dlt, atomic per package) -> bookkeeping
(`state.commit`, one DuckDB transaction). A crash anywhere before the bookkeeping leaves the customers' windows
where they were, so the next run fetches the same records again and the merge keys absorb them.

The warehouse file is held only for planning, each round's load + bookkeeping, and the marts; it is released while
the run fetches (`pipelines/writer.py`), so readers can open it during the extraction.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections import deque
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import duckdb
import pendulum

from pipelines import changes, credentials, registry, shards, state
from pipelines.columns import ColumnTypes
from pipelines.config import ConfigError, Settings
from pipelines.errors import SourceUnavailable, WarehouseUnavailable
from pipelines.extraction import ExtractJob, Extraction
from pipelines.faultpoints import maybe_crash
from pipelines.http import HttpStats
from pipelines.lock import RunLocked
from pipelines.logs import get_logger, redact
from pipelines.progress import RunProgress
from pipelines.report import RunReport, SourceReport, render_summary
from pipelines.schema_export import export_schema
from pipelines.shards import Shard
from pipelines.state import Issue
from pipelines.warehouse import Warehouse, open_warehouse
from pipelines.windows import Window, customer_window, utc, window_end
from pipelines.workers import ExtractPool, start_pool
from pipelines.writer import WarehouseWriter

log = get_logger("runner")

PIPELINE_NAME = "loyalty_warehouse"
DATASET = "loyalty_raw"
SCHEMA_NAME = "loyalty_raw"


# ---------------------------------------------------------------------------------------------- dlt pipeline
def _export_path(settings: Settings) -> str | None:
    """Export the schema YAML (`pipelines.schema_export`) only for the project's own warehouse (under
    `<working dir>/warehouse/`, as `make demo` and a deployment use it); test and benchmark warehouses elsewhere
    must not rewrite the committed file."""
    if not settings.export_schema_path:
        return None
    cwd = Path.cwd().resolve()
    try:
        settings.warehouse_file.resolve().relative_to(cwd / "warehouse")
    except ValueError:
        return None
    path = Path(settings.export_schema_path)
    return str(path if path.is_absolute() else cwd / path)


def make_pipeline(settings: Settings, conn: duckdb.DuckDBPyConnection, wh: Warehouse | None = None,
                  name: str = PIPELINE_NAME, dataset: str = DATASET, tag_loads: bool = False) -> Any:
    """The dlt pipeline into the warehouse (`Warehouse.destination`: on the file, the run's own DuckDB connection,
    so bookkeeping, dbt and dlt share one writer), with its working dir in `Warehouse.pipelines_dir`. Packages a
    crashed run left behind are aborted first (`abort_packages`, which also restores the pipeline's local state and
    schema to before them): they hold records whose customers were never marked done in `_customer_sync_state`
    (the bookkeeping commits only after a load returns; the shards' merge step forgets shard rows only after its
    load too), so this run fetches them again. They cannot be finished instead: a run killed inside its load has
    its copy jobs into the in-memory staging done and its merge not, and that staging died with the process, so
    dlt's retry of the merge fails ("... loyalty_raw_staging ... does not exist") on this and every later run
    (tests/test_interrupted_load.py). A shard has its own pipeline and raw dataset, the shards' merge step its own
    pipeline (pipelines/shards.py); `tag_loads`: every row gets dlt's `_dlt_load_id` (a shard's rows, which the
    merge step takes load by load). Extract and normalize need no connection; every later load names the
    connection it is to use (`load`)."""
    import dlt

    if tag_loads:  # scoped to this pipeline's name: dlt reads `<pipeline>.normalize...` before `normalize...`
        dlt.config[f"{name}.normalize.parquet_normalizer.add_dlt_load_id"] = True
    wh = wh or open_warehouse(settings)
    pipeline = dlt.pipeline(
        pipeline_name=name,
        pipelines_dir=str(wh.pipelines_dir),
        destination=wh.destination(conn),
        dataset_name=dataset,
    )
    if pipeline.has_pending_data:
        log.warning("aborting the load packages an interrupted run left; their customers are fetched again")
        pipeline.abort_packages()
    return pipeline


def load(pipeline: Any, writer: WarehouseWriter, conn: duckdb.DuckDBPyConnection) -> Any:
    """dlt's load of the normalized packages into the warehouse on `conn`, the writer's connection of the current
    hold (the one the pipeline was made with may have been closed since)."""
    return pipeline.load(destination=writer.warehouse.destination(conn), raise_on_failed_jobs=True)


def _schema(pipeline: Any) -> Any:
    import dlt

    if SCHEMA_NAME in pipeline.schema_names:
        return pipeline.schemas[SCHEMA_NAME]
    return dlt.Schema(SCHEMA_NAME)


# ---------------------------------------------------------------------------------------------- loading
class SourceRun:
    """One source within one run: its API client (one login, one limiter) and counters."""

    def __init__(self, settings: Settings, source: str, report: RunReport, progress: RunProgress | None,
                 pipeline: Any, pool: ExtractPool | None = None, shard: Shard | None = None) -> None:
        self.settings = settings
        self.source = source
        self.spec = registry.get(source)
        self.cfg = settings.source(source)
        self.report = report
        self.srep = report.sources.setdefault(source, SourceReport())
        self.progress = progress
        self.pipeline = pipeline
        self.stats = HttpStats(on_update=(lambda r, t, q: progress.update(source, requests=r, retries=t, http_429=q))
                               if progress else None)
        self.pool = pool
        self.api = credentials.make_api(self.spec, self.cfg, self.stats, pool.slots.get(source) if pool else None,
                                        (shard.k, shard.n) if shard else None)
        self.api.check()
        self.issues: list[Issue] = []   # run-level issues found here (a credential refused), for the runs row
        for name, why in getattr(self.api, "unusable_credentials", dict)().items():
            self.srep.warnings.append(f"credential {name} unusable, its customers fail this run: {why}")
            self.issues.append(Issue(source, None, credentials.UNAVAILABLE, f"credential {name}: {why}"))

    def close(self) -> None:
        self.api.close()
        _add_counts(self.srep, self.stats)
        self.stats.requests = self.stats.retries = self.stats.http_429 = 0
        self.stats.by_credential = {}

    def job(self, feed: "TaskFeed", max_customers: int, max_records: int) -> ExtractJob:
        job = ExtractJob(
            source=self.source, run_id=self.report.run_id, tasks=[],
            types=ColumnTypes.from_dlt_schema(_schema(self.pipeline)),
            concurrency=credentials.total_concurrency(self.cfg), lanes=credentials.lanes(self.cfg),
            batch_rows=self.settings.batch_rows, stats=self.stats, progress=self.progress, pool=self.pool,
        )
        job.tasks = feed.take(job, max_customers, max_records)
        job.feed = feed
        return job

    def commit(self, conn: duckdb.DuckDBPyConnection, job: ExtractJob, end: dt.datetime | None,
               update_customer_state: bool) -> None:
        state.commit(conn, run_id=self.report.run_id, source=self.source, window_end=end,
                     succeeded=job.succeeded, failed=job.failed, issues=job.issues,
                     update_customer_state=update_customer_state)
        self.srep.customers_done += len(job.succeeded)
        self.srep.customers_failed += len(job.failed)
        self.srep.failed_customers.extend(job.failed)
        self.srep.records += job.records_fetched


class TaskFeed:
    """A source's remaining (customer, window) tasks, handed out round by round. A round takes customers until it
    has `max_customers` of them or has fetched `max_records` records, so the memory of a round (the load package,
    DuckDB's merge) stays bounded whatever the number of records per customer."""

    def __init__(self, tasks: Iterable[tuple[str, Window]]) -> None:
        self._queue = deque(tasks)
        # chunks a worker pool already started for the NEXT round while this one loads (`workers.ExtractPool`)
        self.carried: dict[Any, list[tuple[str, Window]]] = {}

    @property
    def exhausted(self) -> bool:
        return not self._queue and not self.carried

    def take_ahead(self, n: int) -> list[tuple[str, Window]]:
        """Up to `n` tasks with something to fetch, for the next round (stops at an empty window, which the next
        round's `take` records as done)."""
        out: list[tuple[str, Window]] = []
        while self._queue and len(out) < n and not self._queue[0][1].empty:
            out.append(self._queue.popleft())
        return out

    def take(self, job: ExtractJob, max_customers: int, max_records: int) -> Iterator[tuple[str, Window]]:
        taken = 0
        while self._queue and taken < max_customers and job.records_fetched < max_records:
            customer_id, window = self._queue.popleft()
            taken += 1
            if window.empty:  # nothing to fetch: already loaded up to this end
                job.succeed(customer_id, 0)
                continue
            yield customer_id, window


def load_rounds(pipeline: Any, report: RunReport, plans: list[tuple[SourceRun, list[tuple[str, Window]],
                                                                   dt.datetime | None]],
                settings: Settings, update_customer_state: bool, writer: WarehouseWriter) -> None:
    """Load every source's customers in rounds (see `TaskFeed`). In each round both APIs are fetched side by side
    (parallelized dlt resources) into ONE load package: one extract, one normalize, one load (dlt's fixed cost per
    step is paid once), then each source's bookkeeping is committed. Only the load and the bookkeeping hold the
    warehouse (`writer`); extract and normalize write to dlt's working directory alone."""
    import dlt

    feeds = [(srun, TaskFeed(tasks), end) for srun, tasks, end in plans]
    r = 0
    while any(not feed.exhausted for _, feed, _ in feeds):
        r += 1
        started = time.monotonic()
        jobs = [(srun, srun.job(feed, settings.chunk_customers, settings.round_records), end)
                for srun, feed, end in feeds if not feed.exhausted]
        # each source's own @dlt.source function gives its resource; the resources go into ONE source (one schema,
        # one package) so that dlt extracts them side by side (a list of sources would be extracted one by one)
        resources = [r for srun, job, _ in jobs
                     for r in srun.spec.source(extraction=Extraction(srun.api, job)).resources.values()]
        schema = _schema(pipeline)
        combined = dlt.source(name=SCHEMA_NAME, max_table_nesting=0)(lambda: resources)()
        pipeline.extract(combined, schema=schema, loader_file_format="parquet")
        extracted = time.monotonic()
        maybe_crash("normalize")
        info = pipeline.normalize()
        normalized = time.monotonic()
        for table, n in (info.row_counts if info else {}).items():
            if not table.startswith("_dlt"):
                report.rows_by_table[table] = report.rows_by_table.get(table, 0) + n
        with writer.hold() as conn:
            maybe_crash("load")
            held = time.monotonic()
            load(pipeline, writer, conn)
            loaded = time.monotonic()
            export_to = _export_path(settings)
            if export_to and SCHEMA_NAME in pipeline.schema_names:  # not dlt's export: its order varies run to run
                export_schema(pipeline.schemas[SCHEMA_NAME], export_to)
            maybe_crash("state")
            for srun, job, end in jobs:
                srun.commit(conn, job, end, update_customer_state)
        for srun, job, end in jobs:
            log.info("round committed", extra={"fields": {
                "round": r, "source": srun.source, "customers": len(job.succeeded) + len(job.failed),
                "failed": len(job.failed), "records": job.records_fetched, "issues": len(job.issues),
                "seconds": round(time.monotonic() - started, 2), "extract_s": round(extracted - started, 2),
                "normalize_s": round(normalized - extracted, 2), "wait_writer_s": round(held - normalized, 2),
                "load_s": round(loaded - held, 2)}})


def run_window(settings: Settings, source: str, start: dt.datetime, end: dt.datetime, customers: Sequence[str],
               report: RunReport, update_customer_state: bool = False,
               conn: duckdb.DuckDBPyConnection | None = None, progress: RunProgress | None = None,
               pool: ExtractPool | None = None) -> RunReport:
    """Load the fixed window `[start, end)` for `customers` (backfill). The caller holds the run lock; without
    `conn` a connection to the same warehouse is opened in this process (DuckDB shares the instance)."""
    own = conn is None
    wh = open_warehouse(settings)
    conn = conn or wh.connect()
    try:
        state.ensure_tables(conn)
        pipeline = make_pipeline(settings, conn, wh)
        srun = SourceRun(settings, source, report, progress, pipeline, pool)
        try:
            window = Window(utc(start), utc(end))
            # a backfill keeps the file from start to end (its caller owns the connection)
            load_rounds(pipeline, report, [(srun, [(c, window) for c in customers], utc(end))], settings,
                        update_customer_state, WarehouseWriter(wh, conn=conn))
        finally:
            srun.close()
        srep = report.sources[source]
        srep.window_start = min(srep.window_start or window.start, window.start)
        srep.window_end = max(srep.window_end or window.end, window.end)
    finally:
        if own:
            conn.close()
    return report


def _add_counts(srep: SourceReport, stats: HttpStats) -> None:
    """A source's request counters into its report: totals, and each credential's when it has several."""
    srep.requests += stats.requests
    srep.retries += stats.retries
    srep.http_429 += stats.http_429
    for name, (requests, retries, http_429, logins) in stats.by_credential.items():
        mine = srep.credentials.setdefault(name, {"requests": 0, "retries": 0, "http_429": 0, "logins": 0})
        mine["requests"] += requests
        mine["retries"] += retries
        mine["http_429"] += http_429
        mine["logins"] += logins


def _tasks(conn: duckdb.DuckDBPyConnection, source: str, ids: Iterable[str], end: dt.datetime,
           lookback: dt.timedelta, initial_start: dt.datetime) -> list[tuple[str, Window]]:
    last = state.last_success_ends(conn, source)
    windows: dict[Any, Window] = {}  # customers sharing a last end share one Window object
    out = []
    for cid in ids:
        prev = last.get(cid)
        w = windows.get(prev)
        if w is None:
            w = windows[prev] = customer_window(prev, end, lookback, initial_start)
        out.append((cid, w))
    return out


def _load_tables(pipeline: Any, writer: WarehouseWriter, conn: duckdb.DuckDBPyConnection, report: RunReport,
                 tables: list[tuple[str, list[dict], dict]]) -> None:
    """Load raw tables a source's change discovery read (rows + dlt hints) as one load package."""
    import dlt

    @dlt.resource(name="discovered")
    def discovered() -> Iterator[Any]:
        for table, rows, hints in tables:
            # a variant per table with its own complete hints (resource-level hints would leak between tables)
            yield dlt.mark.with_hints(rows, dlt.mark.make_hints(table_name=table, **hints), create_table_variant=True)

    pipeline.extract(dlt.source(name=SCHEMA_NAME, max_table_nesting=0)(lambda: [discovered])(), schema=_schema(pipeline))
    info = pipeline.normalize()
    for table, n in (info.row_counts if info else {}).items():
        if not table.startswith("_dlt"):
            report.rows_by_table[table] = report.rows_by_table.get(table, 0) + n
    load(pipeline, writer, conn)


def _plan_source(settings: Settings, source: str, writer: WarehouseWriter, conn: duckdb.DuckDBPyConnection,
                 pipeline: Any, report: RunReport, pool: ExtractPool | None, customers_file: str | None,
                 end: dt.datetime, full: bool, shard: Shard | None = None) -> tuple[changes.Plan, list[Issue]]:
    """The source's customers and their windows; with `customers = "api"` or `selection = "changed"` its API is
    asked first (roster, change discovery: `pipelines/changes.py`). A shard reads the same tenant-wide lists and
    listings and keeps its own customers (pipelines/shards.py)."""
    cfg = settings.source(source)
    srep = report.sources.setdefault(source, SourceReport())
    api, stats = None, HttpStats()
    spec = registry.get(source)
    if (not customers_file and cfg.customers == changes.API_CUSTOMERS) or (
            not full and cfg.selection == "changed") or spec.observe_in_all_mode:
        api = credentials.make_api(spec, cfg, stats, pool.slots.get(source) if pool else None,
                                   (shard.k, shard.n) if shard else None)
    try:
        listed = changes.customer_list(api, cfg, conn, DATASET, customers_file, report.run_id, srep)
        if shard is not None:
            listed = shards.narrow_list(listed, shard)
        tasks = _tasks(conn, source, listed.ids, end, cfg.lookback_duration, cfg.initial_start)
        plan = changes.plan(api, cfg, conn, DATASET, listed, tasks, end, srep, report.run_id, full,
                            lambda tables: _load_tables(pipeline, writer, conn, report, tables),
                            spec.observe_in_all_mode, key=shard.discovery_key(source) if shard else None)
        if shard is not None:
            plan = shards.narrow_plan(plan, shard, cfg, full)
    finally:
        if api is not None:
            api.close()
        _add_counts(srep, stats)
    srep.window_start = min((w.start for _, w in plan.tasks), default=None)
    srep.window_end = end
    srep.customers_total = len(plan.listed.ids)
    srep.customers_skipped = listed.skipped
    return plan, listed.issues(source) + plan.issues


def lock_warehouse(settings: Settings, scope: str, report: RunReport, print_summary: bool
                   ) -> tuple[Warehouse, Any] | None:
    """The warehouse and its lock of `scope`, acquired; None when refused (another run holds it, the warehouse
    cannot be reached): then `report` says why, finished (and printed)."""
    try:
        wh = open_warehouse(settings)
        return wh, wh.lock(scope).acquire()
    except (RunLocked, ConfigError, WarehouseUnavailable) as exc:
        report.error = redact(str(exc))
        report.finish()
        if print_summary:
            print(render_summary(report), flush=True)
        return None


def run(settings: Settings, sources: Sequence[str], customers_file: str | None = None,
        until: dt.datetime | str | None = None, models: bool = True, command: str = "run",
        print_summary: bool = True, full: bool = False, shard: Shard | None = None) -> RunReport:
    """The nightly run. With `shard`: only that shard's customers, into its own dataset, no marts (`loyalty-etl
    merge` builds them once every shard has landed: pipelines/shards.py)."""
    report = RunReport(command=command)
    if shard is not None:
        report.extra["shard"] = shard.label
    locked = lock_warehouse(settings, shard.lock_scope if shard else "run", report, print_summary)
    if locked is None:
        return report
    wh, lock = locked
    writer: WarehouseWriter | None = None
    progress: RunProgress | None = None
    pool: ExtractPool | None = None
    pre_issues: list[Issue] = []
    try:
        pool = start_pool(settings, sources)  # first: the workers fork before this process starts any thread
        writer = WarehouseWriter(wh)
        now = pendulum.now("UTC")
        plans = []
        selections: dict[str, changes.Plan] = {}
        with writer.hold() as conn:
            state.ensure_tables(conn)
            pipeline = (make_pipeline(settings, conn, wh, shard.pipeline_name, shard.dataset, tag_loads=True)
                        if shard else make_pipeline(settings, conn, wh))
            for source in sources:
                end = window_end(now, settings.source(source).safety_lag_duration,
                                 utc(until) if until is not None else None)
                selections[source], issues = _plan_source(settings, source, writer, conn, pipeline, report, pool,
                                                          customers_file, end, full, shard)
                pre_issues.extend(issues)
                plans.append((source, selections[source].tasks, end))
        progress = RunProgress({s: len(t) for s, t, _ in plans})
        errors = []
        sruns = []
        for source, tasks, end in plans:
            try:
                sruns.append((SourceRun(settings, source, report, progress, pipeline, pool, shard), tasks, end))
                pre_issues.extend(sruns[-1][0].issues)
            except SourceUnavailable as exc:
                errors.append(f"{source}: {exc}")
                pre_issues.append(Issue(source, None, "source_unavailable", str(exc)))
        try:
            load_rounds(pipeline, report, sruns, settings, update_customer_state=True, writer=writer)
            with writer.hold() as conn:
                for srun, _, _ in sruns:  # every round of the source committed: its discovery window counts as read
                    changes.commit(conn, srun.source, selections[srun.source], report.run_id)
        except SourceUnavailable as exc:
            errors.append(str(exc))
            pre_issues.append(Issue("", None, "source_unavailable", str(exc)))
        except Exception as exc:
            cause = _root_cause(exc, SourceUnavailable)  # raised inside extraction, wrapped by dlt
            if cause is None:
                raise
            errors.append(str(cause))
            pre_issues.append(Issue("", None, "source_unavailable", str(cause)))
        finally:
            for srun, _, _ in sruns:
                srun.close()
        if errors:
            report.error = "; ".join(errors)
        if models and not report.error and shard is None:
            report.models = _run_models(settings, writer, merge_lock=wh.kind == "ducklake")
    except (ConfigError, WarehouseUnavailable, duckdb.Error, OSError) as exc:
        report.error = f"{type(exc).__name__}: {exc}"
        log.error("run failed: %s", redact(report.error))
    except Exception as exc:  # noqa: BLE001 - the runs row and the alert must still be written
        # dlt wraps the warehouse's own error in PipelineStepFailed (a load whose lake catalog went away, a file
        # that could not be written): that error is the run's, one clear line; the traceback only at debug level
        cause = _root_cause(exc, (duckdb.Error, WarehouseUnavailable))
        if cause is not None:
            report.error = f"{type(cause).__name__}: {cause}"
            log.error("run failed: %s", redact(report.error))
            log.debug("run failed", exc_info=True)
        else:
            report.error = f"{type(exc).__name__}: {exc}"
            log.exception("run failed")
    finally:
        if pool is not None:
            pool.close()
        if progress is not None:
            progress.close()
        report.error = redact(report.error) if report.error else None
        report.finish()
        if writer is not None:
            try:
                with writer.hold() as conn:
                    state.write_run(conn, report, pre_issues)
            except Exception as exc:  # noqa: BLE001
                log.error("could not write the runs row: %s", redact(str(exc)))
            writer.close()
            log.info("warehouse writer released", extra={"fields": {
                "holds": writer.holds, "held_s": round(writer.held_s, 2), "run_s": round(report.duration_s or 0, 2)}})
        lock.release()
    if report.exit_code != 0 or report.warnings:
        _alert(settings, report)
    if print_summary:
        print(render_summary(report), flush=True)
    return report


def _root_cause(exc: BaseException, kind: type | tuple[type, ...]) -> BaseException | None:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kind):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return None


MERGE_LOCK_WAIT_S = 600.0


def _run_models(settings: Settings | None, writer: WarehouseWriter | None = None, *, wh: Warehouse | None = None,
                merge_lock: bool = False) -> str:
    """dbt build of the marts on the run's warehouse (`writer`'s, else `wh`, else the settings'). With `writer`,
    dbt is imported and the project parsed (no database opened) before the warehouse is taken, and the build holds
    it throughout: no reader of the file sees some marts rebuilt and others not yet (each one is replaced in one
    transaction: tests/test_reader_availability.py). `merge_lock`: first take the lake's "merge" lock, which
    `loyalty-etl models` and `merge` hold for their builds, so two builds never MERGE into one mart at once
    (DuckLake would fail one of them with a conflict). An unsharded run holds only "run"; on the file every scope
    is that one lock. Held elsewhere: wait for it (the other build may predate this run's rows), up to
    MERGE_LOCK_WAIT_S, then leave the marts to the next build."""
    try:
        from pipelines.models import parse_manifest, run_dbt
    except ImportError:
        return "skipped"
    wh = writer.warehouse if writer is not None else wh or open_warehouse(settings)
    lock = None
    if merge_lock:
        deadline = time.monotonic() + MERGE_LOCK_WAIT_S
        while lock is None:
            try:
                lock = wh.lock("merge").acquire()
            except RunLocked as exc:
                if time.monotonic() >= deadline:
                    log.warning("marts not built: %s", redact(str(exc)))
                    return "skipped"
                time.sleep(2)
            # the catalog cannot be reached (WarehouseUnavailable): raised, the run fails (exit 1) and says why
    try:
        manifest = parse_manifest(wh) if writer is not None else None
        # the file: in this process, sharing the run's open writer (pipelines/models.py); a lake: dbt attaches it
        with writer.hold() if writer is not None else contextlib.nullcontext():
            maybe_crash("models")
            _reachable(wh)
            code = run_dbt(wh, quiet=True, manifest=manifest)
            if code == 2:   # dbt could not run at all: because the lake's catalog went away meanwhile?
                _reachable(wh)
            return "ok" if code == 0 else "failed"
    except (duckdb.Error, WarehouseUnavailable):
        # the warehouse could not be taken back, or a lake's catalog cannot be reached: the run fails (exit 1,
        # the `runs` row or the log says so) rather than ending "partial" as if only a model had failed
        raise
    except Exception as exc:  # noqa: BLE001 - a model failure must not hide the load's result
        log.error("dbt failed: %s", redact(str(exc)))
        return "failed"
    finally:
        if lock is not None:
            lock.release()


def _reachable(wh: Warehouse) -> None:
    """A lake's catalog answers, else `WarehouseUnavailable` naming it (no password). Asked before dbt starts, so a
    catalog that went away gives the run's one clear error instead of dbt's traceback; and after dbt could not
    run, to tell an outage (the run fails) from a failed build (marts "failed", exit 2). The file: nothing to ask."""
    if wh.kind != "ducklake":
        return
    from pipelines.lake import catalog_session

    catalog_session(wh.config).close()  # type: ignore[attr-defined]


def _alert(settings: Settings, report: RunReport) -> None:
    try:
        from pipelines.alerts import notify
    except ImportError:
        return
    notify(settings, report)
