"""Typed settings: dlt `@configspec` classes resolved the dlt way (environment variables, then `.dlt/secrets.toml`,
then `.dlt/config.toml`).

- `[loyalty]` is `Settings` (this module); each source's section `[sources.<name>]` is a subclass of
  `SourceConfiguration` that lives in the source's own package (`pipelines/<name>/config.py`), with its typed
  credentials under `[sources.<name>.credentials]`.
- Every default is the field's default in its spec class, and nowhere else: `.dlt/config.toml` sets only what
  differs, and the README's configuration table is generated from the specs (`python -m pipelines.config`; a test
  keeps them equal).
- A key a spec does not know (a misspelling such as `page_sizee`, or `SOURCES__CARECLOUD__PAGE_SIZEE` in the
  environment) is an error that names it and the nearest valid key: dlt itself would silently ignore it.
- Every value found under a `credentials` section, or of a secret-typed key, is registered for redaction the moment
  it is read.

`SOURCES__CARECLOUD__BASE_URL`, `SOURCES__CARECLOUD__CREDENTIALS__LOGIN`, `LOYALTY__BATCH_ROWS`,
`DESTINATION__DUCKDB__CREDENTIALS`, ... override the files.
"""

# no `from __future__ import annotations`: dlt resolves a spec's string annotations in the module of the class
# that uses them, so fields inherited by a spec in another module need real types
import ast
import contextlib
import difflib
import functools
import inspect
import ipaddress
import re
import textwrap
from pathlib import Path
from typing import Annotated, Any, Callable, ClassVar, Iterator, Optional, TypeVar
from urllib.parse import urlparse

import pendulum
from dlt.common.configuration import configspec, resolve_configuration
from dlt.common.configuration.exceptions import (
    ConfigFieldMissingException, ConfigurationException, ConfigValueCannotBeCoercedException,
)
from dlt.common.configuration.specs import BaseConfiguration, CredentialsConfiguration
from dlt.common.configuration.specs.base_configuration import (
    NotResolved, extract_inner_hint, get_config_if_union_hint, is_base_configuration_inner_hint,
    is_hint_not_resolvable, is_secret_hint,
)
from dlt.common.typing import get_all_types_of_class_in_union, is_union_type

from pipelines.logs import register_secret
from pipelines.windows import LOCAL_TIMEZONE

DEFAULT_WAREHOUSE = "warehouse/loyalty_warehouse.duckdb"
WAREHOUSE_KINDS = ("duckdb", "ducklake")
"""`[destination.duckdb] credentials` when unset: read by `warehouse_path()` only (dlt gets an open connection)."""


class ConfigError(ValueError):
    """A setting is missing or invalid; the message says which and how to fix it."""


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


# ---------------------------------------------------------------------------------------------------- the specs

CREDENTIAL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


@configspec
class SourceCredentials(CredentialsConfiguration):
    """Credentials of a source. An empty value counts as missing, so a blank line copied from
    `.dlt/secrets.toml.example` never passes for a credential, and in a union of credential types the next type
    is tried.

    A source may have several (`[[sources.<name>.credentials]]`, a TOML array of tables; docs/credentials.md): each
    is one API user or key with its own login and request budget. The keys below are the same in every source's
    credentials and are not secret (never registered for redaction: they name the credential in logs and pools)."""

    name: str = "default"
    """The credential's name in logs, the run report, Airflow pools and the sandbox's counts (letters, digits,
    `_ . -`); required for each of several."""
    rate_limit: Optional[float] = None
    """Requests per second of this credential (vendors sell limits per API user / key); unset: the source's
    `rate_limit`."""
    concurrency: Optional[int] = None
    """Customers in flight with this credential; unset: the source's `concurrency`."""

    PUBLIC_KEYS: ClassVar[tuple[str, ...]] = ("name", "rate_limit", "concurrency")

    def on_resolved(self) -> None:
        empty = {key: [] for key in self.get_resolvable_fields() if self[key] == ""}
        if empty:
            raise ConfigFieldMissingException(self, empty)  # type: ignore[arg-type]
        if not CREDENTIAL_NAME.fullmatch(str(self.name)):
            raise ConfigError(f"credential name {self.name!r}: use letters, digits, `_`, `.` or `-` (at most 63)")
        if self.rate_limit is not None and self.rate_limit < 0:
            raise ConfigError(f"credential {self.name}: rate_limit must be 0 (unlimited) or more")
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError(f"credential {self.name}: concurrency must be 1 or more")

    def secret_values(self) -> list[Any]:
        """The values that identify or open the account (registered for redaction)."""
        return [self[key] for key in self.get_resolvable_fields() if key not in self.PUBLIC_KEYS]


