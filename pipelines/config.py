"""Typed settings, resolved the dlt way: environment variables, then `.dlt/secrets.toml`, then `.dlt/config.toml`.

`SOURCES__CARECLOUD__BASE_URL`, `SOURCES__CARECLOUD__CREDENTIALS__LOGIN`, `DESTINATION__DUCKDB__CREDENTIALS`, ...
override the files. Every secret resolved here is registered for redaction before anything can log it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pendulum

from pipelines.logs import register_secret

DEFAULT_WAREHOUSE = "warehouse/loyalty_warehouse.duckdb"


class ConfigError(ValueError):
    """A setting is missing or invalid; the message says which and how to fix it."""


def _get(key: str, default: Any = None, kind: type | None = None) -> Any:
    import dlt

    value = dlt.config.get(key, kind) if kind else dlt.config.get(key)
    return default if value is None or value == "" else value


def _secret(key: str) -> str:
    import dlt

    value = dlt.secrets.get(key)
    value = "" if value is None else str(value)
    register_secret(value)
    return value


def parse_duration(text: str | int | float) -> pendulum.Duration:
    """`3d`, `10m`, `6h`, `90s`, `1w` or a number of seconds."""
    if isinstance(text, (int, float)):
        return pendulum.duration(seconds=float(text))
    s = str(text).strip().lower()
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    try:
        if s[-1] in units:
            return pendulum.duration(**{units[s[-1]]: float(s[:-1])})
        return pendulum.duration(seconds=float(s))
    except (ValueError, IndexError):
        raise ConfigError(f"invalid duration {text!r}: use e.g. 3d, 10m, 6h, 90s") from None


def parse_instant(text: str | Any, name: str = "instant") -> pendulum.DateTime:
    """An ISO 8601 instant; without an offset it is taken as UTC."""
    if isinstance(text, pendulum.DateTime):
        return text.in_timezone("UTC")
    try:
        value = pendulum.parse(str(text), tz="UTC")
    except Exception:
        raise ConfigError(f"invalid {name} {text!r}: use ISO 8601, e.g. 2026-01-31T00:00:00+00:00") from None
    if not isinstance(value, pendulum.DateTime):
        raise ConfigError(f"invalid {name} {text!r}: expected a date and time")
    return value.in_timezone("UTC")


def check_base_url(url: str, name: str, allow_insecure: bool) -> str:
    """Refuse plain http:// to anything but loopback unless explicitly allowed: credentials would cross the
    network in clear text."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(f"{name} base_url {url!r} is not an http(s) URL")
    if parsed.scheme == "http" and not allow_insecure:
        host = parsed.hostname
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ConfigError(
                f"{name} base_url uses plain http:// to a non-loopback host ({host}); credentials would travel "
                "unencrypted. Use https://, or set [loyalty] allow_insecure_http = true if you really mean it."
            )
    return url.rstrip("/")


