"""What a nightly run loads for a source beyond "every listed customer" (issue 17), the engine's side:

- the customer list from the source's API (`customers = "api"`): the API client's `sync_roster`;
- `selection = "changed"`: the API client's `discover(conn, schema, window)` names the customers with something new
  in their window and gives the listings it read as raw tables; the run loads those customers, the new ones, the
  ones whose last attempt failed and tonight's share of the rolling sweep (`pipelines/sweep.py`). `--all` (or
  `selection = "all"`) loads everyone;
- the discovery window's end, committed only when discovery read every listing to its end and the run's loads
  committed.

A source offers these by giving its API client the two methods; nothing here names a source.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Callable

import duckdb

from pipelines import state
from pipelines.config import ConfigError
from pipelines.customers import CustomerList, load_customers
from pipelines.errors import SourceUnavailable
from pipelines.logs import get_logger
from pipelines.report import SourceReport
from pipelines.state import Issue
from pipelines.sweep import select_customers
from pipelines.windows import Window, customer_window

log = get_logger("changes")

API_CUSTOMERS = "api"


@dataclass
class Plan:
    """One source's part of a run: its tasks and what to commit once they loaded."""
    tasks: list[tuple[str, Window]]
    listed: CustomerList
    discovery_end: dt.datetime | None = None    # commit as the new discovery end after the loads (None: do not)
    discovery: Any = None                       # the source's change discovery (its `commit(conn)`, if any)
    issues: list[Issue] = field(default_factory=list)   # what discovery reports (sync_issues; warnings alert)
    key: str | None = None                      # its discovery window's key (a shard's own: shards.Shard)


def customer_list(api: Any, cfg: Any, conn: duckdb.DuckDBPyConnection, schema: str, customers_file: str | None,
                  run_id: str, srep: SourceReport) -> CustomerList:
    """The source's customers: `--customers`, the configured CSV / `sql:` list, or the roster from its API."""
    if customers_file or cfg.customers != API_CUSTOMERS:
        return load_customers(customers_file or cfg.customers, conn)
    if not hasattr(api, "sync_roster"):
        raise ConfigError(f"[sources.{cfg.name}] customers = \"api\": this source has no customer list endpoint; "
                          "use a CSV file or \"sql: SELECT ...\"")
    roster = api.sync_roster(conn, schema, cfg.lookback_duration, run_id)
    srep.roster_requests += roster.requests
    if roster.error:
        srep.roster_error = roster.error
        if not roster.ids:
            raise SourceUnavailable(f"{cfg.name}: the customer list could not be read from the API and none is "
                                    f"stored yet ({roster.error})")
        log.error("roster not read (%s); using the %d customers stored", roster.error, len(roster.ids))
    srep.roster_new += len(roster.new)
    log.info("roster synced", extra={"fields": {"source": cfg.name, "customers": len(roster.ids),
                                                "new": len(roster.new), "requests": roster.requests}})
    return CustomerList(ids=roster.ids)


