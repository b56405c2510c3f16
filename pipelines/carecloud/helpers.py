"""CareCloud API access: bearer login shared by all threads, `GET /point-history` paged safely per customer, and the
cross-customer listings change discovery reads (`GET /customers`, `/points`, `/purchases`)."""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from typing import Any
from urllib.parse import quote_plus, urlencode

from pipelines.carecloud.discovery import discover as discover_changes
from pipelines.carecloud.roster import sync as sync_roster
from pipelines.carecloud.config import CareCloudConfiguration
from pipelines.carecloud.settings import (
    CUSTOMERS_PATH, LISTINGS, LOGIN_PATH, MAX_PAGING_ATTEMPTS, POINT_HISTORY_PATH, ROSTER_SORT_FIELD, SORT_FIELD,
)
from pipelines.errors import CustomerFailed, ListingIncomplete, SourceUnavailable, failure_from_http, short_json as _short
from pipelines.http import HttpClient, HttpError, HttpStats, SharedToken, Steps, TokenAuth, shared_limiter
from pipelines.logs import register_secret
from pipelines.paging import (
    BasePaginator, DescendingStopPaginator, PagingUnstable, StableOffsetPaginator, paginate,
)
from pipelines.windows import Window, local_bounds, local_to_utc


def _invalid_params(body: Any) -> list[dict]:
    try:
        params = body["error"]["error_data"]["invalid_params"]
        return [p for p in params if isinstance(p, dict)]
    except (KeyError, TypeError):
        return []