@configspec
class SourceConfiguration(BaseConfiguration):
    """The keys every source section `[sources.<name>]` has. A source's own spec (in its package) derives from it,
    adds its keys and a `credentials` field, and may give a key a default of its own."""

    base_url: str = None
    """The API's base URL (plain `http://` only to loopback unless `[loyalty] allow_insecure_http`)."""
    customers: Optional[str] = None
    """CSV with a `customer_id` column, `sql: SELECT customer_id FROM ...` on the warehouse, or `api` (the source's
    customer list endpoint, CareCloud `GET /customers`); unset: `customers/<name>.csv`."""
    initial_start: pendulum.DateTime = pendulum.datetime(2024, 1, 1, tz="UTC")
    """Where a customer seen for the first time starts (ISO 8601; no offset = UTC)."""
    rate_limit: float = 20.0
    """Requests per second per credential, shared by every worker process; 0 = unlimited."""
    concurrency: int = 16
    """Customers in flight per credential."""
    max_attempts: int = 6
    """Attempts per request (exponential backoff with jitter between them)."""
    retry_backoff: float = 1.0
    """Seconds before the 2nd attempt, doubling per attempt, +-20 % jitter (`Retry-After` wins)."""
    request_timeout: float = 60.0
    """Seconds per request."""
    lookback: str = "3d"
    """How much before a customer's last window end is read again (late records): `3d`, `6h`, ..."""
    safety_lag: str = "10m"
    """Window end = now minus this."""
    selection: str = "all"
    """`all`: every listed customer every night; `changed`: the customers the source's change discovery names, the
    new and the failing ones, and a rolling sweep (docs/change-discovery.md; `loyalty-etl run --all` forces all)."""
    sweep_days: int = 7
    """With `selection = "changed"`: every customer is fully checked at least once every this many nights."""

    name: Annotated[Optional[str], NotResolved()] = None
    """The source's name (its registry name and section); set by `load_source`, not configurable."""
    credential_sets: Annotated[Optional[list], NotResolved()] = None
    """Every credential of the source in the order of its `[[sources.<name>.credentials]]` list (one, named
    "default", for a single `[sources.<name>.credentials]` table); set by `load_source`. `credentials` is the
    first."""

    @property
    def lookback_duration(self) -> pendulum.Duration:
        return parse_duration(self.lookback)

    @property
    def safety_lag_duration(self) -> pendulum.Duration:
        return parse_duration(self.safety_lag)

    def on_resolved(self) -> None:
        # fail at load time, naming the key, rather than in the middle of a run
        for key in ("lookback", "safety_lag"):
            try:
                parse_duration(self[key])
            except ConfigError as exc:
                raise ConfigError(f"[sources.{self.name}] {key}: {exc}") from None
        if self.selection not in ("all", "changed"):
            raise ConfigError(f"[sources.{self.name}] selection must be \"all\" or \"changed\", not {self.selection!r}")
        if self.sweep_days < 1:
            raise ConfigError(f"[sources.{self.name}] sweep_days must be 1 or more, not {self.sweep_days}")
        if not isinstance(self.initial_start, pendulum.DateTime):  # an explicit value given in code
            self.initial_start = parse_instant(self.initial_start, f"[sources.{self.name}] initial_start")
        self.initial_start = self.initial_start.in_timezone("UTC")
        if self.customers is None and self.name:
            self.customers = f"customers/{self.name}.csv"

    def require_credentials(self, how: str) -> Any:
        """The resolved credentials, or a `ConfigError` saying what to set (`how`)."""
        if self["credentials"] is None:
            raise ConfigError(f"{self.name} credentials missing or incomplete: set {how} in "
                              f"[sources.{self.name}.credentials] (.dlt/secrets.toml) or "
                              f"SOURCES__{str(self.name).upper()}__CREDENTIALS__<KEY>")
        return self["credentials"]


