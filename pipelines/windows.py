"""Time windows `[start, end)` as UTC instants, and their translation to CareCloud project local time.

Instants are pendulum DateTimes (parsing, durations); the zone arithmetic uses the stdlib's zoneinfo (the same IANA
data) where it runs per customer, because a pendulum Timezone is re-created from disk on every conversion.

CareCloud filters `time_from`/`time_to` on naive local wall-clock strings and sends record times the same way, so
a window of instants has to become a range of wall-clock strings that certainly contains every record whose
instant lies in the window. The instant of a record is its wall time read in the project zone with fold=0 (the
EARLIER instant inside the repeated autumn hour); that mapping is monotone, so the only trouble is near a DST
transition, where the wall clock of a bound can sit inside the repeated hour. There the local range is widened by
two hours; records outside the window are dropped client-side by instant (`Window.contains`) and the merge keys
absorb any overlap, so the API's undocumented bound inclusivity does not matter either.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import lru_cache
from zoneinfo import ZoneInfo

import pendulum

LOCAL_FORMAT = "%Y-%m-%d %H:%M:%S"
# The programme's home zone: the one default of every time-zone setting (CareCloud project time, the dashboard), of
# the sandbox tenant's zone, and of the dbt var `reporting_timezone` (sql/dbt_project.yml, kept equal by a test).
LOCAL_TIMEZONE = "Europe/Prague"
# Far larger than any DST shift (1 h in Europe, 30 min on Lord Howe): a bound this close to a transition is widened.
_DST_MARGIN = dt.timedelta(hours=2)


@dataclass(frozen=True)
class Window:
    """`[start, end)` in UTC."""

    start: pendulum.DateTime
    end: pendulum.DateTime

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("window bounds must be timezone-aware instants")
        # `contains` runs once per record: comparing pendulum DateTimes goes through Python code, plain datetimes
        # in UTC compare in C (docs/decisions/session-4-staging-in-memory.md)
        object.__setattr__(self, "_bounds", (_plain_utc(self.start), _plain_utc(self.end)))

    @property
    def empty(self) -> bool:
        return self.end <= self.start

    def contains(self, instant: dt.datetime) -> bool:
        start, end = self._bounds  # type: ignore[attr-defined]
        return start <= instant < end

    def __str__(self) -> str:
        return f"[{self.start.isoformat()}, {self.end.isoformat()})"


def _plain_utc(instant: dt.datetime) -> dt.datetime:
    """The same instant as a stdlib datetime in UTC (exact to the microsecond)."""
    return dt.datetime.fromisoformat(instant.isoformat()).astimezone(dt.timezone.utc)


def utc(value: dt.datetime | str) -> pendulum.DateTime:
    if isinstance(value, str):
        parsed = pendulum.parse(value, tz="UTC")
        assert isinstance(parsed, pendulum.DateTime)
        return parsed.in_timezone("UTC")
    return pendulum.instance(value).in_timezone("UTC")


def window_end(now: dt.datetime, safety_lag: dt.timedelta, until: dt.datetime | None = None) -> pendulum.DateTime:
    """The run's window end: `--until`, or now minus the safety lag (records still being written are not read yet).
    Truncated to whole seconds: CareCloud record times have second precision."""
    end = utc(until) if until is not None else utc(now) - safety_lag
    return end.replace(microsecond=0)


def customer_window(last_success_end: dt.datetime | None, end: dt.datetime, lookback: dt.timedelta,
                    initial_start: dt.datetime) -> Window:
    """A customer's window: from its own last successful end minus the lookback (late records), or from
    `initial_start` when the pipeline has never loaded it. A customer that failed resumes from its last success."""
    if last_success_end is None:
        start = utc(initial_start)
    else:
        start = max(utc(last_success_end) - lookback, utc(initial_start))
    return Window(start=start, end=utc(end))


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _near_transition(instant: dt.datetime, tz: ZoneInfo) -> bool:
    before = (instant - _DST_MARGIN).astimezone(tz).utcoffset()
    after = (instant + _DST_MARGIN).astimezone(tz).utcoffset()
    return before != after


@lru_cache(maxsize=4096)  # customers that share a window share one translation
def local_bounds(window: Window, timezone: str) -> tuple[str, str]:
    """`(time_from, time_to)` wall-clock strings in the project zone covering every record of the window.

    Each bound is widened by two hours when a DST transition is near (a wall clock inside the repeated autumn
    hour is ambiguous; the spring gap simply has no records), and `time_to` always by one second so an exclusive
    upper bound on the API side loses nothing. Whole seconds: identical records share their second, so they are
    always fetched together (stable occurrence numbers in record keys)."""
    tz = _zone(timezone)
    start, end = window.start, window.end
    if _near_transition(start, tz):
        start = start - _DST_MARGIN
    if _near_transition(end, tz):
        end = end + _DST_MARGIN
    end = end + dt.timedelta(seconds=1)
    return start.astimezone(tz).strftime(LOCAL_FORMAT), end.astimezone(tz).strftime(LOCAL_FORMAT)


def local_to_utc(text: str, timezone: str) -> dt.datetime | None:
    """A CareCloud wall-clock string to its UTC instant: ambiguous (repeated autumn hour) → the EARLIER instant
    (fold=0); a time inside the spring gap, which no real clock shows, is read with the offset in force before the
    gap (zoneinfo semantics: 02:30 → 01:30 UTC in Europe/Prague). None when the text is not a valid time.
    The batch path (`carecloud.normalize`) does the same with Arrow compute; this is the reference."""
    try:
        naive = dt.datetime.strptime(text.strip().replace("T", " "), LOCAL_FORMAT)
    except (ValueError, AttributeError, TypeError):
        return None
    return naive.replace(tzinfo=_zone(timezone), fold=0).astimezone(dt.timezone.utc)
