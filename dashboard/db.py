"""Read-only access to the warehouse for the dashboard: the embedded DuckDB file or a DuckLake
(`pipelines.warehouse`, `[loyalty] warehouse`).

The file: DuckDB allows one writing process or many reading ones, never both (docs/architecture.md, "Readers and
the single writer"). The load holds the file as the writer while it writes, so the dashboard opens the file
`read_only=True` for each query and closes it straight away: it never holds the file between requests (which would
make the load wait), and while a load holds it the open fails at once with a lock error, which we turn into
`WarehouseBusy` instead of waiting.

The lake: a reader never blocks a load nor waits for one (each query reads the last committed snapshot), so one
read-only attachment is kept per process and every query runs on a cursor of its own. Why not one per query as for
the file: attaching costs a round of catalog queries and the extensions' load, seconds against milliseconds for a
query (docs/warehouse.md). A query that fails on it drops it, so the next one attaches again (a catalog restart).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd

from pipelines.errors import WarehouseBusy, WarehouseMissing, WarehouseUnavailable
from pipelines.windows import LOCAL_TIMEZONE

if TYPE_CHECKING:
    import duckdb

    from pipelines.warehouse import Warehouse

__all__ = ["BUSY_MESSAGE", "Result", "WarehouseBusy", "WarehouseMissing", "WarehouseUnavailable", "describe",
           "query", "timezone", "warehouse"]

WAREHOUSE_ENV = "LOYALTY_WAREHOUSE_PATH"
TIMEZONE_ENV = "LOYALTY_DASHBOARD_TIMEZONE"
DEFAULT_TIMEZONE = LOCAL_TIMEZONE  # `[loyalty] dashboard_timezone` when the app is started by hand

BUSY_MESSAGE = "A load is running — showing nothing new; retry shortly."

_configured: "Warehouse | None" = None


def warehouse() -> "Warehouse":
    """The file `loyalty-etl dashboard` passed us (`LOYALTY_WAREHOUSE_PATH`), else the project's own setting (a lake,
    or `streamlit run` by hand), resolved once per process."""
    global _configured
    from pipelines.warehouse import FileWarehouse, configured_warehouse

    env = os.environ.get(WAREHOUSE_ENV)
    if env:
        return FileWarehouse(Path(env).expanduser().resolve())
    if _configured is None:
        from pipelines.config import ConfigError
        from pipelines.logs import redact

        try:
            _configured = configured_warehouse()
        except ConfigError as exc:
            raise WarehouseUnavailable(f"The warehouse settings are not usable: {redact(str(exc))}") from exc
    return _configured


def describe() -> str:
    """The warehouse for the page (a path, or the lake without its password); the reason when it is not usable."""
    try:
        return warehouse().describe()
    except WarehouseUnavailable as exc:
        return str(exc)


def timezone() -> str:
    """The display zone; an unknown name falls back to the default rather than breaking every page."""
    name = os.environ.get(TIMEZONE_ENV) or DEFAULT_TIMEZONE
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return DEFAULT_TIMEZONE
    return name


@dataclass(frozen=True)
class Result:
    frame: pd.DataFrame
    stale: bool = False   # served from the last good read because a load holds the file right now


# Last good result per (warehouse, query, params), process-wide: while a load holds the file a page can still show
# what it showed a moment ago, labelled as such, rather than nothing. Bounded so a long-lived server does not grow.
_last_good: dict[tuple[str, str, str, tuple[Any, ...]], pd.DataFrame] = {}
_last_good_lock = threading.Lock()
_LAST_GOOD_MAX = 256

# The lake's kept read-only attachment, by the lake's description (one lake per process in practice).
_lake: dict[str, "duckdb.DuckDBPyConnection"] = {}
_lake_lock = threading.Lock()


def query(sql: str, params: tuple[Any, ...] = (), path: "Path | Warehouse | None" = None) -> Result:
    """Run one read-only query and return a DataFrame; timestamps with a zone come back in the display zone.
    `path`: a file or a Warehouse (default: `warehouse()`)."""
    import duckdb

    from pipelines.logs import redact
    from pipelines.warehouse import FileWarehouse

    wh = warehouse() if path is None else path if hasattr(path, "connect") else FileWarehouse(Path(path))
    zone = timezone()
    key = (wh.describe(), zone, sql, tuple(params))
    try:
        con = _lake_cursor(wh) if wh.kind == "ducklake" else wh.connect(read_only=True)
    except WarehouseBusy as exc:
        with _last_good_lock:
            previous = _last_good.get(key)
        if previous is not None:
            return Result(previous.copy(), stale=True)
        raise WarehouseBusy(BUSY_MESSAGE) from exc
    except WarehouseMissing as exc:
        raise WarehouseMissing(
            f"No warehouse at {wh.describe()}. Load one first: `loyalty-etl demo` (sandbox) or `loyalty-etl run`."
        ) from exc
    except WarehouseUnavailable as exc:
        raise WarehouseUnavailable(f"Cannot open the warehouse: {redact(str(exc))}") from exc
    except duckdb.Error as exc:   # e.g. a file that is not a DuckDB database
        raise WarehouseUnavailable(f"Cannot open the warehouse at {wh.describe()}: {redact(str(exc))}") from exc
    try:
        # Timestamps with a zone are converted by DuckDB to the session zone on the way out, so every instant a
        # page shows is already local time.
        con.execute(f"SET TimeZone = '{zone}'")   # a validated IANA name, so no quoting issue
        frame = con.execute(sql, list(params)).df()
    except duckdb.CatalogException as exc:
        raise WarehouseMissing(
            "The marts this page reads are not built yet (run `loyalty-etl models`). "
            f"DuckDB said: {str(exc).splitlines()[0]}"
        ) from exc
    except duckdb.Error as exc:
        if wh.kind == "ducklake":
            _drop_lake(wh)   # e.g. the catalog restarted: attach afresh on the next query
        # e.g. a column the page expects is missing: marts from another version of the project
        raise WarehouseUnavailable(
            f"The warehouse could not answer this page's question: {redact(str(exc).splitlines()[0])}"
        ) from exc
    finally:
        con.close()
    with _last_good_lock:
        if len(_last_good) >= _LAST_GOOD_MAX:
            _last_good.pop(next(iter(_last_good)))
        _last_good[key] = frame
    return Result(frame.copy())


def _lake_cursor(wh: "Warehouse") -> "duckdb.DuckDBPyConnection":
    """A cursor (a connection of its own, safe to use from this thread) on the kept attachment, in the lake."""
    with _lake_lock:
        con = _lake.get(wh.describe())
        if con is None:
            con = _lake[wh.describe()] = wh.connect(read_only=True)
        lake = con.execute("SELECT current_database()").fetchone()[0]
        cursor = con.cursor()
    cursor.execute(f'USE "{lake}"')
    return cursor


def _drop_lake(wh: "Warehouse") -> None:
    with _lake_lock:
        con = _lake.pop(wh.describe(), None)
    if con is not None:
        try:
            con.close()
        except Exception:  # noqa: BLE001 - it is being thrown away
            pass