@configspec
class Settings(BaseConfiguration):
    """`[loyalty]`: the run's own settings, plus (not configurable here) each source's resolved section and the
    warehouse file, filled in by `load_settings()`. The warehouse itself: `pipelines.warehouse.open_warehouse`."""

    allow_insecure_http: bool = False
    """Allow plain `http://` base URLs to non-loopback hosts (credentials would travel unencrypted)."""
    alert_command: str = ""
    """Shell command run with the run summary on stdin when a run fails or is partial."""
    alert_webhook: str = ""
    """URL POSTed the JSON summary when a run fails or is partial."""
    dashboard_timezone: str = LOCAL_TIMEZONE
    """Zone the dashboard shows dates and times in (IANA name)."""
    extract_processes: str = "auto"
    """Worker processes that fetch and normalize: `auto` = one per core (at most 4, Linux only); 0 or 1 = in the
    run's own process."""
    batch_rows: int = 10_000
    """Rows per Arrow table handed to dlt (spans many customers)."""
    chunk_customers: int = 20_000
    """Customers per source per round (one load + bookkeeping commit; bounds what a crash loses)."""
    round_records: int = 400_000
    """A round also ends after this many fetched records (bounds memory)."""
    duckdb_memory_limit: str = "256MB"
    """The run's DuckDB buffer pool; bigger merges spill to disk (docs/performance.md)."""
    export_schema_path: str = "schemas"
    """Where the dlt schema YAML is exported, only for a warehouse under `./warehouse/`."""
    warehouse: str = "duckdb"
    """`duckdb`: the embedded DuckDB file (`[destination.duckdb] credentials`); `ducklake`: a DuckLake, catalog in
    PostgreSQL and data in a directory or bucket (`[destination.ducklake.credentials]` catalog, storage)."""

    sources: Annotated[Optional[dict], NotResolved()] = None
    """Each source's resolved `SourceConfiguration`, by name."""
    warehouse_file: Annotated[Optional[Path], NotResolved()] = None
    """The DuckDB file (`warehouse_path()`); with a lake, where dlt's working dirs and the lake's default local
    storage go (beside it)."""

    @property
    def worker_processes(self) -> int:
        """`extract_processes` as a number of processes for this machine (0 = none)."""
        return extract_processes(self.extract_processes)

    def source(self, name: str) -> SourceConfiguration:
        """The resolved section of source `name`."""
        return self.sources[name]

    def on_resolved(self) -> None:
        self.worker_processes  # noqa: B018 - a bad value fails at load time, naming the key
        if self.warehouse not in WAREHOUSE_KINDS:
            raise ConfigError(f"[loyalty] warehouse must be one of {', '.join(map(repr, WAREHOUSE_KINDS))}, not "
                              f"{self.warehouse!r}")


# ---------------------------------------------------------------------------------------------------- loading

def source_configspecs() -> dict[str, type[SourceConfiguration]]:
    """Each registered source's section spec (`SourceSpec.configspec`, `pipelines/registry.py`), by source name."""
    from pipelines import registry

    return {spec.name: spec.configspec for spec in registry.specs()}


def _without_streamlit_probe(fn: Callable[..., Any]) -> Callable[..., Any]:
    """dlt looks for Streamlit secrets (importing streamlit: ~2 s of every CLI start) whenever there is no
    .dlt/secrets.toml, as in tests and environment-only deployments. Settings never come from Streamlit here, so
    while resolving, `import streamlit` fails fast (dlt treats that as "not in Streamlit"). A process that already
    imported streamlit (the dashboard) is left alone."""
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


def config_keys(spec: type[BaseConfiguration]) -> dict[str, list[type[BaseConfiguration]]]:
    """The keys of `spec`'s section: each configurable field, with the spec classes of its subsection when it is
    one (several for a union of credential types)."""
    keys: dict[str, list[type[BaseConfiguration]]] = {}
    for key, hint in spec.get_resolvable_fields().items():
        if is_hint_not_resolvable(hint):
            continue
        inner = extract_inner_hint(hint)
        if is_union_type(inner) or get_config_if_union_hint(hint):
            keys[key] = list(get_all_types_of_class_in_union(hint, BaseConfiguration))
        elif is_base_configuration_inner_hint(inner):
            keys[key] = [inner]
        else:
            keys[key] = []
    return keys