class CareCloudApi:
    def __init__(self, settings: CareCloudConfiguration, stats: HttpStats,
                 token_slot: SharedToken | None = None) -> None:
        self.settings = settings
        self.timezone = settings.timezone
        self.page_size = settings.page_size
        self._fixed_query = urlencode({"count": self.page_size, "sort_field": SORT_FIELD, "sort_direction": "ASC"})
        self.credentials = settings.require_credentials("login, password and external_app_id")
        limiter = shared_limiter(("carecloud", f"{settings.base_url}|{self.credentials.login}"), settings.rate_limit)
        self.auth = TokenAuth(self._login, "Authorization", "Bearer ", stats, token_slot)
        self.client = HttpClient(
            settings.base_url, limiter=limiter, auth=self.auth, max_attempts=settings.max_attempts,
            backoff_base=settings.retry_backoff, timeout=settings.request_timeout,
            stats=stats, name="carecloud",
        )

    def close(self) -> None:
        self.client.close()

    def _login(self) -> tuple[str, float | None]:
        creds = self.credentials
        body = {"user_external_application_id": creds.external_app_id, "login": creds.login,
                "password": creds.password}
        try:
            _, answer = self.client.request_json("POST", LOGIN_PATH, json_body=body, use_auth=False)
        except HttpError as exc:
            raise SourceUnavailable(f"CareCloud login failed ({exc}); check [sources.carecloud.credentials]") from None
        try:
            token = str(answer["data"]["bearer_token"])
        except (KeyError, TypeError):
            raise SourceUnavailable("CareCloud login answered without data.bearer_token") from None
        register_secret(token)
        ttl = None
        valid_to = (answer.get("data") or {}).get("valid_to")
        if isinstance(valid_to, str):
            until = local_to_utc(valid_to, self.timezone)
            if until is not None:
                ttl = max(30.0, (until - dt.datetime.now(dt.timezone.utc)).total_seconds())
        return token, ttl

    def check(self) -> None:
        """Log in once up front so wrong credentials fail the run clearly instead of every customer."""
        self.auth.headers()

    def fetch(self, customer_id: str, time_from: str, time_to: str) -> tuple[list[dict], int]:
        """Every record of the customer between the two local wall-clock strings, and the number of fetches
        (blocking; the extraction runs `fetch_steps` for many customers at once, `pipelines/multiplex.py`)."""
        return self.client.drive(self.fetch_steps(customer_id, time_from, time_to))

    def customer_steps(self, customer_id: str, window: Window) -> Steps:
        """The steps of every record of the customer in `window` (`spec.SourceApi`): (records, no API issues)."""
        records, _ = yield from self.fetch_steps(customer_id, *local_bounds(window, self.timezone))
        return records, ()

    def fetch_steps(self, customer_id: str, time_from: str, time_to: str) -> Steps:
        """`fetch` as a generator of request steps.

        Paged by a `StableOffsetPaginator`: when records arrive while the customer-window is paged, the whole
        customer-window is fetched again, up to MAX_PAGING_ATTEMPTS times; then the customer fails for this run and
        is retried next time. So no record is skipped or doubled."""
        # the query is encoded once per window and per customer, not per page (urlencode was a visible part of a
        # request's CPU: docs/decisions/session-2-worker-processes.md)
        query = f"customer_id={quote_plus(customer_id)}&{self._fixed_query}&{self._window_query(time_from, time_to)}"
        paginator = StableOffsetPaginator(self.page_size, MAX_PAGING_ATTEMPTS)
        try:
            records = yield from paginate(self._page, query, paginator)
        except PagingUnstable as exc:
            raise CustomerFailed("unstable_paging", f"{exc}, retried next run",
                                 detail=f"totals seen {exc.totals}, fetched {exc.fetched}") from None
        return records, paginator.attempt

    @staticmethod
    @lru_cache(maxsize=4096)
    def _window_query(time_from: str, time_to: str) -> str:
        return urlencode({"time_from": time_from, "time_to": time_to}, safe=":")

    def _page(self, query: str) -> Steps:
        """Steps of one page: returns (its records, the answer's `data` object, where the paginator finds
        `total_items`)."""
        try:
            _, body = yield from self.client.request_steps("GET", POINT_HISTORY_PATH, query=query)
        except HttpError as exc:
            if exc.status == 400:
                reasons = {p.get("reason") for p in _invalid_params(exc.body)}
                if "not_found" in reasons:
                    raise CustomerFailed("not_found", "CareCloud: customer not found", detail=_short(exc.body)) from None
            raise failure_from_http(exc, "CareCloud point-history") from None
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            raise CustomerFailed("bad_response", "CareCloud point-history answered without `data`",
                                 detail=_short(body))
        page = data.get("point_history") or []
        if not isinstance(page, list):
            raise CustomerFailed("bad_response", "CareCloud point-history: `point_history` is not a list",
                                 detail=_short(body))
        return page, data

    # ------------------------------------------------------------------ cross-customer listings (issue 17)
    def listing(self, kind: str, time_from: str, time_to: str) -> tuple[list[dict], int]:
        """Blocking `listing_steps`."""
        return self.client.drive(self.listing_steps(kind, time_from, time_to))

    def listing_steps(self, kind: str, time_from: str, time_to: str) -> Steps:
        """Every point record (`kind="points"`, by creation time) or purchase (`"purchases"`, by payment time) with
        its time between the two local wall-clock strings (the vendor's filters, bounds as it applies them), oldest
        first; returns (items, requests spent). Raises `ListingIncomplete` when the listing cannot be read to its
        end (retries exhausted, a bad answer, a result set that keeps moving)."""
        path, key, (p_from, p_to), sort_field = LISTINGS[kind]
        query = urlencode({"count": self.page_size, "sort_field": sort_field, "sort_direction": "ASC",
                           p_from: time_from, p_to: time_to}, safe=":")
        return (yield from self._listing(path, key, query, StableOffsetPaginator(self.page_size, MAX_PAGING_ATTEMPTS)))

    def roster(self, changed_since: str | None = None) -> tuple[list[dict], int]:
        """Blocking `roster_steps`."""
        return self.client.drive(self.roster_steps(changed_since))

    def roster_steps(self, changed_since: str | None = None) -> Steps:
        """Customers by `last_change` descending: all of them (`changed_since` None), or paged only down to the first
        page that reaches a `last_change` before `changed_since` (local wall-clock string; that page is returned
        whole, so callers filter). Returns (customers, requests spent); raises `ListingIncomplete`."""
        query = urlencode({"count": self.page_size, "sort_field": ROSTER_SORT_FIELD, "sort_direction": "DESC"})
        paginator = DescendingStopPaginator(self.page_size, MAX_PAGING_ATTEMPTS, ROSTER_SORT_FIELD, changed_since)
        return (yield from self._listing(CUSTOMERS_PATH, "customers", query, paginator))

    def _listing(self, path: str, key: str, query: str, paginator: BasePaginator) -> Steps:
        requests = 0

        def page_steps(q: str) -> Steps:
            nonlocal requests
            requests += 1
            return (yield from self._listing_page(path, key, q))

        try:
            items = yield from paginate(page_steps, query, paginator)
        except PagingUnstable as exc:
            raise ListingIncomplete(f"CareCloud {path}", f"{exc}; the window is read again next run",
                                    detail=f"totals seen {exc.totals}, fetched {exc.fetched}",
                                    requests=requests) from None
        except ListingIncomplete as exc:
            exc.requests = requests
            raise
        return items, requests

    def _listing_page(self, path: str, key: str, query: str) -> Steps:
        """Steps of one listing page: (its items, the answer's `data`)."""
        try:
            _, body = yield from self.client.request_steps("GET", path, query=query)
        except HttpError as exc:
            raise ListingIncomplete(f"CareCloud {path}", str(exc), detail=_short(exc.body)) from None
        data = body.get("data") if isinstance(body, dict) else None
        items = data.get(key) if isinstance(data, dict) else None
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise ListingIncomplete(f"CareCloud {path}", f"answer without a `data.{key}` list of objects",
                                    detail=_short(body))
        return items, data

    # ------------------------------------------------------------------ hooks of pipelines/changes.py
    def sync_roster(self, conn: Any, schema: str, lookback: dt.timedelta, run_id: str) -> Any:
        """`customers = "api"`: the roster from GET /customers (`pipelines/carecloud/roster.py`)."""
        return sync_roster(self, conn, schema, lookback, run_id)

    def discover(self, conn: Any, schema: str, window: Any) -> Any:
        """`selection = "changed"`: change discovery for `window` (`pipelines/carecloud/discovery.py`)."""
        return discover_changes(self, conn, schema, window)
