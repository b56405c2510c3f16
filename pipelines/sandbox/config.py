"""Sandbox settings: the data it generates (`SandboxConfig`), the faults it injects (`FaultConfig`) and how it
delivers Capillary events (`EventDeliveryConfig`, used by pipelines/sandbox/events.py).

Every behaviour the vendor docs leave open (../shared/api-notes.md, "[I]") is a switch here with the default the
notes recommend, so a test can pin the pipeline against either reading of the docs.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlsplit

from pipelines.windows import LOCAL_TIMEZONE

# Default sandbox credentials (also in the README and docs/architecture.md). Sandbox only.
CARECLOUD_LOGIN = "sandbox"
CARECLOUD_PASSWORD = "sandbox-password"
CARECLOUD_APP_ID = "sandbox-app"
CAPILLARY_TILL_ID = "sandbox.till"
CAPILLARY_PASSWORD = "sandbox-password"
CAPILLARY_OAUTH_KEY = "sandbox-key"
CAPILLARY_OAUTH_SECRET = "sandbox-secret"



def api_users(vendor: str, n: int) -> list[dict[str, str]]:
    """The `n` API users (CareCloud) or keys (Capillary) the sandbox accepts when `SandboxConfig.api_users` is `n`:
    the first is the default credentials above, user k >= 2 has `-k` appended to each value (`sandbox-2` /
    `sandbox-password-2`; the CareCloud app id is shared: one application, several API users). Each dict holds the
    keys of `[[sources.<vendor>.credentials]]` plus a `name` (`u1`, `u2`, ...). Read at call time, so a test that
    swaps the constants above swaps these too."""
    out = []
    for k in range(1, max(1, n) + 1):
        tail = "" if k == 1 else f"-{k}"
        if vendor == "carecloud":
            out.append({"name": f"u{k}", "login": CARECLOUD_LOGIN + tail, "password": CARECLOUD_PASSWORD + tail,
                        "external_app_id": CARECLOUD_APP_ID})
        elif vendor == "capillary":
            out.append({"name": f"u{k}", "till_id": CAPILLARY_TILL_ID + tail, "password": CAPILLARY_PASSWORD + tail,
                        "key": CAPILLARY_OAUTH_KEY + tail, "secret": CAPILLARY_OAUTH_SECRET + tail})
        else:
            raise ValueError(f"no sandbox API users for {vendor!r}")
    return out


CARECLOUD_BASE_PATH = "/webservice/rest-api/enterprise-interface/v1.0"
CARECLOUD_LEGACY_BASE_PATH = "/rest-api/enterprise-interface/v1.0"


@dataclass
class SandboxConfig:
    """What the sandbox serves. Data depends only on (`seed`, customer index, the size/shape fields), never on
    the clock: the clock only decides which records are visible yet."""

    customers: int = 1000
    seed: int = 7
    # Sandbox "now": None = the real wall clock; an ISO instant or datetime freezes the clock there (tests).
    now: Any = None
    timezone: str = LOCAL_TIMEZONE             # CareCloud project local time
    capillary_timezone: str = "UTC"            # Capillary server time (EU cluster)
    data_start: str = "2024-01-01"             # records span [data_start, data_end) in project local time
    data_end: str = "2027-07-01"

    # --- sizes
    records_per_customer: float = 12.0         # mean CareCloud records of an ordinary customer
    empty_every: int = 20                      # every n-th customer (index % n == 5) has no history at all; 0 = none
    heavy_every: int = 500                     # index % n == 7 is a heavy customer; 0 = none
    heavy_records: int = 2500                  # records of a heavy customer (several pages at count=1000)
    duplicate_share: float = 0.01              # records repeated identically (same second, every field)
    late_share: float = 0.03                   # records visible up to `late_max_seconds` after their timestamp
    late_max_seconds: int = 2 * 86400          # stays inside a 3-day lookback
    dst_every: int = 7                         # index % n == 2 gets extra records around the DST changes; 0 = none
    transfers_per_customer: float = 3.0        # mean Capillary transfers a customer takes part in
    transfer_group_size: int = 4               # transfers are generated per group of consecutive customers
    cache_customers: int = 25_000              # generated customers kept in memory (LRU), ~0.8 KB per record
    stores: int = 300
    partners: int = 25
    joining_share: float = 0.1                 # customers who join inside the data span (the rest joined before)
    profile_changes: float = 1.5               # mean customer profile edits (roster last_change) over the span
    inactive_share: float = 0.03               # customers set non-active (state 2) at their last profile edit
    deleted_share: float = 0.01                # customers deleted (state 0) at their last profile edit

    # --- undocumented behaviours (switches)
    point_amount_sign: str = "signed"          # signed: redemption/expiration/voucher negative | unsigned: all >= 0
    time_from_inclusive: bool = True
    time_to_inclusive: bool = True
    default_sort: str = "point_history_record_time"  # when sort_field is absent; "none" = generation order
    max_count: int = 0                         # 0 = unlimited `count`
    accept_legacy_path: bool = True            # also serve /rest-api/... without /webservice
    unknown_customer: str = "400"              # CareCloud unknown customer_id: "400" (not_found) | "empty" (200, [])
    capillary_8015_status: int = 400           # HTTP status sent with Capillary error 8015
    capillary_oauth_ttl_seconds: int = 900
    null_extended_data: bool = True            # some manual corrections send extended_data: null (the spec says
                                               # string; api-notes 1.3 says clients must accept null)
    # cross-customer listings (GET /customers, /points, /purchases; docs/sandbox.md "Listings")
    point_records_for: str = "earnings"        # which history records leave a /points record: every earning, or
                                               # "purchases" (only purchase earnings; bonuses leave none)
    expired_points: str = "inactive"           # a point record past valid_to: "inactive" (state 2, available 0),
                                               # "zero" (state 1, available 0) or "unchanged"
    missing_valid_to: str = "omit"             # a point record that never expires: "omit" the key or send "null"
    listing_filter_zone: str = "local"         # *_time_from/_to read as project "local" time (the spec) or "utc"
    last_change_on_points: bool = False        # customer.last_change also moves with point movements
    list_deleted_customers: bool = True        # GET /customers lists state 0 (deleted) customers too
    api_users: int = 1                         # API users (CareCloud) / keys (Capillary) accepted per vendor
                                               # (`api_users()`); each has its own rate budget and tokens

    # --- bad-input quirks (all off; reflected in the truth)
    extra_fields: bool = False                 # new, undocumented fields on every record
    type_drift: bool = False                   # point_amount sent as a string on some records
    bad_times: bool = False                    # null / malformed point_history_record_time on a few records
    huge_notes: bool = False                   # ~100 KB notes on a few records
    extended_data_variety: float = 0.0         # share of CareCloud records whose extended_data is heterogeneous:
                                               # colliding key spellings, type changes, nesting, unicode keys,
                                               # null/"", invalid JSON (pipelines/sandbox/variety.py); 0 = off

    def __post_init__(self) -> None:
        if self.customers < 0:
            raise ValueError("customers must be >= 0")
        if self.point_amount_sign not in ("signed", "unsigned"):
            raise ValueError("point_amount_sign must be 'signed' or 'unsigned'")
        if self.unknown_customer not in ("400", "empty"):
            raise ValueError("unknown_customer must be '400' or 'empty'")
        if self.default_sort not in ("point_history_record_time", "insertion"):
            raise ValueError("default_sort must be 'point_history_record_time' or 'insertion'")
        if not 0.0 <= self.extended_data_variety <= 1.0:
            raise ValueError("extended_data_variety must be a share between 0 and 1")
        if self.transfer_group_size < 2:
            raise ValueError("transfer_group_size must be >= 2")
        for name, allowed in (("point_records_for", ("earnings", "purchases")),
                              ("expired_points", ("inactive", "zero", "unchanged")),
                              ("missing_valid_to", ("omit", "null")), ("listing_filter_zone", ("local", "utc"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}")
        if not 0 <= self.joining_share <= 1:
            raise ValueError("joining_share must be between 0 and 1")
        if self.api_users < 1:
            raise ValueError("api_users must be >= 1")

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}


@dataclass
class FaultConfig:
    """Faults injected on the data endpoints (point history, transfers, summary). All off by default.
    Shares are probabilities per request; every injected fault is counted in `Sandbox.stats()["faults"]`."""

    rate_limit_rps: float = 0.0                # token bucket per credential; 0 = off
    rate_limit_burst: float = 0.0              # bucket size; 0 = max(1, rps)
    rate_limit_scope: str = "credential"       # whose requests share one bucket: each API user/key its own
                                               # ("credential": Capillary documents its limit "per API key";
                                               # CareCloud publishes none) or the vendor's whole tenant ("tenant")
    retry_after_share: float = 0.0             # share of 429s with Retry-After; neither vendor documents the
                                               # header (api-notes 1.7, 2.6), so none by default
    random_429_share: float = 0.0              # 429 regardless of the bucket
    error_503_share: float = 0.0
    latency_ms: float = 0.0                    # added before every response (login too)
    jitter_ms: float = 0.0                     # + uniform [0, jitter_ms)
    drop_share: float = 0.0                    # connection closed without a response
    truncate_share: float = 0.0                # full Content-Length announced, half the body sent, then closed
    token_ttl_seconds: float = 7 * 3600.0       # CareCloud bearer token lifetime (wall clock)
    token_max_requests: int = 0                # token expires after N data requests; 0 = off
    maintenance_share: float = 0.0             # share of customers answered 503 during the maintenance window
    maintenance_after_seconds: float = 0.0     # window starts this long after the server started (wall clock)
    maintenance_seconds: float = 0.0           # window length; 0 = off
    seed: int = 1                              # fault dice are seeded too: a failing chaos test can be re-run
    endpoints: str = ""                        # comma list of stats endpoint names (carecloud.points, ...) the
                                               # faults apply to; "" = every data endpoint
    scripted: str = ""                         # comma list of fault kinds (429_random, 503_random,
                                               # dropped_connection, truncated_body) the first data requests get,
                                               # in order, before the dice take over: a test that must see every
                                               # kind happen gets it by construction, not by chance

    def __post_init__(self) -> None:
        if self.rate_limit_scope not in ("credential", "tenant"):
            raise ValueError("rate_limit_scope must be 'credential' or 'tenant'")

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    def any_active(self) -> bool:
        return any([
            self.rate_limit_rps, self.random_429_share, self.error_503_share, self.latency_ms, self.jitter_ms,
            self.drop_share, self.truncate_share, self.token_max_requests,
            self.maintenance_share and self.maintenance_seconds,
        ])


def split_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split one flat keyword dict into SandboxConfig and FaultConfig arguments (fixture convenience)."""
    sb, fa = {}, {}
    for k, v in kwargs.items():
        if k in SandboxConfig.field_names():
            sb[k] = v
        elif k in FaultConfig.field_names():
            fa[k] = v
        else:
            raise TypeError(f"unknown sandbox setting {k!r}")
    return sb, fa