def _env_name(path: tuple[str, ...]) -> str:
    return "__".join(path).upper()


def _section_values(path: tuple[str, ...]) -> Iterator[tuple[str, str, Any]]:
    """(key, where, value) of every key found directly in section `path`, in every config provider: the toml
    files' tables (`where` = the file) and the environment's `SECTION__KEY` variables (`where` = "environment"; a
    nested `SECTION__SUB__KEY` gives `sub` with a dict)."""
    import os

    import dlt
    from dlt.common.configuration.providers import EnvironProvider
    from dlt.common.configuration.providers.doc import BaseDocProvider

    for provider in dlt.config.config_providers:
        if isinstance(provider, EnvironProvider):
            prefix = _env_name(path) + "__"
            nested: dict[str, dict] = {}
            for name, value in os.environ.items():
                if name.startswith(prefix):
                    key, _, rest = name[len(prefix):].lower().partition("__")
                    if rest:
                        nested.setdefault(key, {})[rest] = value
                    else:
                        yield key, "environment", value
            for key, value in nested.items():
                yield key, "environment", value
        elif isinstance(provider, BaseDocProvider) and not provider.is_empty:
            node, _ = provider.get_value(path[-1], Any, None, *path[:-1])
            if isinstance(node, dict):
                where = provider.get_value_location(path[-1], None, *path[:-1]) or provider.name
                with contextlib.suppress(ValueError):
                    where = str(Path(where).resolve().relative_to(Path.cwd()))
                for key, value in node.items():
                    yield key, where, value


def _register_credentials(value: Any) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if key not in SourceCredentials.PUBLIC_KEYS:
                _register_credentials(item)
    elif isinstance(value, list):
        for item in value:
            _register_credentials(item)
    elif value is not None and not isinstance(value, (bool, int, float)):
        register_secret(str(value))


def _credential_list(path: tuple[str, ...]) -> tuple[list, str] | None:
    """The entries of `[[<path>.credentials]]` (a TOML array of tables, or a JSON array in the environment variable
    `<PATH>__CREDENTIALS`) and where they were found; None when the credentials are one table (or absent). The
    first provider that has credentials decides, environment before files, as dlt does for the single form."""
    import json

    for key, where, value in _section_values(path):
        if key != "credentials":
            continue
        if isinstance(value, str) and value.lstrip().startswith("["):
            try:
                value = json.loads(value)
            except ValueError:
                raise ConfigError(f"environment variable {_env_name(path + (key,))} is not a JSON array of credential "
                                  "objects (docs/credentials.md)") from None
        return (list(value), where) if isinstance(value, list) else None
    return None


def _credential_types(spec: type[BaseConfiguration]) -> list[type[BaseConfiguration]]:
    return config_keys(spec).get("credentials") or []


def _credential_entry(types: list[type[BaseConfiguration]], entry: Any, label: str) -> Any:
    """One `[[...credentials]]` entry resolved into the first credential type (of a union, in order, as dlt tries
    them) whose required keys it all has, values coerced as dlt coerces them."""
    from dlt.common.configuration.utils import deserialize_value
    from dlt.common.typing import is_optional_type

    if not isinstance(entry, dict):
        raise ConfigError(f"{label} is not a table of keys (docs/credentials.md)")
    missing_by_type = []
    for cls in types:
        instance = cls()
        missing = []
        for key, hint in cls.get_resolvable_fields().items():
            if key in entry and entry[key] != "":
                try:
                    instance[key] = deserialize_value(key, entry[key], extract_inner_hint(hint))
                except ConfigValueCannotBeCoercedException:
                    shown = "" if is_secret_hint(hint) or key not in SourceCredentials.PUBLIC_KEYS else f" = {entry[key]!r}"
                    raise ConfigError(f"{label} {key}{shown} is not a valid "
                                      f"{getattr(extract_inner_hint(hint), '__name__', hint)}") from None
            elif instance[key] is None and not is_optional_type(hint):
                missing.append(key)
        if missing:
            missing_by_type.append(", ".join(missing))
            continue
        try:
            instance.on_resolved()
        except ConfigFieldMissingException as exc:
            missing_by_type.append(", ".join(exc.fields))
            continue
        except ConfigError as exc:
            raise ConfigError(f"{label}: {exc}") from None
        instance.resolve()
        return instance
    raise ConfigError(f"{label}: {' or '.join(missing_by_type)} not set")


