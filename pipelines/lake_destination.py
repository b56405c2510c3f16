"""dlt's ducklake destination on the run's own lake connection, with its staging dataset in memory.

dlt's ducklake destination opens a new in-memory DuckDB per SQL client (a load opens one per job, merge and state
step: about ten per round), and each loads the ducklake and postgres extensions (~75 MB of signed binaries
verified on every load) and ATTACHes the lake again (a catalog round trip); a round of five tables then spent ~25 s
in `load` against ~4 s on one connection (same rows, same machine: docs/decisions/session-7-lake.md). Here every
SQL client is a cursor of the run's own lake connection (`Warehouse.connect()`): the same DuckDB instance, the
lake attached once, the run's memory limit; jobs run one at a time (`loader_parallelism_strategy = "sequential"`).

dlt's staging dataset (`loyalty_raw_staging`, the rows of a merge load before they are merged) lives in an
in-memory database attached to that instance, as in the embedded file (pipelines/destination.py says why): in the
lake it would be Parquet files and catalog snapshots written and deleted on every round. Everything else is dlt's
own ducklake destination: its copy jobs, its MERGE (upsert without DELETE) and delete-insert SQL.
"""

from __future__ import annotations

from typing import Any

import duckdb
from dlt.destinations.impl.ducklake.ducklake import DuckLakeClient
from dlt.destinations.impl.ducklake.factory import ducklake as DuckLakeDestination
from dlt.destinations.impl.ducklake.sql_client import DuckLakeSqlClient

from pipelines.destination import STAGING_CATALOG, staging_in_memory, with_sql_client


class _SharedLakeSqlClient(staging_in_memory(DuckLakeSqlClient)):  # type: ignore[misc]
    shared: duckdb.DuckDBPyConnection
    main_dataset: str

    def open_connection(self) -> duckdb.DuckDBPyConnection:
        # a cursor: a connection of its own (own transaction, USE and search_path) to the same instance
        self._conn = self.shared.cursor()
        self._conn.execute(f"USE {self.capabilities.escape_identifier(self.credentials.ducklake_name)}")
        self.use_dataset()
        return self._conn

    def use_dataset(self) -> None:
        # the search path stays on the lake (a path into the staging catalog would make it the default catalog)
        with self.with_alternative_dataset_name(self.main_dataset):
            try:
                super().use_dataset()
            except duckdb.Error:  # the dataset does not exist yet: dlt creates it, qualified
                pass

    def close_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.execute("ROLLBACK")  # this cursor's own open transaction, if any
            except duckdb.Error:
                pass
            self._conn.close()
            self._conn = None


def lake_destination(credentials: Any, conn: duckdb.DuckDBPyConnection) -> DuckLakeDestination:
    """dlt's ducklake destination with every SQL client a cursor of `conn` (a `LakeWarehouse.connect()`
    connection) and the staging dataset in memory."""
    conn.execute(f"ATTACH IF NOT EXISTS ':memory:' AS {STAGING_CATALOG}")

    destination = with_sql_client(DuckLakeDestination, DuckLakeClient, _SharedLakeSqlClient, shared=conn)
    return destination(credentials=credentials, loader_parallelism_strategy="sequential")
