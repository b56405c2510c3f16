"""Capillary API access: Basic (till_id:md5(password)) or OAuth (`X-CAP-API-OAUTH-TOKEN`), one unpaginated
`GET /v2/points/transfer` per customer."""

from __future__ import annotations

import base64
import hashlib
from typing import Any
from urllib.parse import quote_plus, urlencode

from pipelines.capillary.config import CapillaryConfiguration, CapillaryOAuthCredentials
from pipelines.capillary.settings import NOT_FOUND_CODES, OAUTH_PATH, TRANSFER_PATH
from pipelines.errors import CustomerFailed, SourceUnavailable, failure_from_http, short_json as _short
from pipelines.http import (Auth, HttpClient, HttpError, HttpStats, SharedToken, StaticAuth, Steps, TokenAuth,
                            shared_limiter)
from pipelines.logs import register_secret
from pipelines.windows import Window


def _errors(body: Any) -> list[dict]:
    errs = body.get("errors") if isinstance(body, dict) else None
    return [e for e in errs if isinstance(e, dict)] if isinstance(errs, list) else []


def _warnings(body: Any) -> list[Any]:
    warns = body.get("warnings") if isinstance(body, dict) else None
    return list(warns) if isinstance(warns, list) else []


class CapillaryApi:
    def __init__(self, settings: CapillaryConfiguration, stats: HttpStats,
                 token_slot: SharedToken | None = None) -> None:
        self.settings = settings
        self._token_slot = token_slot
        self.identifier_name = settings.identifier_name
        self.identifier_source = settings.identifier_source
        self.server_timezone = settings.server_timezone
        self.timezone = settings.server_timezone  # the engine's night (sweep share) is a date in the source's zone
        self._fixed_query = urlencode({"source": self.identifier_source, "identifierName": self.identifier_name})
        self.credentials = settings.require_credentials("key + secret (OAuth) or till_id + password (Basic)")
        oauth = isinstance(self.credentials, CapillaryOAuthCredentials)
        principal = self.credentials.key if oauth else self.credentials.till_id
        limiter = shared_limiter(("capillary", f"{settings.base_url}|{principal}"), settings.rate_limit)
        self.client = HttpClient(
            settings.base_url, limiter=limiter, auth=None, max_attempts=settings.max_attempts,
            backoff_base=settings.retry_backoff, timeout=settings.request_timeout,
            stats=stats, name="capillary",
        )
        self.client.auth = self._auth(stats)

    def discover(self, conn: Any, schema: str, window: Window) -> Any:
        """Change discovery for `selection = "changed"`: Capillary cannot be queried for "who changed", so the
        customers come from its event notifications received since the previous run, whatever `window` (an event
        about a transfer after the window's end still names its customers). No API request
        (pipelines/capillary/event_changes.py). The store is found beside the warehouse `conn` has open, or at
        `[sources.capillary.webhook] store`."""
        return self._from_events(conn, store_optional=False)

    def observe(self, conn: Any, schema: str) -> Any:
        """`selection = "all"` (and `--all`): the same ingestion, list additions and used-mark as `discover`, so
        `loyalty_raw.capillary_events` fills in both modes; a warehouse with no event store beside it (no webhook
        set up) is not warned about, as an all-mode run does not depend on events."""
        return self._from_events(conn, store_optional=True)

    def _from_events(self, conn: Any, store_optional: bool) -> Any:
        from pathlib import Path

        from pipelines.capillary.event_changes import discover_from_events
        from pipelines.capillary.webhook import event_store_path

        warehouse = conn.execute("SELECT path FROM duckdb_databases() "
                                 "WHERE database_name = current_database()").fetchall()[0][0]
        return discover_from_events(conn, event_store_path(Path(warehouse)),
                                    identifier_name=self.identifier_name,
                                    retention_days=self.settings.events_retention_days,
                                    silence=self.settings.events_silence_duration, store_optional=store_optional)

    def _auth(self, stats: HttpStats) -> Auth:
        creds = self.credentials
        if isinstance(creds, CapillaryOAuthCredentials):
            return TokenAuth(self._oauth_login, "X-CAP-API-OAUTH-TOKEN", "", stats, self._token_slot)
        digest = hashlib.md5(creds.password.encode()).hexdigest()
        register_secret(digest)
        value = base64.b64encode(f"{creds.till_id}:{digest}".encode()).decode()
        register_secret(value)
        return StaticAuth({"Authorization": f"Basic {value}"})

    def _oauth_login(self) -> tuple[str, float | None]:
        creds = self.credentials
        try:
            _, body = self.client.request_json("POST", OAUTH_PATH, json_body={"key": creds.key,
                                                                                "secret": creds.secret},
                                               use_auth=False)
            token = str(body["data"]["accessToken"])
        except HttpError as exc:
            raise SourceUnavailable(f"Capillary OAuth token request failed ({exc}); check key and secret") from None
        except (KeyError, TypeError):
            raise SourceUnavailable("Capillary OAuth answer without data.accessToken") from None
        register_secret(token)
        ttl = (body.get("data") or {}).get("ttlSeconds")
        return token, float(ttl) if isinstance(ttl, (int, float)) and ttl > 0 else None

    def close(self) -> None:
        self.client.close()

    def check(self) -> None:
        self.client.auth.headers()

    def fetch(self, identifier: str) -> tuple[list[dict], list[tuple[str, str, str | None]]]:
        """The customer's transfers and the API's own warnings/errors as (code, message, detail) issues.
        Raises CustomerFailed for 8015 (not found) and anything not retryable. Blocking; the extraction runs
        `fetch_steps` for many customers at once (`pipelines/multiplex.py`)."""
        return self.client.drive(self.fetch_steps(identifier))

    def customer_steps(self, identifier: str, window: Window) -> Steps:
        """`fetch_steps` for the engine (`spec.SourceApi`): the transfer endpoint has no time filter, so every
        transfer is fetched and the batch keeps those inside `window`."""
        return self.fetch_steps(identifier)

    def fetch_steps(self, identifier: str) -> Steps:
        """`fetch` as a generator of request steps."""
        query = f"{self._fixed_query}&identifierValue={quote_plus(identifier)}"  # encoded once, not per request
        try:
            _, body = yield from self.client.request_steps("GET", TRANSFER_PATH, query=query)
        except HttpError as exc:
            if exc.status == 401:
                raise SourceUnavailable(f"Capillary refused the credentials ({exc})") from None
            for err in _errors(exc.body):
                if err.get("code") in NOT_FOUND_CODES:
                    raise CustomerFailed("not_found", f"Capillary {err.get('code')}: {err.get('message')}",
                                         detail=_short(exc.body)) from None
            raise failure_from_http(exc, "Capillary points/transfer") from None
        issues: list[tuple[str, str, str | None]] = []
        for err in _errors(body):
            if err.get("code") in NOT_FOUND_CODES:
                raise CustomerFailed("not_found", f"Capillary {err.get('code')}: {err.get('message')}",
                                     detail=_short(body))
            issues.append(("api_error", f"Capillary error {err.get('code')}: {err.get('message')}", _short(err)))
        for warn in _warnings(body):
            issues.append(("api_warning", "Capillary warning", _short(warn)))
        data = body.get("data") if isinstance(body, dict) else None
        if data is None:
            data = []
        if not isinstance(data, list):
            raise CustomerFailed("bad_response", "Capillary answered with a non-list `data`", detail=_short(body))
        return data, issues
