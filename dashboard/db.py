"""Read-only access to the warehouse for the dashboard.

DuckDB allows one writing process or many reading ones, never both (docs/architecture.md, "Readers and the single
writer"). The nightly load holds the file as the writer for its whole run, so the dashboard opens the file
`read_only=True` for each query and closes it straight away: it never holds the file between requests (which would
make the load wait), and while a load holds it the open fails at once with a lock error, which we turn into
`WarehouseBusy` instead of waiting.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd

from pipelines.windows import LOCAL_TIMEZONE

WAREHOUSE_ENV = "LOYALTY_WAREHOUSE_PATH"
TIMEZONE_ENV = "LOYALTY_DASHBOARD_TIMEZONE"
DEFAULT_TIMEZONE = LOCAL_TIMEZONE  # `[loyalty] dashboard_timezone` when the app is started by hand


class WarehouseUnavailable(Exception):
    """The warehouse cannot be read right now; the message is meant for the person looking at the page."""


class WarehouseBusy(WarehouseUnavailable):
    """Another process (the nightly load) holds the file as its single writer."""


class WarehouseMissing(WarehouseUnavailable):
    """No warehouse file, or the tables a page needs were not built yet."""


BUSY_MESSAGE = "A load is running — showing nothing new; retry shortly."


def warehouse_path() -> Path:
    """The file `loyalty-etl dashboard` passed us, else the project's own setting (for `streamlit run` by hand)."""
    env = os.environ.get(WAREHOUSE_ENV)
    if env:
        return Path(env).expanduser().resolve()
    from pipelines.config import warehouse_path as configured

    return configured()


def timezone() -> str:
    """The display zone; an unknown name falls back to the default rather than breaking every page."""
    name = os.environ.get(TIMEZONE_ENV) or DEFAULT_TIMEZONE
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return DEFAULT_TIMEZONE
    return name


def _is_lock_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "lock" in text or "resource temporarily unavailable" in text or "being used by another process" in text


@dataclass(frozen=True)
class Result:
    frame: pd.DataFrame
    stale: bool = False   # served from the last good read because a load holds the file right now


# Last good result per (file, query, params), process-wide: while a load holds the file a page can still show what
# it showed a moment ago, labelled as such, rather than nothing. Bounded so a long-lived server does not grow.
_last_good: dict[tuple[str, str, str, tuple[Any, ...]], pd.DataFrame] = {}
_last_good_lock = threading.Lock()
_LAST_GOOD_MAX = 256


def query(sql: str, params: tuple[Any, ...] = (), path: Path | None = None) -> Result:
    """Run one read-only query and return a DataFrame; timestamps with a zone come back in the display zone."""
    import duckdb

    db = path or warehouse_path()
    zone = timezone()
    key = (str(db), zone, sql, tuple(params))
    if not db.exists():
        raise WarehouseMissing(
            f"No warehouse at {db}. Load one first: `loyalty-etl demo` (sandbox) or `loyalty-etl run`."
        )
    try:
        con = duckdb.connect(str(db), read_only=True)
    except (duckdb.IOException, duckdb.ConnectionException) as exc:
        if _is_lock_error(exc):
            with _last_good_lock:
                previous = _last_good.get(key)
            if previous is not None:
                return Result(previous.copy(), stale=True)
            raise WarehouseBusy(BUSY_MESSAGE) from exc
        raise WarehouseUnavailable(f"Cannot open the warehouse at {db}: {exc}") from exc
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
        # e.g. a column the page expects is missing: marts from another version of the project
        raise WarehouseUnavailable(
            f"The warehouse could not answer this page's question: {str(exc).splitlines()[0]}"
        ) from exc
    finally:
        con.close()
    with _last_good_lock:
        if len(_last_good) >= _LAST_GOOD_MAX:
            _last_good.pop(next(iter(_last_good)))
        _last_good[key] = frame
    return Result(frame.copy())

