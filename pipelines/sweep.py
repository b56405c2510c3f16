"""Which customers a `selection = "changed"` run loads, for every source: the ones change discovery named, the new
ones, the ones whose last attempt failed, and the rolling sweep.

The sweep exists because some movements leave no trace a source's discovery can see (CareCloud manual corrections,
say): every customer is also fully checked at least once every `sweep_days` nights. A customer's sweep night is a
stable hash of its id modulo `sweep_days`, so each night sweeps about 1/`sweep_days` of the customers and every
night costs about the same. A backstop also sweeps a customer whose last successful load ended `sweep_days` or more
ago (a night without a run, a customer failing for days), so the gap never grows past `sweep_days` nights however
the runs fall. Any load counts as a full check: a customer's window always starts from its own last success minus
the lookback, whatever selected it, so what it loads is what `selection = "all"` would have loaded.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from typing import Iterable, Mapping
from zoneinfo import ZoneInfo

# A run's end moves by minutes from night to night; half a day keeps "sweep_days ago" from falling just short.
_BACKSTOP_SLACK = dt.timedelta(hours=12)


def sweep_slot(customer_id: str, sweep_days: int) -> int:
    """The customer's sweep night modulo `sweep_days`: a stable hash, the same in every process and run."""
    digest = hashlib.blake2b(customer_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % max(1, sweep_days)


def night_number(until: dt.datetime, timezone: str) -> int:
    """The night a run belongs to: the proleptic ordinal of the project-local date of its window end."""
    return until.astimezone(ZoneInfo(timezone)).date().toordinal()


def sweep_due(customer_id: str, night: int, sweep_days: int, last_success_end: dt.datetime | None,
              until: dt.datetime) -> bool:
    if sweep_days <= 1 or last_success_end is None:
        return True
    if sweep_slot(customer_id, sweep_days) == night % sweep_days:
        return True
    return until - last_success_end >= dt.timedelta(days=sweep_days) - _BACKSTOP_SLACK


@dataclass
class Selection:
    """The customers one run loads, each counted under the first reason that applies: new, discovery, retry,
    sweep. `ids` keeps the customer list's order."""
    ids: list[str] = field(default_factory=list)
    new: int = 0
    by_discovery: int = 0
    retry: int = 0
    by_sweep: int = 0


def select_customers(ids: Iterable[str], last_success: Mapping[str, dt.datetime], failing: set[str],
                     named: set[str], until: dt.datetime, sweep_days: int, timezone: str) -> Selection:
    """`named`: customers change discovery named; `failing`: customers whose last attempt failed."""
    night = night_number(until, timezone)
    out = Selection()
    for cid in ids:
        last = last_success.get(cid)
        if last is None:
            out.new += 1
        elif cid in named:
            out.by_discovery += 1
        elif cid in failing:
            out.retry += 1
        elif sweep_due(cid, night, sweep_days, last, until):
            out.by_sweep += 1
        else:
            continue
        out.ids.append(cid)
    return out
