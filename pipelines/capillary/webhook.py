"""Capillary event notifications (api-notes §2.8): the webhook's settings and the event envelope.

Settings live in `[sources.capillary.webhook]` (secrets: `SOURCES__CAPILLARY__WEBHOOK__SECRET`). Capillary sends the
headers configured on the webhook verbatim with every POST, so the receiver compares the value of `header` with
`secret`; there is no signature to verify.

Envelopes: the docs show two shapes, both accepted here:
  {"eventName": "customerAdded", "eventId": "...", "orgId": 1800, "createdAt": 1619199042493, "data": {...}}
  {"eventId": "...", "eventType": "150698_customerAdded", "attributes": {"eventName": "customerAdded",
   "createdAt": 1683874799971, "data": {...}}}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from dlt.common.configuration import configspec
from dlt.common.configuration.specs import BaseConfiguration
from dlt.common.typing import TSecretStrValue

SECTIONS = ("sources", "capillary", "webhook")
EVENTS_PATH = "/capillary/events"
DEFAULT_STORE_NAME = "capillary_events.sqlite3"


@configspec
class CapillaryWebhookConfiguration(BaseConfiguration):
    header: str = "Authorization"
    """the request header whose value must equal `secret` (the header configured on the webhook in Capillary)"""
    secret: TSecretStrValue = None
    """the value Capillary sends in `header`; required, at least 16 characters"""
    max_body_bytes: int = 1024 * 1024
    """larger request bodies are answered 413 and not stored"""
    store: Optional[str] = None
    """the event store (SQLite); default: capillary_events.sqlite3 beside the warehouse file"""
    group_commit: bool = True
    """concurrent deliveries share one commit (one fsync); false = one per event (for measurement)"""

    def on_resolved(self) -> None:
        from pipelines.config import ConfigError
        from pipelines.logs import register_secret

        register_secret(self.secret)
        if not self.header or not self.header.strip():
            raise ConfigError("[sources.capillary.webhook] header must name a request header, e.g. Authorization")
        if len(self.secret or "") < 16:
            raise ConfigError("SOURCES__CAPILLARY__WEBHOOK__SECRET must be at least 16 characters (it is the only "
                              "thing that tells Capillary's requests from anyone else's)")
        if self.max_body_bytes < 1024:
            raise ConfigError(f"[sources.capillary.webhook] max_body_bytes must be at least 1024, "
                              f"not {self.max_body_bytes}")

    def store_path(self, warehouse: Path) -> Path:
        return _store_path(self.store, warehouse)


def load_webhook_configuration() -> CapillaryWebhookConfiguration:
    """Resolve `[sources.capillary.webhook]` the way every section is (pipelines/config.py): environment,
    secrets.toml, config.toml; an unknown key stops with the nearest valid one. Raises `ConfigError` naming the
    missing or invalid setting."""
    from pipelines.config import load_section

    return load_section(CapillaryWebhookConfiguration(), SECTIONS)


@configspec
class CapillaryEventStoreLocation(BaseConfiguration):
    """The nightly run and `status` read only where the store is from the webhook's section, never the secret (the
    section's keys are checked where the receiver and [sources.capillary] resolve it)."""

    store: Optional[str] = None


def event_store_path(warehouse: Path) -> Path:
    """Where the receiver stores events (`[sources.capillary.webhook] store`, default beside the warehouse)."""
    from pipelines.config import load_section

    return _store_path(load_section(CapillaryEventStoreLocation(), SECTIONS, check_keys=False).store, warehouse)


def _store_path(store: str | None, warehouse: Path) -> Path:
    return Path(store).expanduser() if store else warehouse.parent / DEFAULT_STORE_NAME


def envelope(event: Any) -> tuple[str, str | None]:
    """(event id, event name) of a parsed request body; ValueError with the reason when it is not an event."""
    if not isinstance(event, dict):
        raise ValueError("the body is not a JSON object")
    event_id = event.get("eventId")
    if isinstance(event_id, bool) or not isinstance(event_id, (str, int)) or str(event_id).strip() == "":
        raise ValueError("the event has no eventId")
    attributes = event.get("attributes") if isinstance(event.get("attributes"), dict) else {}
    name = event.get("eventName") or attributes.get("eventName")
    if not name and isinstance(event.get("eventType"), str):
        # "150698_customerAdded": the organisation id, then the event name
        prefix, _, rest = event["eventType"].partition("_")
        name = rest if prefix.isdigit() and rest else event["eventType"]
    return str(event_id).strip(), (str(name) if name else None)