def _credential_sets(name: str, spec: type[BaseConfiguration]) -> list[Any] | None:
    """The `[[sources.<name>.credentials]]` entries resolved, in their order in the list (a customer's credential
    is its hash mod their number, an index into this order: `pipelines/credentials.py`; the Airflow DAG's pools
    follow the same order); None when the credentials are one table `[sources.<name>.credentials]` (dlt resolves
    that one, named "default" unless it says otherwise)."""
    listed = _credential_list(("sources", name))
    if listed is None:
        return None
    entries, where = listed
    if not entries:
        raise ConfigError(f"[[sources.{name}.credentials]] ({where}) is an empty list")
    types = _credential_types(spec)
    sets = []
    for i, entry in enumerate(entries, 1):
        label = f"[[sources.{name}.credentials]] entry {i} ({where})"
        if isinstance(entry, dict) and not entry.get("name"):
            raise ConfigError(f"{label}: set name = \"...\" (each of several credentials needs its own name)")
        sets.append(_credential_entry(types, entry, label))
    seen: dict[Any, str] = {}
    for creds in sets:
        if creds.name in {c.name for c in sets if c is not creds}:
            raise ConfigError(f"[[sources.{name}.credentials]]: the name {creds.name!r} is used twice")
        account = (type(creds), tuple(creds.secret_values()))
        if account in seen:
            raise ConfigError(f"[[sources.{name}.credentials]]: {seen[account]!r} and {creds.name!r} are the same API "
                              "user / key (one account has one request budget: list it once)")
        seen[account] = creds.name
    return sets


def _unknown_keys(path: tuple[str, ...], spec: type[BaseConfiguration] | list[type[BaseConfiguration]]) -> list[str]:
    """One message per key found in section `path` that `spec` (or any spec of a union) does not know, naming the
    nearest valid key. Values under a credentials section are registered as secrets on the way."""
    specs = spec if isinstance(spec, list) else [spec]
    known: dict[str, list[type[BaseConfiguration]]] = {}
    for s in specs:
        for key, sub in config_keys(s).items():
            known.setdefault(key, []).extend(sub)
    secret_section = any(issubclass(s, CredentialsConfiguration) for s in specs)
    secret_keys = {k for s in specs for k, hint in s.get_resolvable_fields().items() if is_secret_hint(hint)}
    problems: list[str] = []
    seen: set[tuple[str, str]] = set()
    for key, where, value in _section_values(path):
        if (secret_section and key not in SourceCredentials.PUBLIC_KEYS) or key in secret_keys:
            _register_credentials(value)  # a credentials section may also be one native value
        if key in known:
            if known[key] and isinstance(value, dict) and (key, "sub") not in seen:
                seen.add((key, "sub"))
                problems += _unknown_keys(path + (key,), known[key])
            elif key == "credentials" and known[key] and (key, "list") not in seen and (
                    listed := _credential_list(path)) is not None:
                seen.add((key, "list"))
                problems += _unknown_entry_keys(path, listed, known[key])
            continue
        if (key, where) in seen:
            continue
        seen.add((key, where))
        near = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
        if where == "environment":
            shown, names = f"environment variable {_env_name(path + (key,))}", [_env_name(path + (k,)) for k in known]
            if isinstance(value, dict):
                shown = f"environment variables {_env_name(path + (key,))}__*"
        else:
            shown, names = f"{key} in [{'.'.join(path)}] ({where})", list(known)
        hint = (f"did you mean {names[list(known).index(near[0])]}?" if near
                else f"valid keys: {', '.join(sorted(names))}")
        problems.append(f"unknown setting: {shown}; {hint}")
    return problems


def _unknown_entry_keys(path: tuple[str, ...], listed: tuple[list, str],
                        specs: list[type[BaseConfiguration]]) -> list[str]:
    """`_unknown_keys` for the entries of `[[<path>.credentials]]` (registering their secrets on the way)."""
    entries, where = listed
    known = [k for s in specs for k in config_keys(s)]
    problems = []
    for i, entry in enumerate(entries, 1):
        _register_credentials(entry)
        for key in entry if isinstance(entry, dict) else ():
            if key not in known:
                near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
                hint = f"did you mean {near[0]}?" if near else f"valid keys: {', '.join(sorted(set(known)))}"
                problems.append(f"unknown setting: {key} in [[{'.'.join(path)}.credentials]] entry {i} ({where}); "
                                f"{hint}")
    return problems


