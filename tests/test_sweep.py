"""`pipelines/sweep.py`: the rolling sweep checks every customer at least once every `sweep_days` nights, spreads
them evenly by a stable hash, and counts each selected customer under one reason."""

from __future__ import annotations

import datetime as dt
from collections import Counter

from pipelines.sweep import night_number, select_customers, sweep_due, sweep_slot

TZ = "Europe/Prague"
IDS = [f"{n:026x}" for n in range(7000)]


def _night(day: int) -> dt.datetime:
    return dt.datetime(2026, 11, 1, 1, 50, tzinfo=dt.timezone.utc) + dt.timedelta(days=day)


def test_slots_are_stable_and_even():
    assert [sweep_slot(c, 7) for c in IDS[:50]] == [sweep_slot(c, 7) for c in IDS[:50]]
    per_night = Counter(sweep_slot(c, 7) for c in IDS)
    assert set(per_night) == set(range(7))
    assert max(per_night.values()) < 1.1 * len(IDS) / 7 and min(per_night.values()) > 0.9 * len(IDS) / 7


def test_no_customer_waits_more_than_sweep_days_nights_even_with_missed_runs():
    for sweep_days, missed in ((7, set()), (7, {3, 4, 11}), (3, {5}), (1, set())):
        last: dict[str, dt.datetime] = {}
        checks: dict[str, list[int]] = {c: [] for c in IDS[:700]}
        for day in range(30):
            if day in missed:
                continue
            until = _night(day)
            sel = select_customers(checks, last, set(), set(), until, sweep_days, TZ)
            for cid in sel.ids:
                last[cid] = until
                checks[cid].append(day)
            if day == 0:
                assert sel.new == 700 and sel.by_sweep == 0
            elif not missed and sweep_days > 1:
                # even spread: about 1/sweep_days of the customers a night
                assert abs(sel.by_sweep - 700 / sweep_days) < 0.25 * 700 / sweep_days
        for cid, days in checks.items():
            gaps = [b - a for a, b in zip(days, days[1:])] + [29 - days[-1]]
            allowed = sweep_days + max((len([m for m in missed if d < m < d + sweep_days + 3])
                                        for d in days), default=0)
            assert max(gaps) <= allowed, (cid, days, sweep_days, missed)


def test_reasons_count_each_customer_once_new_first():
    until = _night(10)
    last = {c: _night(9) for c in IDS[:100]}
    named = set(IDS[:10]) | {IDS[150]}
    failing = set(IDS[5:20])
    sel = select_customers(IDS[:200], last, failing, named, until, 7, TZ)
    assert sel.new == 100 and sel.by_discovery == 10 and sel.retry == 10
    assert sel.by_sweep == sum(1 for c in IDS[20:100] if sweep_slot(c, 7) == night_number(until, TZ) % 7)
    assert len(sel.ids) == sel.new + sel.by_discovery + sel.retry + sel.by_sweep
    assert sel.ids == [c for c in IDS[:200] if c in set(sel.ids)]   # the list's order is kept


def test_backstop_and_night_boundaries():
    until = _night(10)
    cid = next(c for c in IDS if sweep_slot(c, 7) != night_number(until, TZ) % 7)
    assert not sweep_due(cid, night_number(until, TZ), 7, until - dt.timedelta(days=6), until)
    assert sweep_due(cid, night_number(until, TZ), 7, until - dt.timedelta(days=6, hours=13), until)
    # the night is the project-local date of the window end: 23:30 UTC on 31 Oct is already 1 Nov in Prague
    assert night_number(dt.datetime(2026, 10, 31, 23, 30, tzinfo=dt.timezone.utc), TZ) == dt.date(2026, 11, 1).toordinal()
