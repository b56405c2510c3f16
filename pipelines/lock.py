"""The single-writer guard: a lock file beside the warehouse (`<warehouse>.lock`, `fcntl.flock`) refuses a second
concurrent run up front with a clear message, and the warehouse file itself is opened with a bounded retry so a
reader that holds it for a moment never makes a load fail."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import duckdb

from pipelines.logs import get_logger

log = get_logger("lock")


class RunLocked(RuntimeError):
    """Another run holds the warehouse."""


class RunLock:
    def __init__(self, warehouse: Path) -> None:
        self.path = Path(str(warehouse) + ".lock")
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
            finally:
                os.close(fd)
            raise RunLocked(
                f"another run is using this warehouse ({self.path}; held by {holder or 'another process'}). "
                "Wait for it to finish; this run did nothing."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def connect_writer(warehouse: Path, wait_s: float = 30.0, memory_limit: str | None = "256MB") -> duckdb.DuckDBPyConnection:
    """Open the warehouse for writing, retrying while a reader in another process holds it (readers open, query
    and close per request, so they let go within moments)."""
    warehouse.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    delay = 0.1
    while True:
        try:
            conn = duckdb.connect(str(warehouse))
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() >= deadline:
                raise
            if delay == 0.1:    # once per wait, not once per retry: a writer may wait for minutes
                log.info("warehouse busy (a reader holds it), retrying for up to %.0f s", wait_s)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
            continue
        if memory_limit:
            # DuckDB's default (80 % of RAM) lets a big merge grow the process; beyond the limit it spills to disk.
            # A SET, not a connect() config option: dbt (same process) must open the file with the same config.
            conn.execute(f"SET memory_limit = '{memory_limit}'")
        return conn


def holder(lock_path: Path) -> str | None:
    """Who holds the single-run lock now ("pid N since T", as `RunLock` writes it), or None. Never takes the lock
    (a reader must not make a starting run think another one is running). A run killed with SIGKILL leaves its text
    behind, so the named process must still be alive."""
    try:
        text = lock_path.read_text(errors="replace").strip()
    except OSError:
        return None
    parts = text.split()
    if len(parts) < 2 or parts[0] != "pid" or not parts[1].isdigit():
        return None
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, another user's
        pass
    return text
