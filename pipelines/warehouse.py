"""One object per warehouse, used by every part (runner, state, models, status, check, dashboard, backfill, migrate,
shards): `open_warehouse(settings)` by `[loyalty] warehouse`, or `configured_warehouse()` for readers that do not
load every setting.

- `FileWarehouse` (`warehouse = "duckdb"`, the default): the embedded DuckDB file of `[destination.duckdb]
  credentials`, exactly as before: a lock file beside it (`RunLock`), the writer opened with a bounded retry while a
  reader holds it (`connect_writer`), dlt's duckdb destination on the run's own connection with its staging dataset
  in memory (`pipelines/destination.py`).
- `LakeWarehouse` (`warehouse = "ducklake"`): a DuckLake, catalog in PostgreSQL and data in Parquet files
  (`pipelines/lake.py`): connections are in-memory DuckDBs with the lake attached (READ_ONLY for readers) and made
  the default catalog; raw loads go through dlt's own ducklake destination; the run lock is a PostgreSQL advisory
  lock in the catalog database, so it holds across machines.

In both, `loyalty_raw.runs` or `loyalty.fct_points_ledger` resolve in the warehouse on a connection from
`connect()`: the code above this module does not know which kind it talks to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Protocol

import duckdb

from pipelines.errors import WarehouseBusy, WarehouseMissing, WarehouseUnavailable

RAW_DATASET = "loyalty_raw"
FILE_ENV = "LOYALTY_WAREHOUSE_PATH"  # the embedded file's path for sql/profiles.yml


class Lock(Protocol):
    def acquire(self) -> "Lock": ...
    def release(self) -> None: ...
    def __enter__(self) -> "Lock": ...
    def __exit__(self, *exc: object) -> None: ...


class Warehouse:
    """The contract (TEAM.md, contract 2). Subclasses: `FileWarehouse`, `LakeWarehouse`."""

    kind: Literal["duckdb", "ducklake"]
    lock_path: Path        # the embedded file's single-run lock file (a lake's lock is in its catalog: `lock()`)
    pipelines_dir: Path    # root of dlt's working dirs (load packages not yet loaded, the pipeline's local state)

    def describe(self) -> str:
        """The warehouse for messages: a file path, or the lake without its password."""
        raise NotImplementedError

    def exists(self) -> bool:
        raise NotImplementedError

    def connect(self, read_only: bool = False, wait_s: float = 30.0) -> duckdb.DuckDBPyConnection:
        """`wait_s`: how long a writer waits for readers of the embedded file to let go (a lake never waits)."""
        raise NotImplementedError

    def destination(self, conn: duckdb.DuckDBPyConnection) -> Any:
        """The dlt destination that loads raw tables into this warehouse (`conn`: the run's own connection)."""
        raise NotImplementedError

    def dbt_env(self) -> dict[str, str]:
        """Environment variables sql/profiles.yml reads to reach this warehouse."""
        raise NotImplementedError

    def lock(self, scope: str = "run") -> Lock:
        """The single-run lock of `scope` ("run", "run:<source>:shard K/N", "merge"), not yet acquired:
        `with wh.lock("run"): ...` or `.acquire()` / `.release()`; a holder elsewhere makes `acquire` raise
        `pipelines.lock.RunLocked` at once."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


class FileWarehouse(Warehouse):
    kind = "duckdb"

    def __init__(self, path: Path, memory_limit: str | None = "256MB") -> None:
        self.path = Path(path)
        self.memory_limit = memory_limit
        self.lock_path = Path(str(self.path) + ".lock")
        self.pipelines_dir = self.path.parent / ".dlt-pipelines"

    def describe(self) -> str:
        return str(self.path)

    def exists(self) -> bool:
        return self.path.exists()

    def connect(self, read_only: bool = False, wait_s: float = 30.0) -> duckdb.DuckDBPyConnection:
        """The writer: retries while a reader holds the file, up to `wait_s` (`connect_writer`). A reader: at once, or
        `WarehouseBusy` while a load holds the file, `WarehouseMissing` when there is no file."""
        if not read_only:
            from pipelines.lock import connect_writer

            return connect_writer(self.path, wait_s=wait_s, memory_limit=self.memory_limit)
        if not self.path.exists():
            raise WarehouseMissing(f"warehouse {self.path} does not exist yet; load it first with `loyalty-etl run`")
        try:
            return duckdb.connect(str(self.path), read_only=True)
        except duckdb.IOException as exc:
            text = str(exc).lower()
            if "lock" in text or "resource temporarily unavailable" in text:
                raise WarehouseBusy(f"warehouse {self.path} is being written by another process (a load); "
                                    "retry when it has finished") from None
            raise WarehouseUnavailable(f"cannot open {self.path}: {exc}") from None

    def destination(self, conn: duckdb.DuckDBPyConnection) -> Any:
        from pipelines.destination import warehouse_destination

        return warehouse_destination(conn, RAW_DATASET)

    def dbt_env(self) -> dict[str, str]:
        return {FILE_ENV: str(self.path.resolve())}

    def lock(self, scope: str = "run") -> Lock:
        # one file, one writer: every scope is the same lock (shards of the embedded file run one after another)
        from pipelines.lock import RunLock

        return RunLock(self.path)


class LakeWarehouse(Warehouse):
    kind = "ducklake"

    def __init__(self, config: Any, pipelines_dir: Path, memory_limit: str | None = "256MB") -> None:
        self.config = config  # pipelines.lake.LakeConfig
        self.memory_limit = memory_limit
        self.pipelines_dir = Path(pipelines_dir)
        self.lock_path = self.pipelines_dir / "run.lock"  # unused by `lock()`: the lake's lock is in its catalog

    def describe(self) -> str:
        return self.config.describe()

    def exists(self) -> bool:
        from pipelines import lake

        return lake.exists(self.config)

    def connect(self, read_only: bool = False, wait_s: float = 30.0) -> duckdb.DuckDBPyConnection:
        from pipelines import lake

        return lake.connect(self.config, read_only=read_only, memory_limit=self.memory_limit)

    def destination(self, conn: duckdb.DuckDBPyConnection) -> Any:
        """dlt's ducklake destination on this lake's credentials, its SQL run on `conn` (a `connect()` of this
        lake) with the staging dataset in memory (pipelines/lake_destination.py says why)."""
        from pipelines.lake_destination import lake_destination

        return lake_destination(self.config.credentials, conn)

    def dbt_env(self) -> dict[str, str]:
        """What sql/profiles.yml's `ducklake` target needs: the catalog URL (with its password: for the dbt
        call's environment only), the lake's name (the ATTACH alias and dbt's database), data path and metadata
        schema. The DBT_ENV_SECRET_ prefix makes dbt mask a value wherever it writes it; DuckDB's errors quote the
        URL, and the password alone (as given and as spelled in the URL) is there only to be masked too."""
        from urllib.parse import unquote, urlsplit

        c = self.config
        url = c.postgres_url
        in_url = urlsplit(url).password or ""
        return {
            "LOYALTY_WAREHOUSE_KIND": self.kind,
            "DBT_ENV_SECRET_LOYALTY_LAKE_CATALOG": url,
            "DBT_ENV_SECRET_LOYALTY_LAKE_PASSWORD": unquote(in_url),
            "DBT_ENV_SECRET_LOYALTY_LAKE_PASSWORD_IN_URL": in_url,
            "LOYALTY_LAKE_NAME": c.name,
            "LOYALTY_LAKE_DATA_PATH": c.storage_url,
            "LOYALTY_LAKE_METADATA_SCHEMA": c.metadata_schema,
        }

    def lock(self, scope: str = "run") -> Lock:
        from pipelines.lake import AdvisoryLock

        return AdvisoryLock(self.config, scope)


def open_warehouse(settings: Any) -> Warehouse:
    """The warehouse `settings` name (`[loyalty] warehouse`; the file from `settings.warehouse_file`)."""
    from pipelines.config import WAREHOUSE_KINDS, ConfigError, warehouse_path

    kind = getattr(settings, "warehouse", "duckdb") or "duckdb"
    file = getattr(settings, "warehouse_file", None) or warehouse_path()
    memory_limit = getattr(settings, "duckdb_memory_limit", None)
    if kind == "duckdb":
        return FileWarehouse(file, memory_limit=memory_limit)
    if kind == "ducklake":
        from pipelines.lake import load_lake_config

        config = load_lake_config(file.parent)
        # dlt's working dirs stay on the loading machine, beside where the embedded file would be, in a folder of
        # their own per lake: the file mode's pipeline state (destination duckdb) never mixes with the lake's
        return LakeWarehouse(config, file.parent / f".dlt-pipelines-{config.name}", memory_limit=memory_limit)
    raise ConfigError(f"[loyalty] warehouse must be one of {', '.join(WAREHOUSE_KINDS)}, not {kind!r}")


def configured_warehouse() -> Warehouse:
    """The configured warehouse, from `[loyalty]` and the destination settings only (no source sections): for
    readers such as the dashboard and `status`."""
    from pipelines.config import load_loyalty, warehouse_path

    settings = load_loyalty()
    settings.warehouse_file = warehouse_path()
    return open_warehouse(settings)
