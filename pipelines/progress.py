"""Live progress of a run: per source customers done/total, records, requests/s, retries, 429s, ETA.

Thread-safe: extraction workers call `update` concurrently. (Interim plain-line implementation; the operations work
replaces the rendering with rich on a terminal, keeping this interface.)
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass


@dataclass
class _Counters:
    total: int = 0
    done: int = 0
    failed: int = 0
    records: int = 0
    requests: int = 0
    retries: int = 0
    http_429: int = 0


class RunProgress:
    def __init__(self, totals: dict[str, int], interactive: bool | None = None, interval_s: float = 5.0) -> None:
        self._lock = threading.Lock()
        self._c = {name: _Counters(total=n) for name, n in totals.items()}
        self._start = time.monotonic()
        self._interval = interval_s
        self._last = 0.0
        self.interactive = sys.stderr.isatty() if interactive is None else interactive

    def update(self, source: str, *, customers_done: int = 0, customers_failed: int = 0, records: int = 0,
               requests: int = 0, retries: int = 0, http_429: int = 0) -> None:
        with self._lock:
            c = self._c.setdefault(source, _Counters())
            c.done += customers_done
            c.failed += customers_failed
            c.records += records
            c.requests += requests
            c.retries += retries
            c.http_429 += http_429
            now = time.monotonic()
            if now - self._last >= self._interval:
                self._last = now
                print(self.line(), file=sys.stderr, flush=True)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        parts = []
        for name, c in self._c.items():
            finished = c.done + c.failed
            eta = (elapsed / finished * (c.total - finished)) if finished else float("nan")
            parts.append(
                f"{name}: {finished}/{c.total} customers ({c.failed} failed), {c.records:,} records, "
                f"{c.requests / elapsed:.0f} req/s, {c.retries} retries, {c.http_429} x429, ETA {eta:.0f}s"
            )
        return "progress " + " | ".join(parts)

    def close(self) -> None:
        print(self.line(), file=sys.stderr, flush=True)
