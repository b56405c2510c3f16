"""What every page shares: reading through `queries` with the busy / not-built messages, number and date formats,
the period picker."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any, Callable

import pandas as pd
import streamlit as st

from dashboard import db, queries
from dashboard.db import BUSY_MESSAGE, Result, WarehouseBusy, WarehouseMissing, WarehouseUnavailable

PRESETS = {"Last 7 days": 7, "Last 30 days": 30, "Last 90 days": 90, "Last 365 days": 365}


def load(fn: Callable[..., Result], *args: Any, **kwargs: Any) -> pd.DataFrame:
    """Run one query; on a running load or a missing warehouse, say so and stop the page (never a traceback)."""
    try:
        result = fn(*args, **kwargs)
    except WarehouseBusy:
        st.warning(BUSY_MESSAGE, icon="⏳")
        st.stop()
    except WarehouseMissing as exc:
        st.info(str(exc), icon="ℹ️")
        st.stop()
    except WarehouseUnavailable as exc:
        st.error(str(exc))
        st.stop()
    if result.stale and not st.session_state.get("_stale_shown"):
        # Once per page run: what follows is the last good read, from before the load took the file.
        st.session_state["_stale_shown"] = True
        st.warning(BUSY_MESSAGE, icon="⏳")
    return result.frame


def reset_page_flags() -> None:
    st.session_state["_stale_shown"] = False


def points(value: float | int | None) -> str:
    """Thousands separators; decimals only when the points are fractional."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    # Points are doubles with up to two decimals; a sum of them carries float noise (53705.00000000001) whose size
    # depends on DuckDB's parallel summation order, so decide on the rounded value, not the noise.
    value = round(float(value), 2) + 0.0  # + 0.0: no "-0" from a noisy -0.000000001
    if value.is_integer():
        return f"{value:,.0f}"
    return f"{value:,.2f}"


def count(value: int | float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{int(value):,}"


def delta(current: float, previous: float) -> str | None:
    """The change against the previous period, formatted like the value, or None when there is nothing before."""
    change = float(current) - float(previous)
    if previous == 0 and current == 0:
        return None
    sign = "+" if change >= 0 else "-"  # st.metric picks the arrow from a leading "-"
    pct = f" ({change / previous:+.1%})" if previous else ""
    return f"{sign}{points(abs(change))}{pct}"


def local_time(value: Any) -> str:
    """An instant as local wall time (DuckDB already returned it in the display zone)."""
    if value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return "–"
    ts = pd.Timestamp(value)
    if ts.tzinfo is not None:
        ts = ts.tz_convert(db.timezone())
    return ts.strftime("%Y-%m-%d %H:%M")


def day(value: Any) -> str:
    if value is None or value is pd.NaT:
        return "–"
    return pd.Timestamp(value).strftime("%Y-%m-%d")


def number_columns(*names: str) -> dict[str, Any]:
    """Column settings for st.dataframe: numbers with the reader's thousands separators."""
    return {n: st.column_config.NumberColumn(n.replace("_", " "), format="localized") for n in names}


def time_columns(*names: str) -> dict[str, Any]:
    return {n: st.column_config.DatetimeColumn(n.replace("_", " "), format="YYYY-MM-DD HH:mm") for n in names}


def date_columns(*names: str) -> dict[str, Any]:
    return {n: st.column_config.DateColumn(n.replace("_", " "), format="YYYY-MM-DD") for n in names}


def naive_local(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """Instants as local wall time without a zone, so tables and charts show them as the reader's clock reads."""
    out = frame.copy()
    for c in columns:
        if c in out and isinstance(out[c].dtype, pd.DatetimeTZDtype):
            out[c] = out[c].dt.tz_convert(db.timezone()).dt.tz_localize(None)
    return out


def data_days() -> tuple[dt.date, dt.date]:
    """First and last local day with movements; stops the page with a note when the ledger is empty."""
    span = load(queries.data_range)
    if span["last_day"].isna().all():
        st.info("The ledger has no movements yet.")
        st.stop()
    return as_date(span["first_day"].iloc[0]), as_date(span["last_day"].iloc[0])


def period_picker(first_day: dt.date, last_day: dt.date, key: str = "period") -> tuple[dt.date, dt.date]:
    """A period of local days ending on the newest data day (presets) or any range (custom)."""
    choice = st.selectbox("Period", [*PRESETS, "Custom"], index=1, key=f"{key}_preset")
    if choice == "Custom":
        picked = st.date_input(
            "From – to", value=(max(first_day, last_day - dt.timedelta(days=29)), last_day),
            min_value=first_day, max_value=last_day, key=f"{key}_range",
        )
        if isinstance(picked, (tuple, list)) and len(picked) == 2:
            return picked[0], picked[1]
        st.caption("Pick the end date too.")
        st.stop()
    days = PRESETS[choice]
    return last_day - dt.timedelta(days=days - 1), last_day


def previous_period(start: dt.date, end: dt.date) -> tuple[dt.date, dt.date]:
    length = (end - start).days + 1
    return start - dt.timedelta(days=length), start - dt.timedelta(days=1)


def as_date(value: Any) -> dt.date:
    return pd.Timestamp(value).date()
