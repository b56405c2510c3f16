"""Live progress of a run: per source customers done/total, records, requests/s, retries, 429s, ETA.

On a terminal the bars are drawn by `rich.progress` (one bar per source). Elsewhere (cron, systemd, CI, a log file)
a background thread writes one plain `progress ...` event every `interval_s` seconds, so a log shows the run moving
even while no customer finishes (a slow page, a long back-off), and a final one at `close()`. The events go through
logging (`loyalty.progress`, so `--log-format json` makes them JSON with the counters as fields) when logging is
set up, else straight to the stream.

Thread-safe: extraction workers call `update` concurrently; counters are guarded by one lock and rich's own
`Progress` is thread-safe.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass
from typing import IO

PLAIN_INTERVAL_S = 5.0
_log = logging.getLogger("loyalty.progress")


@dataclass
class _Counters:
    total: int = 0
    done: int = 0
    failed: int = 0
    records: int = 0
    requests: int = 0
    retries: int = 0
    http_429: int = 0

    @property
    def finished(self) -> int:
        return self.done + self.failed


def _fmt_eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class RunProgress:
    """`RunProgress({"carecloud": 1000, "capillary": 800})`; `interactive=None` means "is stderr a terminal"."""

    def __init__(self, totals: dict[str, int], interactive: bool | None = None,
                 interval_s: float = PLAIN_INTERVAL_S, stream: IO[str] | None = None) -> None:
        self._lock = threading.Lock()
        self._c = {name: _Counters(total=n) for name, n in totals.items()}
        self._start = time.monotonic()
        self._stream = stream or sys.stderr
        self._log_progress = stream is None and bool(logging.getLogger().handlers)
        self._interval = interval_s
        self._closed = False
        self.interactive = self._stream.isatty() if interactive is None else interactive
        self._progress = None
        self._handlers: list[tuple[logging.StreamHandler, object]] = []
        self._tasks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self.interactive:
            self._start_rich()
        elif interval_s > 0:
            self._thread = threading.Thread(target=self._plain_loop, name="run-progress", daemon=True)
            self._thread.start()

    # -- rich (terminal) ------------------------------------------------------------------------------------------
    def _start_rich(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        console = Console(file=self._stream, force_terminal=True)
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=12),
            MofNCompleteColumn(),
            TextColumn("[red]{task.fields[failed]} failed[/] {task.fields[records]:,} rec "
                       "{task.fields[rps]:.0f} req/s {task.fields[retries]} retries {task.fields[x429]}x429"),
            TextColumn("ETA"),
            TimeRemainingColumn(compact=True),
            console=console,
            refresh_per_second=4,
            transient=False,
        )
        for name, c in self._c.items():
            self._add_task(name, c)
        self._progress.start()
        # rich now proxies sys.stderr so printed lines appear above the bars; the log handler kept the real stream
        # from before, and its lines would tear through the bars: point it at the proxy until close()
        self._handlers = [(h, h.setStream(sys.stderr)) for h in logging.getLogger().handlers
                          if isinstance(h, logging.StreamHandler) and h.stream is self._stream]

    def _add_task(self, name: str, c: _Counters) -> None:
        self._tasks[name] = self._progress.add_task(
            name, total=c.total or None, failed=0, records=0, rps=0.0, retries=0, x429=0)

    # -- plain lines (no terminal) --------------------------------------------------------------------------------
    def _plain_loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._emit(self.line())

    def _emit(self, text: str) -> None:
        # Through logging when the CLI configured it, so `--log-format json` gets a JSON progress event with the
        # counters as fields (log shippers parse every line); printed when used as a library or given a stream.
        if self._log_progress:
            _log.info(text, extra={"json_fields": {"progress": self.snapshot()}})
            return
        try:
            print(text, file=self._stream, flush=True)
        except (ValueError, OSError):  # stream closed under us (pipe reader gone): progress is not worth a crash
            pass

    # -- public interface -----------------------------------------------------------------------------------------
    def update(self, source: str, *, customers_done: int = 0, customers_failed: int = 0, records: int = 0,
               requests: int = 0, retries: int = 0, http_429: int = 0) -> None:
        with self._lock:
            c = self._c.get(source)
            if c is None:
                c = self._c[source] = _Counters()
                if self._progress is not None:
                    self._add_task(source, c)
            c.done += customers_done
            c.failed += customers_failed
            c.records += records
            c.requests += requests
            c.retries += retries
            c.http_429 += http_429
            if self._progress is not None:
                elapsed = max(time.monotonic() - self._start, 1e-9)
                self._progress.update(
                    self._tasks[source], completed=c.finished, failed=c.failed, records=c.records,
                    rps=c.requests / elapsed, retries=c.retries, x429=c.http_429)

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {n: dict(total=c.total, done=c.done, failed=c.failed, records=c.records, requests=c.requests,
                            retries=c.retries, http_429=c.http_429) for n, c in self._c.items()}

    def line(self) -> str:
        with self._lock:
            elapsed = max(time.monotonic() - self._start, 1e-9)
            parts = []
            for name, c in self._c.items():
                remaining = max(c.total - c.finished, 0)
                eta = elapsed / c.finished * remaining if c.finished else None
                parts.append(
                    f"{name}: {c.finished}/{c.total} customers ({c.failed} failed), {c.records:,} records, "
                    f"{c.requests / elapsed:.1f} req/s, {c.retries} retries, {c.http_429} x429, "
                    f"ETA {_fmt_eta(eta if remaining else 0)}"
                )
        return f"progress {_fmt_eta(elapsed)} elapsed | " + " | ".join(parts)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._interval + 1)
        if self._progress is not None:
            for handler, previous in self._handlers:
                handler.setStream(previous)
            self._progress.stop()
        else:
            self._emit(self.line())

    def __enter__(self) -> "RunProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