def _unknown_sources(names: list[str]) -> list[str]:
    """A `[sources.<x>]` section that is not a registered source but looks like one is a misspelt section."""
    problems = []
    for key, where, value in _section_values(("sources",)):
        if isinstance(value, dict) and key not in names:
            near = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
            if near and where == "environment":
                problems.append(f"unknown source: environment variables SOURCES__{key.upper()}__*; did you mean "
                                f"SOURCES__{near[0].upper()}__*?")
            elif near:
                problems.append(f"unknown source: [sources.{key}] ({where}); did you mean [sources.{near[0]}]?")
    return problems


S = TypeVar("S", bound=BaseConfiguration)


def _resolve(spec: S, path: tuple[str, ...], explicit: dict[str, Any] | None = None) -> S:
    """`spec` resolved in section `path`, with dlt's errors turned into one `ConfigError` naming the key."""
    where = f"[{'.'.join(path)}]"
    try:
        return resolve_configuration(spec, sections=path, explicit_value=explicit)
    except ConfigFieldMissingException as exc:
        missing = ", ".join(exc.fields)
        raise ConfigError(f"{where} {missing} not set: set it in .dlt/config.toml or as "
                          f"{_env_name(path + (exc.fields[0],))}") from None
    except ConfigValueCannotBeCoercedException as exc:
        from typing import Literal, get_args, get_origin

        hint = extract_inner_hint(exc.hint, preserve_literal=True)
        expected = (f"one of {', '.join(map(str, get_args(hint)))}" if get_origin(hint) is Literal
                    else f"a valid {getattr(hint, '__name__', hint)}")
        raise ConfigError(f"{where} {exc.field_name} = {exc.field_value!r} is not {expected}") from None
    except ConfigurationException as exc:
        field = getattr(exc, "field_name", None)
        raise ConfigError(f"{where} {field + ': ' if field else ''}{exc}") from None


@_without_streamlit_probe
def load_section(spec: S, path: tuple[str, ...], check_keys: bool = True, explicit: dict[str, Any] | None = None) -> S:
    """The instance `spec` of a spec class resolved in section `path` (e.g. ("sources", "capillary", "webhook")):
    keys it does not know refused first (naming the nearest valid one), then each dlt error turned into one
    `ConfigError` naming the key. `explicit`: values of fields already resolved (not looked up)."""
    if check_keys and (problems := _unknown_keys(path, type(spec))):
        raise ConfigError("\n".join(problems))
    return _resolve(spec, path, explicit)


def load_source(name: str, spec: type[SourceConfiguration], allow_insecure_http: bool = False,
                check_keys: bool = True) -> SourceConfiguration:
    """`[sources.<name>]` resolved into `spec`; its credentials registered for redaction."""
    config = spec()
    config.name = name
    if check_keys and (problems := _unknown_keys(("sources", name), spec)):
        raise ConfigError("\n".join(problems))
    listed = _credential_sets(name, spec)
    # several credentials: resolved here (dlt resolves one table per field), the first handed to dlt as the field's
    # value so that it does not try to read the list as one table
    config = load_section(config, ("sources", name), check_keys=False,
                          explicit={"credentials": listed[0]} if listed else None)
    config.credential_sets = listed if listed is not None else (
        [config.credentials] if getattr(config, "credentials", None) is not None else [])
    for creds in config.credential_sets:
        for value in creds.secret_values():
            _register_credentials(value)
    if config.credential_sets:
        config.credentials = config.credential_sets[0]
    config.base_url = check_base_url(config.base_url, name, allow_insecure_http)
    return config


def load_loyalty(check_keys: bool = True) -> Settings:
    """`[loyalty]` alone (no sources, no warehouse): for code that needs only those settings."""
    return load_section(Settings(), ("loyalty",), check_keys)


