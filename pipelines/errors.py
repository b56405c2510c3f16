"""The exceptions the engine (extraction, runner, workers) and the sources (their API clients) share.

This module imports nothing from the project, so both sides can import it without importing each other: a source's
`helpers.py` raises these, the engine catches them."""

from __future__ import annotations

from typing import Any

import orjson


class CustomerFailed(Exception):
    """This customer could not be loaded this time (recorded; the run goes on; the next run retries it)."""

    def __init__(self, code: str, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.detail = detail


class SourceUnavailable(RuntimeError):
    """The whole source cannot be used (login refused, base URL wrong): the run fails with this message."""


def failure_from_http(exc: Any, what: str) -> CustomerFailed:
    """The customer's failure for an `http.HttpError` the retries did not cure: `retries_exhausted` when the
    attempts ran out, else `http_error` with the answer's body as detail."""
    if exc.exhausted:
        return CustomerFailed("retries_exhausted", f"{what}: {exc}")
    return CustomerFailed("http_error", f"{what}: {exc}", detail=short_json(exc.body))


def short_json(body: Any, limit: int = 2000) -> str | None:
    """`body` as JSON text cut to `limit` characters (an issue's detail); None for None."""
    if body is None:
        return None
    return orjson.dumps(body).decode(errors="replace")[:limit]


class ListingIncomplete(Exception):
    """A cross-customer listing (CareCloud /customers, /points, /purchases) could not be read to its end: whatever
    it would have named is unknown, so the caller must not treat its window as read."""

    def __init__(self, what: str, message: str, detail: str | None = None, requests: int = 0) -> None:
        super().__init__(f"{what}: {message}")
        self.what = what
        self.message = message
        self.detail = detail
        self.requests = requests          # pages requested before giving up (they cost the rate budget too)


class WarehouseUnavailable(RuntimeError):
    """The warehouse cannot be opened right now (a DuckLake catalog that cannot be reached, ...). The message names
    the warehouse without any password (`Warehouse.describe()`)."""


class WarehouseBusy(WarehouseUnavailable):
    """The embedded file is held by another process as its single writer (a load): a read-only open is refused."""


class WarehouseMissing(WarehouseUnavailable):
    """There is no warehouse yet (no file, or a DuckLake catalog never written to): load it first."""