@dataclass
class SourceSettings:
    name: str
    base_url: str
    customers: str
    initial_start: pendulum.DateTime
    rate_limit: float
    concurrency: int
    max_attempts: int
    lookback: pendulum.Duration
    safety_lag: pendulum.Duration
    credentials: dict[str, str] = field(repr=False, default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    retry_backoff: float = 1.0        # seconds before the 2nd attempt; doubles per attempt, +-20 % jitter
    request_timeout: float = 60.0     # seconds per request (read timeout)


@dataclass
class Settings:
    carecloud: SourceSettings
    capillary: SourceSettings
    warehouse: Path
    allow_insecure_http: bool
    alert_command: str
    alert_webhook: str
    batch_rows: int = 10_000          # rows per Arrow table handed to dlt (spans many customers)
    chunk_customers: int = 20_000     # customers per source per round (load + state commit; bounds a crash's loss)
    round_records: int = 400_000      # a round also ends after this many fetched records (bounds memory)
    export_schema_path: str = "schemas"  # dlt schema YAML export, only for a warehouse under ./warehouse/
    duckdb_memory_limit: str = "256MB"   # the run's DuckDB buffer pool; larger merges spill to disk (docs/performance.md)
    extract_processes: int = 0        # worker processes that fetch and normalize (0 = in the run's own process)

    @property
    def pipelines_dir(self) -> Path:
        return self.warehouse.parent / ".dlt-pipelines"

    def source(self, name: str) -> SourceSettings:
        return {"carecloud": self.carecloud, "capillary": self.capillary}[name]


def warehouse_path() -> Path:
    """The DuckDB file every part of the project uses (pipeline, dbt, dashboard, status)."""
    raw = str(_get("destination.duckdb.credentials", DEFAULT_WAREHOUSE))
    if raw.startswith("duckdb:///"):
        raw = raw[len("duckdb:///"):]
    path = Path(raw).expanduser()
    return path if path.is_absolute() else (Path.cwd() / path)


def _source(name: str, defaults: dict[str, Any], secret_keys: list[str], extra_keys: dict[str, Any],
            allow_insecure: bool) -> SourceSettings:
    sec = f"sources.{name}"
    base_url = str(_get(f"{sec}.base_url", defaults.get("base_url", "")))
    return SourceSettings(
        name=name,
        base_url=check_base_url(base_url, name, allow_insecure),
        customers=str(_get(f"{sec}.customers", f"customers/{name}.csv")),
        initial_start=parse_instant(_get(f"{sec}.initial_start", "2024-01-01T00:00:00+00:00"), "initial_start"),
        rate_limit=float(_get(f"{sec}.rate_limit", defaults.get("rate_limit", 20.0))),
        concurrency=int(_get(f"{sec}.concurrency", 16)),
        max_attempts=int(_get(f"{sec}.max_attempts", 6)),
        lookback=parse_duration(_get(f"{sec}.lookback", "3d")),
        safety_lag=parse_duration(_get(f"{sec}.safety_lag", "10m")),
        retry_backoff=float(_get(f"{sec}.retry_backoff", 1.0)),
        request_timeout=float(_get(f"{sec}.request_timeout", 60.0)),
        credentials={k: _secret(f"{sec}.credentials.{k}") for k in secret_keys},
        extra={k: _get(f"{sec}.{k}", v) for k, v in extra_keys.items()},
    )


def _without_streamlit_probe(fn):
    """dlt looks for Streamlit secrets (importing streamlit: ~2 s of every CLI start) whenever there is no
    .dlt/secrets.toml, as in tests and environment-only deployments. Settings never come from Streamlit here, so
    while resolving, `import streamlit` fails fast (dlt treats that as "not in Streamlit"). A process that already
    imported streamlit (the dashboard) is left alone."""
    import functools
    import sys

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if "streamlit" in sys.modules:
            return fn(*args, **kwargs)
        sys.modules["streamlit"] = None  # type: ignore[assignment]
        try:
            return fn(*args, **kwargs)
        finally:
            if sys.modules.get("streamlit", 0) is None:
                del sys.modules["streamlit"]

    return wrapper


@_without_streamlit_probe
def load_settings() -> Settings:
    allow_insecure = bool(_get("loyalty.allow_insecure_http", False))
    carecloud = _source(
        "carecloud",
        {"rate_limit": 50.0},
        ["login", "password", "external_app_id"],
        {"timezone": "Europe/Prague", "page_size": 1000},
        allow_insecure,
    )
    capillary = _source(
        "capillary",
        {"base_url": "https://eu.api.capillarytech.com", "rate_limit": 16.0},
        ["till_id", "password", "key", "secret"],
        {"identifier_name": "id", "identifier_source": "INSTORE", "server_timezone": "UTC"},
        allow_insecure,
    )
    return Settings(
        carecloud=carecloud,
        capillary=capillary,
        warehouse=warehouse_path(),
        allow_insecure_http=allow_insecure,
        alert_command=str(_get("loyalty.alert_command", "")),
        alert_webhook=str(_get("loyalty.alert_webhook", "")),
        batch_rows=int(_get("loyalty.batch_rows", 10_000)),
        chunk_customers=int(_get("loyalty.chunk_customers", 20_000)),
        round_records=int(_get("loyalty.round_records", 400_000)),
        export_schema_path=str(_get("loyalty.export_schema_path", "schemas")),
        duckdb_memory_limit=str(_get("loyalty.duckdb_memory_limit", "256MB")),
        extract_processes=extract_processes(_get("loyalty.extract_processes", "auto")),
    )


def extract_processes(setting: Any, cpus: int | None = None) -> int:
    """Worker processes for `[loyalty] extract_processes`: a number, or "auto" = one per core (at most 4: beyond
    that the one loading process is the bottleneck). 0 or 1 = extract in the run's own process, as on a one-core
    machine or off Linux (the pool forks, and ties its workers' lives to the run with PR_SET_PDEATHSIG)."""
    import os
    import sys

    if not sys.platform.startswith("linux"):
        return 0
    if isinstance(setting, str) and setting.strip().lower() == "auto":
        if cpus is None:
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return min(4, cpus) if cpus > 1 else 0
    try:
        n = int(setting)
    except (TypeError, ValueError):
        raise ConfigError(f"[loyalty] extract_processes must be a number or \"auto\", not {setting!r}") from None
    if n < 0:
        raise ConfigError(f"[loyalty] extract_processes must be 0 or more, not {n}")
    return n if n > 1 else 0
