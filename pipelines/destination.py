"""The dlt DuckDB destination of a run, with dlt's staging dataset in memory instead of in the warehouse file.

Why: a merge load first copies every Parquet file into a staging table, then MERGEs staging into the final table.
dlt keeps the staging dataset (`loyalty_raw_staging`) as a schema of the warehouse itself, so every staged row
was written to the WAL, checkpointed into the file with the rest, and deleted again by the next load: the copy
into staging cost several times the CPU of a copy into an in-memory database, and the file grew by the staging
copies (docs/decisions/session-4-staging-in-memory.md, docs/decisions/design-figures.md).
The staged rows are worth nothing once their load committed: a crashed load is redone from the load package's
files, which dlt keeps until the package is loaded.

How: the run's connection attaches an in-memory database (`STAGING_CATALOG`) and dlt's SQL client names the staging
dataset inside it (`"dlt_staging_memory"."loyalty_raw_staging"."<table>"`); everything else is dlt's own duckdb
destination. dlt has no setting for the staging dataset's catalog, hence the small subclasses. Memory: the
staged rows of one round (`round_records`) count against `duckdb_memory_limit`, beyond which DuckDB spills to its
temp directory.
"""

from __future__ import annotations

from typing import Any

import duckdb
from dlt.destinations.impl.duckdb.duck import DuckDbClient
from dlt.destinations.impl.duckdb.factory import duckdb as DuckDbDestination
from dlt.destinations.impl.duckdb.sql_client import DuckDbSqlClient

STAGING_CATALOG = "dlt_staging_memory"  # not a schema name anywhere: dbt models live in loyalty_staging


def staging_in_memory(sql_client: type) -> type:
    """dlt's SQL client class `sql_client` with the staging dataset named inside `STAGING_CATALOG`. (A subclass,
    not a mixin: the client dlt built is re-classed in place, which needs one line of single inheritance.)"""

    class _StagingInMemory(sql_client):  # type: ignore[misc, valid-type]
        def catalog_name(self, quote: bool = True, casefold: bool = True) -> str | None:
            if not self.is_staging_dataset_active:
                return super().catalog_name(quote, casefold)
            return self.capabilities.escape_identifier(STAGING_CATALOG) if quote else STAGING_CATALOG

    return _StagingInMemory


class _InMemoryStagingSqlClient(staging_in_memory(DuckDbSqlClient)):  # type: ignore[misc]
    main_dataset: str

    # dlt points a connection's `search_path` at the active dataset; a search path in another catalog would also
    # make that catalog the default one, and the warehouse's own two-part names ("loyalty_raw"."table") would
    # then resolve in memory. Every name dlt writes is qualified, so the search path stays on the warehouse.
    def open_connection(self) -> duckdb.DuckDBPyConnection:
        with self.with_alternative_dataset_name(self.main_dataset):
            return super().open_connection()

    def use_dataset(self) -> None:
        with self.with_alternative_dataset_name(self.main_dataset):
            super().use_dataset()


def with_sql_client(factory: type, client_class: type, sql_client_class: type, **attrs: Any) -> type:
    """A subclass of dlt's destination `factory` whose clients (`client_class`, the factory's own) get
    `sql_client_class` as their SQL client's class (a subclass of the one dlt builds: the same object gets its
    methods), with `attrs` and `main_dataset` set on it. dlt has no setting for the SQL client's class. The
    destination type stays dlt's own: the pipeline's state records it."""

    class _Client(client_class):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.sql_client.__class__ = sql_client_class
            for name, value in attrs.items():
                setattr(self.sql_client, name, value)
            self.sql_client.main_dataset = self.sql_client.dataset_name

    class _Destination(factory):  # type: ignore[misc, valid-type]
        @property
        def client_class(self) -> type:
            return _Client

        @property
        def destination_type(self) -> str:
            return factory().destination_type

    return _Destination


InMemoryStagingDuckDb = with_sql_client(DuckDbDestination, DuckDbClient, _InMemoryStagingSqlClient)


def warehouse_destination(conn: duckdb.DuckDBPyConnection, dataset: str) -> DuckDbDestination:
    """dlt's duckdb destination on `conn`, staging in an in-memory database attached to it. The staging schema
    that warehouses made by earlier versions keep in the file (`<dataset>_staging`, the last load's rows) is
    dropped: nothing reads it any more."""
    conn.execute(f"ATTACH IF NOT EXISTS ':memory:' AS {STAGING_CATALOG}")
    (catalog,) = conn.execute("SELECT current_database()").fetchone()  # type: ignore[misc]
    conn.execute(f'DROP SCHEMA IF EXISTS "{catalog}"."{dataset}_staging" CASCADE')
    return InMemoryStagingDuckDb(conn)