@_without_streamlit_probe
def load_settings() -> Settings:
    """Every setting: `[loyalty]`, each source's section, the warehouse. Raises `ConfigError` naming the key."""
    specs = source_configspecs()
    problems = _unknown_sources(list(specs)) + _unknown_keys(("loyalty",), Settings)
    for name, spec in specs.items():
        problems += _unknown_keys(("sources", name), spec)
    if problems:
        raise ConfigError("\n".join(problems))
    settings = load_loyalty(check_keys=False)
    settings.sources = {name: load_source(name, spec, settings.allow_insecure_http, check_keys=False)
                        for name, spec in specs.items()}
    settings.warehouse_file = warehouse_path()
    return settings


@_without_streamlit_probe
def warehouse_path() -> Path:
    """The DuckDB file every part of the project uses (pipeline, dbt, dashboard, status)."""
    import dlt

    raw = str(dlt.config.get("destination.duckdb.credentials") or DEFAULT_WAREHOUSE)
    if raw.startswith("duckdb:///"):
        raw = raw[len("duckdb:///"):]
    path = Path(raw).expanduser()
    return path if path.is_absolute() else (Path.cwd() / path)


# ---------------------------------------------------------------------------------------------------- reference

def setting_default(section: str, key: str) -> Any:
    """The default of `key` in `section` ("loyalty" or "sources.<name>"), from its spec class."""
    spec = Settings if section == "loyalty" else source_configspecs()[section.removeprefix("sources.")]
    return defaults(spec)[key]


def field_docs(spec: type) -> dict[str, str]:
    """The docstring written under each field of `spec` and its bases (PEP 257 attribute docstrings)."""
    docs: dict[str, str] = {}
    for cls in reversed(spec.__mro__):
        if cls.__module__.startswith("dlt.") or cls is object:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for stmt, nxt in zip(body, body[1:]):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def defaults(spec: type[BaseConfiguration]) -> dict[str, Any]:
    """Each configurable field's default in `spec` (None = none); a subsection is left out."""
    instance = spec()
    return {key: instance[key] for key, sub in config_keys(spec).items() if not sub}


def _shown(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, pendulum.DateTime):
        return value.isoformat()
    if value == "":
        return '""'
    return str(value)


def reference_table() -> str:
    """The README's configuration table: every section, key, default and meaning, from the specs."""
    rows = ["| section | key | default | meaning |", "|---|---|---|---|"]

    def section(title: str, spec: type[BaseConfiguration], base: type | None = None) -> None:
        docs, values = field_docs(spec), defaults(spec)
        base_values = defaults(base) if base else {}
        for key, sub in config_keys(spec).items():
            for sub_spec in sub:
                if issubclass(sub_spec, CredentialsConfiguration):
                    keys = ", ".join(f"`{k}`" for k in config_keys(sub_spec)
                                     if k not in SourceCredentials.PUBLIC_KEYS)
                    rows.append(f"| `{title[:-1]}.{key}]` (secret) | {keys} | | "
                                f"{' '.join((sub_spec.__doc__ or '').split())} |")
                else:
                    section(f"{title[:-1]}.{key}]", sub_spec)
            if sub:
                continue
            if base and key in base_values and values[key] == base_values[key] and key in field_docs(base):
                continue  # the common keys are listed once, under [sources.<name>]
            rows.append(f"| `{title}` | `{key}` | `{_shown(values[key])}` | {docs.get(key, '')} |")

    section("[sources.<name>]", SourceConfiguration)
    section("[sources.<name>.credentials]", SourceCredentials)  # the keys every credential has (not secret)
    for name, spec in source_configspecs().items():
        section(f"[sources.{name}]", spec, SourceConfiguration)
    rows.append(f"| `[destination.duckdb]` | `credentials` | `{DEFAULT_WAREHOUSE}` | the warehouse file; its name is "
                "the DuckDB catalog, so it differs from every schema name |")
    rows.append("| `[destination.ducklake.credentials]` (secret) | `catalog`, `storage`, `ducklake_name`, "
                "`metadata_schema` | `storage`: `warehouse/<ducklake_name>.files`; `ducklake_name`: `ducklake` | "
                "with `[loyalty] warehouse = \"ducklake\"`: dlt's own ducklake settings; `catalog` a PostgreSQL URL, "
                "`storage` a local directory or `s3://` bucket URL (pipelines/lake.py) |")
    section("[loyalty]", Settings)
    return "\n".join(rows)


if __name__ == "__main__":
    print(reference_table())
