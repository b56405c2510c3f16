"""The durable, append-only store of received Capillary events: one SQLite file in WAL mode.

Why SQLite and not the warehouse: DuckDB allows one writer or many readers across processes, never both, and the
receiver must answer within seconds at any hour, also while a nightly run holds the warehouse. Why SQLite and not
hand-written fsynced JSONL segments: SQLite gives the unique `event_id` (a duplicate is ignored, also days later),
crash-safe commits and locking between processes (two receivers on one store are safe) without code of our own.

Durability: `journal_mode=WAL` with `synchronous=FULL` fsyncs the WAL at every commit, so an `add` that returned has
reached the disk. Group commit: request threads hand their events to one writer thread, which commits everything
waiting in one transaction (one fsync) and then releases each waiting request; under concurrent deliveries this
turns one fsync per event into one per batch (figures in docs/performance.md, bench key `event_receiver`). Both pragmas are read back at open and the store refuses to work without them (a file system that
cannot do WAL, e.g. some network mounts, reports another journal mode).
"""

from __future__ import annotations

import queue
import sqlite3
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,  -- order of receipt
    event_id    TEXT NOT NULL UNIQUE,               -- Capillary's idempotency key
    event_name  TEXT,
    received_at TEXT NOT NULL,                      -- UTC, ISO 8601 with microseconds
    body        BLOB NOT NULL                       -- the request body exactly as received
);
-- How far the nightly run has committed the events to the warehouse (pipelines/capillary/events_ingest.py): written only
-- after that commit, and read only to prune; the warehouse's own mark says what to read next.
CREATE TABLE IF NOT EXISTS consumed (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    seq         INTEGER NOT NULL,
    at          TEXT NOT NULL
);
"""
INSERT = "INSERT OR IGNORE INTO events (event_id, event_name, received_at, body) VALUES (?, ?, ?, ?)"
# How long a writer waits for another process's write lock (a second receiver, an ingesting run) before the request
# is answered 503 (the vendor retries it).
BUSY_TIMEOUT_MS = 10_000


class StoreError(RuntimeError):
    """The event store cannot be opened durably; the message says why and what to do."""


@dataclass(frozen=True)
class StoredEvent:
    seq: int
    event_id: str
    event_name: str | None
    received_at: str
    body: bytes


def _utc_now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1_000_000):06d}Z"


def newest_receipt(path: str | Path) -> str | None:
    """The newest `received_at` in the store, read through a read-only connection (for `status`, which must not
    create or change anything); None when the store has no event or does not exist."""
    path = Path(path)
    if not path.exists():
        return None
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        return conn.execute("SELECT max(received_at) FROM events").fetchone()[0]
    except sqlite3.Error:
        return None
    finally:
        conn.close()


class EventStore:
    """Thread-safe: one connection per thread (SQLite connections are not shared between threads); writes go
    through one writer thread (group commit)."""

    def __init__(self, path: str | Path, group_commit: bool = True) -> None:
        self.path = Path(path)
        self.group_commit = group_commit
        self._local = threading.local()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._connect()
            conn.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the event store {self.path}: {exc}") from None
        self._queue: queue.SimpleQueue[tuple[tuple, Future] | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        # autocommit (isolation_level=None): each INSERT is its own transaction, committed (and fsynced) at once
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=True)
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        conn.execute("PRAGMA synchronous=FULL")
        sync = conn.execute("PRAGMA synchronous").fetchone()[0]
        if str(mode).lower() != "wal" or sync != 2:
            conn.close()
            raise StoreError(
                f"the event store {self.path} cannot run in WAL mode with synchronous=FULL (journal_mode={mode}, "
                f"synchronous={sync}); put it on a local file system (not NFS/SMB)")
        self._local.conn = conn
        return conn

    def add(self, event_id: str, event_name: str | None, body: bytes) -> bool:
        """Store one event durably (returns after the commit's fsync); False if an event with this id is already
        stored (nothing written). Raises the writer's exception (sqlite3.Error, OSError) when the commit failed."""
        row = (event_id, event_name, _utc_now(), body)
        if not self.group_commit:  # one transaction, one fsync per event (kept to measure group commit against)
            return self._connect().execute(INSERT, row).rowcount == 1
        self._start_writer()
        done: Future = Future()
        self._queue.put((row, done))
        return done.result()

    def _start_writer(self) -> None:
        with self._writer_lock:
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, name="event-store-writer", daemon=True)
                self._writer.start()

    def _write_loop(self) -> None:
        conn = self._connect()
        while True:
            item = self._queue.get()
            if item is None:
                conn.close()
                self._local.conn = None
                return
            batch = [item]
            while True:  # everything already waiting joins this commit
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # finish this batch, then stop
                    break
                batch.append(nxt)
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    added = [conn.execute(INSERT, row).rowcount == 1 for row, _ in batch]
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except Exception as exc:
                for _, done in batch:
                    done.set_exception(exc)
                continue
            for (_, done), new in zip(batch, added):
                done.set_result(new)

    def summary(self, since: str) -> dict:
        """Events stored, the newest receipt, and events per name received at or after `since` (ISO, UTC)."""
        conn = self._connect()
        total, newest = conn.execute("SELECT count(*), max(received_at) FROM events").fetchone()
        recent = conn.execute("SELECT coalesce(event_name, '(none)'), count(*) FROM events WHERE received_at >= ? "
                              "GROUP BY 1 ORDER BY 2 DESC, 1", (since,)).fetchall()
        return {"events": total, "newest_received_at": newest, "recent": dict(recent)}

    def count(self) -> int:
        return self._connect().execute("SELECT count(*) FROM events").fetchone()[0]

    def events(self, after_seq: int = 0) -> list[StoredEvent]:
        rows = self._connect().execute(
            "SELECT seq, event_id, event_name, received_at, body FROM events WHERE seq > ? ORDER BY seq",
            (after_seq,)).fetchall()
        return [StoredEvent(*r) for r in rows]

    def max_seq(self) -> int:
        """The highest seq ever handed out (AUTOINCREMENT keeps it after deletes): lower than a reader's mark only
        when the store file was replaced."""
        row = self._connect().execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        return int(row[0]) if row else 0

    def newest_received_at(self) -> str | None:
        return self._connect().execute("SELECT max(received_at) FROM events").fetchone()[0]

    def consumed_seq(self) -> int:
        row = self._connect().execute("SELECT seq FROM consumed WHERE id = 1").fetchone()
        return int(row[0]) if row else 0

    def mark_consumed(self, seq: int) -> None:
        """Record that every event up to `seq` is committed to the warehouse (never moves back)."""
        self._connect().execute(
            "INSERT INTO consumed (id, seq, at) VALUES (1, ?, ?) ON CONFLICT (id) DO UPDATE SET "
            "seq = max(seq, excluded.seq), at = excluded.at", (seq, _utc_now()))

    def prune_consumed(self, received_before: str) -> int:
        """Delete consumed events received before `received_before` (ISO, UTC); the count deleted. Until then a
        re-sent duplicate is still recognised by its eventId."""
        return self._connect().execute(
            "DELETE FROM events WHERE seq <= (SELECT coalesce(max(seq), 0) FROM consumed) AND received_at < ?",
            (received_before,)).rowcount

    def close(self) -> None:
        with self._writer_lock:
            if self._writer is not None:
                self._queue.put(None)
                self._writer.join()
                self._writer = None
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