# here, not in events.py: `loyalty-etl sandbox` builds its --events-* flags from these fields on every start of the
# CLI (also `run`), and events.py imports the delivery machinery (http.client, the data generator)
@dataclass
class EventDeliveryConfig:
    """Where and how the sandbox delivers events (CLI: `loyalty-etl sandbox --events-url ... --events-<field>`)."""

    url: str = ""                          # the receiver, e.g. http://127.0.0.1:8787/capillary/events; "" = off
    header: str = "Authorization"          # the webhook's authentication header, sent verbatim
    secret: str = ""                       # its value
    org_id: int = 100_458
    envelope: str = "mixed"                # flat | attributes | mixed (both shapes appear in the docs)
    transfer_event: str = "pointsTransferred"  # [I] the docs name "points transfer" events without a sample
    customer_added_share: float = 0.05     # share of customers registered during the data span (customerAdded)
    connections: int = 2                   # parallel connections (the webhook's maxAllowedConnections)
    retry_backoff: float = 0.2             # wall seconds before the 2nd attempt; doubles per attempt
    retry_max_backoff: float = 5.0
    max_attempts: int = 0                  # 0 = retry until delivered (the vendor retries for at least 7 days)
    non_retriable: tuple[int, ...] = (400,)  # answered with these, an event is marked failed and never retried
    timeout: float = 10.0                  # seconds per attempt
    duplicate_share: float = 0.0           # events delivered twice (the second copy up to duplicate_max_seconds later)
    duplicate_max_seconds: float = 86_400.0
    reorder_share: float = 0.0             # events held back up to reorder_max_seconds: delivered out of order
    reorder_max_seconds: float = 900.0
    late_share: float = 0.0                # events delivered hours late: late_min..late_max_seconds after occurring
    late_min_seconds: float = 3_600.0
    late_max_seconds: float = 6 * 3_600.0
    lost_share: float = 0.0                # events never delivered at all
    seed: int = 3
    poll_seconds: float = 0.02             # how often the sandbox clock is looked at

    def __post_init__(self) -> None:
        if self.envelope not in ("flat", "attributes", "mixed"):
            raise ValueError("envelope must be flat, attributes or mixed")
        for name in ("customer_added_share", "duplicate_share", "reorder_share", "late_share", "lost_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.connections < 1:
            raise ValueError("connections must be >= 1")
        if self.url and urlsplit(self.url).scheme not in ("http", "https"):
            raise ValueError(f"events url {self.url!r} is not an http(s) URL")

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}
