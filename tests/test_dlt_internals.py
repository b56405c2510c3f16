"""The parts of dlt this project uses that are NOT dlt's public API, each checked with a message that names it.

pyproject.toml pins dlt to the minor release these were written against (`~=1.31.0`). Moving the pin is a
deliberate step: install the new dlt, run this file, fix what it names, then run the load tests
(test_destination exercises the in-memory staging for real, test_pipeline, test_reliability_*), and only then move the pin and PINNED_MINOR together.

What is used, and where:
- pipelines/destination.py (dlt's staging dataset in an in-memory database):
  - the modules `dlt.destinations.impl.duckdb.{duck,factory,sql_client}` and their classes `DuckDbClient`,
    `duckdb` (the destination factory) and `DuckDbSqlClient`;
  - `DuckDbSqlClient.catalog_name(quote=True, casefold=True)`, `.is_staging_dataset_active`,
    `.with_alternative_dataset_name(dataset_name)` (a context manager that sets `.dataset_name`),
    `.open_connection()`, `.use_dataset()`, `.capabilities.escape_identifier`, `.dataset_name` and
    `.staging_dataset_name` attributes;
  - `DuckDbClient.__init__` building its SQL client as `self.sql_client` (the subclass swaps its `__class__`);
  - the destination factory's `client_class` and `destination_type` properties, and `duckdb(<connection>)`;
  - the staging dataset naming `<dataset>_staging` (`staging_dataset_name_layout`, dropped from old warehouses).
- pipelines/lake_destination.py (dlt's ducklake destination on the run's connection, staging in memory): the
  modules `dlt.destinations.impl.ducklake.{ducklake,factory,sql_client}` and `DuckLakeClient`, `ducklake`,
  `DuckLakeSqlClient`; `DuckLakeClient.__init__` building `self.sql_client`; `DuckLakeSqlClient.open_connection()`,
  `.close_connection()`, `.use_dataset()`, `.credentials.ducklake_name` and the DuckDbSqlClient parts above; the
  factory's `client_class`/`destination_type` and its `loader_parallelism_strategy` keyword. pipelines/lake.py:
  `DuckLakeSqlClient.build_attach_statement(ducklake_name=, metadata_schema=, catalog=, storage_url=)`.
- pipelines/logs.py: dlt's logger is named "dlt" (its run context name) and `dlt.common.logger._create_logger`
  reuses the first handler it finds on that logger and calls `setFormatter` on it (our handler keeps its own).
"""

from __future__ import annotations

import inspect
import logging
import re
from importlib.metadata import version
from pathlib import Path

import pytest

PINNED_MINOR = (1, 31)
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
UPGRADE = ("pipelines/destination.py, lake_destination.py, lake.py / pipelines/logs.py rely on it (see this file's docstring); adapt them to the "
           "new dlt, then move the pin in pyproject.toml and PINNED_MINOR here")


def _installed_minor() -> tuple[int, int]:
    major, minor = version("dlt").split(".")[:2]
    return int(major), int(minor)


def test_installed_dlt_is_the_pinned_minor() -> None:
    pin = re.search(r'"dlt\[[^\]]*\]~=(\d+)\.(\d+)\.\d+"', PYPROJECT.read_text(encoding="utf-8"))
    assert pin, "pyproject.toml must pin dlt to one minor release (dlt[duckdb,parquet]~=X.Y.0)"
    assert (int(pin.group(1)), int(pin.group(2))) == PINNED_MINOR, \
        f"pyproject.toml pins dlt {pin.group(1)}.{pin.group(2)} but this test guards {PINNED_MINOR}: move both together"
    assert _installed_minor() == PINNED_MINOR, (
        f"dlt {version('dlt')} is installed; the private-API uses were written against "
        f"{PINNED_MINOR[0]}.{PINNED_MINOR[1]}.x. {UPGRADE}")


def _private(what: str) -> str:
    return f"dlt {version('dlt')}: {what} changed or is gone. {UPGRADE}"


def _params(func) -> list[str]:
    return [p for p in inspect.signature(func).parameters if p != "self"]


