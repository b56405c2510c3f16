"""`[sources.capillary]`: the Capillary section's typed settings and credentials (see `pipelines/config.py`).

The credentials are one of two types, tried in this order: OAuth (`key` + `secret`) when both are set, else Basic
(`till_id` + `password`)."""

from typing import Literal, Optional, Union

import pendulum
from dlt.common.configuration import configspec
from dlt.common.typing import TSecretStrValue

from pipelines.capillary.webhook import CapillaryWebhookConfiguration
from pipelines.config import ConfigError, SourceConfiguration, SourceCredentials, parse_duration


@configspec
class CapillaryOAuthCredentials(SourceCredentials):
    """OAuth: `key` + `secret`, exchanged for an `X-CAP-API-OAUTH-TOKEN` (used when both are set)."""

    key: str = None
    secret: TSecretStrValue = None


@configspec
class CapillaryBasicCredentials(SourceCredentials):
    """Basic: `till_id` + `password` (MD5-hashed before sending)."""

    till_id: str = None
    password: TSecretStrValue = None


CapillaryCredentials = Union[CapillaryOAuthCredentials, CapillaryBasicCredentials]


@configspec
class CapillaryConfiguration(SourceConfiguration):
    base_url: str = "https://eu.api.capillarytech.com"
    """The cluster's API host."""
    rate_limit: float = 16.0
    """Requests per second per key (1,000 requests/minute on demo clusters)."""
    identifier_name: Literal["id", "mobile", "email", "externalId"] = "id"
    """Which identifier the customer list holds."""
    identifier_source: str = "INSTORE"
    """The `source` the identifiers belong to."""
    server_timezone: str = "UTC"
    """The cluster's time zone, for `pointsTransferDate` when `pointsTransferDateISO` is absent."""
    events_retention_days: int = 30
    """Days received events stay in `capillary_events` and, once in the warehouse, in the event store."""
    events_silence: str = "24h"
    """No event received for longer than this: the run warns (status, run report, alert hook)."""
    credentials: Optional[CapillaryCredentials] = None
    webhook: Optional[CapillaryWebhookConfiguration] = None
    """The event receiver (`loyalty-etl events serve`), resolved on its own by `webhook.load_webhook_configuration`;
    here so its keys are checked with the rest of the section (docs/operations.md)."""

    @property
    def events_silence_duration(self) -> pendulum.Duration:
        return parse_duration(self.events_silence)

    def on_resolved(self) -> None:
        super().on_resolved()
        try:
            parse_duration(self.events_silence)
        except ConfigError as exc:
            raise ConfigError(f"[sources.{self.name}] events_silence: {exc}") from None
        if self.events_retention_days < 1:
            raise ConfigError(f"[sources.{self.name}] events_retention_days must be 1 or more, "
                              f"not {self.events_retention_days}")
