"""A third source, written the way docs/extending.md says: one folder, registered by one line (here the entry point
in `../ledger_source-0.1.dist-info/entry_points.txt`, the way an installed package registers a source; in this
repository it would be a line in `pipelines/registry.py`).

The API: `GET /ledger?customer=<id>&from=<ISO instant>&to=<ISO instant>[&cursor=<opaque>]` with
`Authorization: Bearer <token>` answers `{"entries": [{"entry_id", "points", "booked_at"}], "next_cursor": ...}`,
entries with `from <= booked_at < to`, a page at a time until `next_cursor` is null (`paging.CursorPaginator`); 404
for an unknown customer.
The engine does the rest: customers in flight, retries, rate limit, worker processes, dlt, bookkeeping."""

from __future__ import annotations

import datetime as dt
from typing import Any, Optional, Sequence
from urllib.parse import quote_plus

import dlt
import pyarrow as pa
from dlt.common.configuration import configspec
from dlt.common.typing import TSecretStrValue

from pipelines.config import SourceConfiguration, SourceCredentials
from pipelines.errors import CustomerFailed, SourceUnavailable, failure_from_http
from pipelines.extraction import Extraction, source_resource
from pipelines.http import HttpClient, HttpError, StaticAuth, Steps, shared_limiter
from pipelines.paging import CursorPaginator, paginate
from pipelines.spec import SourceSpec
from pipelines.state import Issue
from pipelines.windows import Window

TABLE = "ledger_entries"


@configspec
class LedgerCredentials(SourceCredentials):
    token: TSecretStrValue = None


@configspec
class LedgerConfiguration(SourceConfiguration):
    """`[sources.ledger]`: the keys every source has, and the API token."""

    credentials: Optional[LedgerCredentials] = None


class LedgerApi:
    def __init__(self, settings: Any, stats: Any, token_slot: Any = None) -> None:
        token = settings.require_credentials("token").token
        self.client = HttpClient(
            settings.base_url, limiter=shared_limiter(("ledger", settings.base_url), settings.rate_limit),
            auth=StaticAuth({"Authorization": f"Bearer {token}"}), max_attempts=settings.max_attempts,
            backoff_base=settings.retry_backoff, timeout=settings.request_timeout, stats=stats, name="ledger")

    def check(self) -> None:
        try:
            self.client.request_json("GET", "/ping")
        except HttpError as exc:
            raise SourceUnavailable(f"ledger refused the token ({exc})") from None

    def close(self) -> None:
        self.client.close()

    def customer_steps(self, customer_id: str, window: Window) -> Steps:
        query = (f"customer={quote_plus(customer_id)}&from={quote_plus(window.start.isoformat())}"
                 f"&to={quote_plus(window.end.isoformat())}")
        entries = yield from paginate(lambda q: self._page(customer_id, q), query, CursorPaginator())
        return entries, ()

    def _page(self, customer_id: str, query: str) -> Steps:
        try:
            _, body = yield from self.client.request_steps("GET", "/ledger", query=query)
        except HttpError as exc:
            if exc.status == 404:
                raise CustomerFailed("not_found", f"ledger: customer {customer_id} not found") from None
            raise failure_from_http(exc, "ledger") from None
        return body["entries"], body


class EntryBatch:
    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.rows: list[tuple[str, str, Any, Any]] = []
        self.issues: list[Issue] = []

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, customer_id: str, window: Window, records: list[Any]) -> None:
        for rec in records:
            try:
                booked = dt.datetime.fromisoformat(rec["booked_at"])
            except (KeyError, TypeError, ValueError):
                self.issues.append(Issue("ledger", customer_id, "bad_record", "entry without a valid booked_at",
                                         str(rec)[:200]))
                continue
            self.rows.append((str(rec["entry_id"]), customer_id, rec.get("points"), booked))

    def build(self) -> tuple[list[tuple[str, pa.Table]], list[Issue]]:
        if not self.rows:
            return [], self.issues
        ids, customers, points, booked = zip(*self.rows)
        table = pa.table({
            "entry_id": pa.array(ids, pa.string()), "customer_id": pa.array(customers, pa.string()),
            "points": pa.array(points, pa.float64()), "booked_at": pa.array(booked, pa.timestamp("us", tz="UTC")),
            "_loaded_run_id": pa.array([self.run_id] * len(ids), pa.string())})
        return [(TABLE, table)], self.issues


def table_hints(table: str) -> dict[str, Any]:
    return {"write_disposition": "merge", "primary_key": "entry_id",
            "columns": {"entry_id": {"data_type": "text", "nullable": False}}}


@dlt.source(name="ledger", max_table_nesting=0)
def ledger_source(customer_ids: Sequence[str] | None = None, start: Any = None, end: Any = None,
                  extraction: Extraction | None = None) -> Any:
    """Ledger entries of `customer_ids` booked in [`start`, `end`), settings from `[sources.ledger]`."""
    return source_resource(SPEC, customer_ids, start, end, extraction)


SPEC = SourceSpec(
    name="ledger",
    make_api=LedgerApi,
    new_batch=lambda api, job: EntryBatch(job.run_id),
    table_hints=table_hints,
    resource_name=TABLE,
    source=ledger_source,
    configspec=LedgerConfiguration,
)