def test_duckdb_destination_internals_used_by_in_memory_staging() -> None:
    try:
        from dlt.destinations.impl.duckdb.duck import DuckDbClient
        from dlt.destinations.impl.duckdb.factory import duckdb as DuckDbDestination
        from dlt.destinations.impl.duckdb.sql_client import DuckDbSqlClient
    except ImportError as exc:
        pytest.fail(_private(f"the module layout dlt.destinations.impl.duckdb.{{duck,factory,sql_client}} ({exc})"))

    sig = inspect.signature(DuckDbSqlClient.catalog_name)
    assert _params(DuckDbSqlClient.catalog_name) == ["quote", "casefold"] and all(
        sig.parameters[p].default is True for p in ("quote", "casefold")), \
        _private(f"DuckDbSqlClient.catalog_name signature (now {sig})")
    assert isinstance(inspect.getattr_static(DuckDbSqlClient, "is_staging_dataset_active", None), property), \
        _private("the property DuckDbSqlClient.is_staging_dataset_active")
    alt = getattr(DuckDbSqlClient, "with_alternative_dataset_name", None)
    assert alt is not None and _params(alt) == ["dataset_name"], \
        _private("DuckDbSqlClient.with_alternative_dataset_name(dataset_name)")
    for name in ("open_connection", "use_dataset"):
        method = getattr(DuckDbSqlClient, name, None)
        assert method is not None and _params(method) == [], _private(f"DuckDbSqlClient.{name}() (no arguments)")
    init = _params(DuckDbSqlClient.__init__)
    assert init[:2] == ["dataset_name", "staging_dataset_name"], \
        _private(f"DuckDbSqlClient.__init__ (dataset_name, staging_dataset_name, ...) (now {init})")
    assert "self.sql_client" in inspect.getsource(DuckDbClient.__init__), \
        _private("DuckDbClient.__init__ building its SQL client as self.sql_client")
    for name in ("client_class", "destination_type"):
        assert isinstance(inspect.getattr_static(DuckDbDestination, name, None), property), \
            _private(f"the destination factory property duckdb.{name}")
    first = _params(DuckDbDestination.__init__)[0]
    assert first == "credentials", _private(f"duckdb(credentials, ...) taking a connection first (now {first!r})")

    from dlt.destinations.impl.duckdb.configuration import DuckDbClientConfiguration

    assert DuckDbClientConfiguration().staging_dataset_name_layout == "%s_staging", \
        _private("the staging dataset name layout '%s_staging'")


def test_dlt_logger_keeps_our_handler_and_formatter() -> None:
    import dlt
    from dlt.common import logger as dlt_logger
    from dlt.common.configuration.specs import RuntimeConfiguration

    from pipelines.logs import setup_logging

    assert dlt.current.run_context().name == "dlt", _private("the name of dlt's logger (its run context name)")
    create = getattr(dlt_logger, "_create_logger", None)
    assert create is not None and _params(create)[:3] == ["logger_name", "level", "fmt"], \
        _private("dlt.common.logger._create_logger(logger_name, level, fmt, ...)")
    saved = logging.getLogger("dlt").handlers[:], logging.getLogger().handlers[:]
    try:
        setup_logging("json")
        ours = logging.getLogger("dlt").handlers[0]
        formatter = ours.formatter
        create("dlt", "WARNING", RuntimeConfiguration().log_format, "test", {})
        handlers = logging.getLogger("dlt").handlers
        assert handlers[0] is ours and ours.formatter is formatter, \
            _private("_create_logger reusing the first handler of the 'dlt' logger (and setting its formatter)")
    finally:
        logging.getLogger("dlt").handlers[:], logging.getLogger().handlers[:] = saved



def test_ducklake_destination_internals_used_on_the_runs_connection() -> None:
    try:
        from dlt.destinations.impl.ducklake.ducklake import DuckLakeClient
        from dlt.destinations.impl.ducklake.factory import ducklake as DuckLakeDestination
        from dlt.destinations.impl.ducklake.sql_client import DuckLakeSqlClient
    except ImportError as exc:
        pytest.fail(_private(f"the module layout dlt.destinations.impl.ducklake.{{ducklake,factory,sql_client}} ({exc})"))

    assert "self.sql_client" in inspect.getsource(DuckLakeClient.__init__), \
        _private("DuckLakeClient.__init__ building its SQL client as self.sql_client")
    for name in ("open_connection", "close_connection", "use_dataset"):
        method = getattr(DuckLakeSqlClient, name, None)
        assert method is not None and _params(method) == [], _private(f"DuckLakeSqlClient.{name}() (no arguments)")
    for name in ("client_class", "destination_type"):
        assert isinstance(inspect.getattr_static(DuckLakeDestination, name, None), property), \
            _private(f"the destination factory property ducklake.{name}")
    attach = inspect.signature(DuckLakeSqlClient.build_attach_statement).parameters
    assert {"ducklake_name", "metadata_schema", "catalog", "storage_url"} <= set(attach), \
        _private(f"DuckLakeSqlClient.build_attach_statement keywords (now {list(attach)})")
    from dlt.common.destination.capabilities import DestinationCapabilitiesContext

    assert "loader_parallelism_strategy" in DestinationCapabilitiesContext.__dataclass_fields__ or hasattr(
        DestinationCapabilitiesContext(), "loader_parallelism_strategy"), \
        _private("the capability loader_parallelism_strategy (passed to the ducklake factory)")