def plan(api: Any, cfg: Any, conn: duckdb.DuckDBPyConnection, schema: str, listed: CustomerList,
         tasks: list[tuple[str, Window]], until: dt.datetime, srep: SourceReport, run_id: str, full: bool,
         load_tables: Callable[[list[tuple[str, list[dict], dict]]], None], observe: bool = False,
         key: str | None = None) -> Plan:
    """Narrow `tasks` (every listed customer with its window) to what a `changed` run loads; `load_tables` loads the
    raw tables discovery read (table, rows, dlt hints) before the customers are chosen. `observe` (the source's
    `SourceSpec.observe_in_all_mode`): an `all` run still calls `api.observe` for its bookkeeping, list additions
    and issues, and narrows nothing. `key`: the discovery window's key in `_discovery_state` when it is not the
    source's own (a shard reads and commits its own window: pipelines/shards.py)."""
    mode = "all" if full else cfg.selection
    srep.selection = "all (--all)" if full and cfg.selection == "changed" else mode
    if mode == "all":
        if not (observe and api is not None and hasattr(api, "observe")):
            return Plan(tasks, listed)
        seen = api.observe(conn, schema)
        listed, tasks = _with_announced(seen, conn, cfg, listed, tasks, state.last_success_ends(conn, cfg.name),
                                        until)
        # nothing tonight depends on it: a bookkeeping error is a warning, not a partial run
        issues = _report_issues(seen, srep) + [Issue(cfg.name, None, "discovery_error", e) for e in seen.errors]
        srep.warnings += [f"discovery_error: {e}" for e in seen.errors]
        return Plan(tasks, listed, None, seen if seen.complete else None, issues)
    if not hasattr(api, "discover"):
        raise ConfigError(f"[sources.{cfg.name}] selection = \"changed\": this source has no change discovery yet")
    key = key or cfg.name
    last_end = state.discovery_end(conn, key)
    window = customer_window(last_end, until, cfg.lookback_duration, cfg.initial_start)
    found = api.discover(conn, schema, window)
    srep.discovery_window_start, srep.discovery_window_end = window.start, window.end
    srep.discovery_requests += found.requests
    if found.errors:
        srep.discovery_error = "; ".join(found.errors)
        log.error("change discovery incomplete: %s (window read again next run)", srep.discovery_error)
    tables = found.tables()
    if tables:
        load_tables(tables)
    last_success = state.last_success_ends(conn, cfg.name)
    listed, tasks = _with_announced(found, conn, cfg, listed, tasks, last_success, until)
    issues = _report_issues(found, srep)
    windows = dict(tasks)
    chosen = select_customers(listed.ids, last_success, state.failing_customers(conn, cfg.name),
                              found.named(windows, last_success), until, cfg.sweep_days, api.timezone)
    srep.customers_by_discovery += chosen.by_discovery
    srep.customers_by_sweep += chosen.by_sweep
    srep.customers_new += chosen.new
    srep.customers_retried += chosen.retry
    srep.customers_not_due += len(listed.ids) - len(chosen.ids)
    keep = set(chosen.ids)
    log.info("customers selected", extra={"fields": {
        "source": cfg.name, "discovery": chosen.by_discovery, "sweep": chosen.by_sweep, "new": chosen.new,
        "retry": chosen.retry, "not_due": srep.customers_not_due, "discovery_requests": found.requests,
        "discovery_complete": found.complete}})
    return Plan([t for t in tasks if t[0] in keep], listed, window.end if found.complete else None, found, issues, key)


def _with_announced(found: Any, conn: duckdb.DuckDBPyConnection, cfg: Any, listed: CustomerList,
                    tasks: list[tuple[str, Window]], last_success: dict[str, dt.datetime], until: dt.datetime
                    ) -> tuple[CustomerList, list[tuple[str, Window]]]:
    """A discovery that learns of customers the list lacks (Capillary's customerAdded events) offers
    `listed(ids, conn)`: the list with them added. They join the list and get their window like any listed one."""
    if not hasattr(found, "listed"):
        return listed, tasks
    ids = found.listed(listed.ids, conn)
    extra = ids[len(listed.ids):]
    if not extra:
        return listed, tasks
    log.info("customers announced by discovery joined the list", extra={"fields": {
        "source": cfg.name, "customers": len(extra)}})
    return (CustomerList(ids=ids, blank=listed.blank, duplicates=listed.duplicates),
            tasks + [(c, customer_window(last_success.get(c), until, cfg.lookback_duration, cfg.initial_start))
                     for c in extra])


def _report_issues(found: Any, srep: SourceReport) -> list[Issue]:
    """A discovery's `issues` (if it has any) go to sync_issues; their messages to the run report's warnings,
    which alert even when the run is otherwise OK (a webhook gone silent must not turn quietly into stale data)."""
    issues = list(getattr(found, "issues", None) or [])
    srep.warnings += [f"{i.code}: {i.message}" for i in issues]
    for i in issues:
        log.warning("change discovery: %s: %s", i.code, i.message)
    return issues


def commit(conn: duckdb.DuckDBPyConnection, source: str, plan_: Plan, run_id: str) -> None:
    """After the run's loads committed: the discovery window counts as read (and a discovery with its own
    bookkeeping, such as the Capillary events it used, commits it)."""
    if plan_.discovery_end is not None:
        state.set_discovery_end(conn, plan_.key or source, plan_.discovery_end, run_id)
    if plan_.discovery is not None and hasattr(plan_.discovery, "commit"):
        plan_.discovery.commit(conn)

