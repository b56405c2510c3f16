"""The run report: what one run did, written as one row of `loyalty_raw.runs` and printed as a short summary.

Contract between the runner (fills it in) and operations (persists, prints, alerts). See docs/architecture.md.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import pendulum

from pipelines.logs import redact

EXIT_OK = 0          # all customers done
EXIT_FAILED = 1      # the run failed
EXIT_PARTIAL = 2     # finished, but some customers failed (listed)
MAX_LISTED_FAILURES = 100


@dataclass
class SourceReport:
    window_start: pendulum.DateTime | None = None   # earliest window start among this run's customers
    window_end: pendulum.DateTime | None = None     # the run's window end (until)
    customers_total: int = 0
    customers_done: int = 0
    customers_failed: int = 0
    customers_skipped: int = 0                       # blank / duplicate ids in the customer list
    failed_customers: list[str] = field(default_factory=list)
    requests: int = 0
    retries: int = 0
    http_429: int = 0
    records: int = 0
    # issue 17: the customer list from the API and change-driven selection (docs/operations.md)
    selection: str = "all"                           # all | changed | all (--all)
    customers_by_discovery: int = 0                  # loaded because discovery named them
    customers_by_sweep: int = 0                      # loaded by tonight's share of the rolling sweep
    customers_new: int = 0                           # never loaded before (their first load counts as a sweep)
    customers_retried: int = 0                       # their last attempt failed
    customers_not_due: int = 0                       # listed, but nothing selected them tonight
    discovery_requests: int = 0                      # requests spent reading the listings
    discovery_window_start: pendulum.DateTime | None = None
    discovery_window_end: pendulum.DateTime | None = None
    discovery_error: str | None = None               # a listing not read to its end: the window is read again
    roster_requests: int = 0
    roster_new: int = 0
    roster_error: str | None = None
    warnings: list[str] = field(default_factory=list)  # e.g. events_silent: alerted even when the run is OK
    # several credentials (pipelines/credentials.py): name -> {requests, retries, http_429, logins}
    credentials: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass
class RunReport:
    command: str = "run"                                         # run | backfill | demo
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    started_at: pendulum.DateTime = field(default_factory=lambda: pendulum.now("UTC"))
    ended_at: pendulum.DateTime | None = None
    sources: dict[str, SourceReport] = field(default_factory=dict)
    rows_by_table: dict[str, int] = field(default_factory=dict)  # rows written per raw table in this run
    models: str = "skipped"                                      # ok | failed | skipped
    exit_code: int = EXIT_OK
    error: str | None = None                                     # redacted message when the run failed
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        end = self.ended_at or pendulum.now("UTC")
        return (end - self.started_at).total_seconds()

    def finish(self) -> "RunReport":
        self.ended_at = pendulum.now("UTC")
        if self.error:
            self.exit_code = EXIT_FAILED
        elif (any(s.customers_failed or s.discovery_error or s.roster_error for s in self.sources.values())
              or self.models == "failed"):
            self.exit_code = EXIT_PARTIAL
        else:
            self.exit_code = EXIT_OK
        return self

    @property
    def warnings(self) -> list[str]:
        """Every source's warnings as `source: warning` (they alert even when the run ended OK)."""
        return [f"{name}: {w}" for name, s in self.sources.items() for w in s.warnings]

    @property
    def status(self) -> str:
        return {EXIT_OK: "ok", EXIT_PARTIAL: "partial"}.get(self.exit_code, "failed")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view (instants as ISO 8601 strings) for alerts and log shippers; secrets redacted."""
        def iso(value: pendulum.DateTime | None) -> str | None:
            return value.isoformat() if value is not None else None

        return {
            "run_id": self.run_id,
            "command": self.command,
            "status": self.status,
            "exit_code": self.exit_code,
            "started_at": iso(self.started_at),
            "ended_at": iso(self.ended_at),
            "duration_s": round(self.duration_s, 3),
            "sources": {
                name: {**{k: v for k, v in vars(s).items() if not k.endswith(("window_start", "window_end"))},
                       "window_start": iso(s.window_start), "window_end": iso(s.window_end),
                       "discovery_window_start": iso(s.discovery_window_start),
                       "discovery_window_end": iso(s.discovery_window_end),
                       # the full list lives in `_customer_sync_state` / `sync_issues`; keep alerts and rows small
                       "failed_customers": s.failed_customers[:MAX_LISTED_FAILURES]}
                for name, s in self.sources.items()
            },
            "rows_by_table": dict(self.rows_by_table),
            "models": self.models,
            "error": redact(self.error) if self.error else None,
            "extra": dict(self.extra),
        }


def render_summary(report: RunReport) -> str:
    """A short human summary printed at the end of every run."""
    warned = f" with {len(report.warnings)} warning(s)" if report.warnings else ""
    lines = [f"run {report.run_id} ({report.command}): {report.status.upper()}{warned} in {report.duration_s:.1f}s, "
             f"exit code {report.exit_code}"]
    for name, s in report.sources.items():
        window = f"{s.window_start} .. {s.window_end}" if s.window_start else "-"
        lines.append(
            f"  {name}: {s.customers_done}/{s.customers_total} customers done, {s.customers_failed} failed, "
            f"{s.customers_skipped} skipped; {s.records:,} records; {s.requests:,} requests "
            f"({s.retries} retries, {s.http_429} x429); window {window}"
        )
        if s.credentials:
            lines.append("    credentials: " + "; ".join(
                f"{cname} {c['requests']:,} requests ({c['retries']} retries, {c['http_429']} x429)"
                for cname, c in sorted(s.credentials.items())))
        if s.selection != "all" or s.roster_requests:
            lines.append(
                f"    selection {s.selection}: {s.customers_by_discovery:,} by discovery, {s.customers_by_sweep:,} by "
                f"sweep, {s.customers_new:,} new, {s.customers_retried:,} retried, {s.customers_not_due:,} not due; "
                f"discovery {s.discovery_requests:,} requests, roster {s.roster_requests:,} requests "
                f"({s.roster_new:,} new customers)")
        for what, error in (("change discovery", s.discovery_error), ("customer list", s.roster_error)):
            if error:
                lines.append(f"    {what} INCOMPLETE, read again next run: {error}")
        for warning in s.warnings:
            lines.append(f"    WARNING {warning}")
        if s.failed_customers:
            shown = ", ".join(s.failed_customers[:10])
            more = f" and {len(s.failed_customers) - 10} more" if len(s.failed_customers) > 10 else ""
            lines.append(f"    failed: {shown}{more}")
    for table, n in sorted(report.rows_by_table.items()):
        lines.append(f"  {table}: {n:,} rows written")
    lines.append(f"  models: {report.models}")
    if report.error:
        lines.append(f"  error: {report.error}")
    return redact("\n".join(lines))
