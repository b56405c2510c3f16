"""The sandbox clock: the API shows only records whose `visible_from` is at or before sandbox "now"."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from typing import Any


def to_epoch(value: Any) -> float:
    """An ISO 8601 string (no offset = UTC), a datetime (naive = UTC) or epoch seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, datetime):
        dt = value
    else:
        text = str(value).strip().replace("Z", "+00:00")
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"invalid instant {value!r}: use ISO 8601, e.g. 2026-11-20T00:00:00+00:00") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


class Clock:
    """Frozen at an instant when one is given (tests), otherwise the wall clock; `advance` works in both modes."""

    def __init__(self, now: Any = None) -> None:
        self._lock = threading.Lock()
        self._frozen: float | None = None if now is None else to_epoch(now)
        self._offset = 0.0

    def now(self) -> float:
        with self._lock:
            return self._frozen if self._frozen is not None else time.time() + self._offset

    def now_datetime(self) -> datetime:
        return datetime.fromtimestamp(self.now(), timezone.utc)

    def set(self, value: Any) -> float:
        with self._lock:
            self._frozen = to_epoch(value)
            return self._frozen

    def advance(self, seconds: float) -> float:
        with self._lock:
            if self._frozen is not None:
                self._frozen += float(seconds)
                return self._frozen
            self._offset += float(seconds)
            return time.time() + self._offset
