"""Windows as instants and their translation to CareCloud project local time, across DST."""

from __future__ import annotations

import datetime as dt

import pendulum
import pytest

from pipelines.windows import Window, customer_window, local_bounds, local_to_utc, window_end

TZ = "Europe/Prague"
UTC = dt.timezone.utc


def u(text: str) -> pendulum.DateTime:
    return pendulum.parse(text, tz="UTC")  # type: ignore[return-value]


def test_window_end_is_until_or_now_minus_lag_whole_seconds() -> None:
    now = u("2026-11-20T10:00:00.750Z")
    assert window_end(now, pendulum.duration(minutes=10)) == u("2026-11-20T09:50:00Z")
    assert window_end(now, pendulum.duration(minutes=10), u("2026-01-01T00:00:00.5Z")) == u("2026-01-01T00:00:00Z")


def test_customer_window_new_resumed_and_clamped() -> None:
    end = u("2026-11-20T00:00:00Z")
    lookback = pendulum.duration(days=3)
    initial = u("2024-01-01T00:00:00Z")
    assert customer_window(None, end, lookback, initial) == Window(initial, end)
    assert customer_window(u("2026-11-10T00:00:00Z"), end, lookback, initial).start == u("2026-11-07T00:00:00Z")
    assert customer_window(u("2024-01-02T00:00:00Z"), end, lookback, initial).start == initial  # never before start
    assert customer_window(end, end, lookback, initial).start == u("2026-11-17T00:00:00Z")


def test_local_bounds_far_from_dst_are_plain_local_times() -> None:
    w = Window(u("2026-01-10T12:00:00Z"), u("2026-01-11T12:00:00Z"))
    assert local_bounds(w, TZ) == ("2026-01-10 13:00:00", "2026-01-11 13:00:01")


@pytest.mark.parametrize("end", ["2026-10-25T00:30:00Z", "2026-10-25T01:00:00Z", "2026-10-25T01:30:00Z"])
def test_upper_bound_in_repeated_autumn_hour_covers_every_record_of_the_window(end: str) -> None:
    """A window ending at the second 02:30 (01:30Z) contains records with wall time 02:30..02:59 read as the first
    occurrence (00:30..00:59Z): the local upper bound must reach beyond 03:00."""
    w = Window(u("2026-10-24T00:00:00Z"), u(end))
    lo, hi = local_bounds(w, TZ)
    # every wall time whose fold=0 instant lies in the window is inside [lo, hi]
    t = dt.datetime(2026, 10, 24, 0, 0)
    while t < dt.datetime(2026, 10, 25, 6, 0):
        instant = t.replace(tzinfo=pendulum.timezone(TZ), fold=0).astimezone(UTC)
        if w.start <= instant < w.end:
            assert lo <= t.strftime("%Y-%m-%d %H:%M:%S") <= hi, (t, lo, hi)
        t += dt.timedelta(minutes=1)


def test_lower_bound_in_repeated_hour_and_spring_gap() -> None:
    for start in ("2026-10-25T00:30:00Z", "2026-10-25T01:30:00Z", "2026-03-29T00:59:59Z", "2026-03-29T01:00:00Z"):
        w = Window(u(start), u(start).add(hours=6))
        lo, _ = local_bounds(w, TZ)
        first = pendulum.instance(w.start).in_timezone(TZ).strftime("%Y-%m-%d %H:%M:%S")
        assert lo <= first


def test_local_to_utc_convention() -> None:
    # repeated hour: the earlier instant (summer time)
    assert local_to_utc("2026-10-25 02:30:00", TZ) == dt.datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    assert local_to_utc("2026-10-25 03:00:00", TZ) == dt.datetime(2026, 10, 25, 2, 0, tzinfo=UTC)
    # spring gap: read with the offset before the gap
    assert local_to_utc("2026-03-29 02:30:00", TZ) == dt.datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
    assert local_to_utc("2026-03-29T01:59:59", TZ) == dt.datetime(2026, 3, 29, 0, 59, 59, tzinfo=UTC)
    for bad in ("0000-00-00 00:00:00", "2025-13-45 25:61:00", "not a time", None):
        assert local_to_utc(bad, TZ) is None  # type: ignore[arg-type]


def test_batch_conversion_matches_reference() -> None:
    """The vectorised path in carecloud.normalize gives the same instants as `local_to_utc`, gap and fold included."""
    from pipelines.carecloud.normalize import PointHistoryBatch
    from pipelines.columns import ColumnTypes

    times = ["2026-10-25 02:30:00", "2026-10-25 01:59:59", "2026-10-25 03:00:00", "2026-03-29 02:30:00",
             "2026-03-29 03:00:00", "2026-03-29T01:59:59", "2025-13-45 25:61:00", None]
    batch = PointHistoryBatch(TZ, "run", ColumnTypes())
    recs = [{"customer_id": "c", "point_amount": i, "point_history_record_time": t, "extended_data": None}
            for i, t in enumerate(times)]
    batch.add("c", Window(u("2020-01-01T00:00:00Z"), u("2030-01-01T00:00:00Z")), recs)
    tables, issues = batch.build()
    main = dict(tables)["carecloud_point_history"]
    got = dict(zip(main["point_amount"].to_pylist(), main["recorded_at"].to_pylist()))
    for i, t in enumerate(times):
        expected = local_to_utc(t, TZ) if t else None
        assert got[float(i)] == expected, t
    assert sum(1 for i in issues if i.code == "bad_record_time") == 2
