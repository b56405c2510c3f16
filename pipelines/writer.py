"""The run's hold on the warehouse's one writer: taken for the steps that write, released while the run fetches.

DuckDB lets one process write a database file, or many read it, never both at once. A run that kept its writing
connection open from start to finish locked analysts, the dashboard and `status` out for the whole extraction,
hours at the APIs' rate limits (issue 19). The run now holds the file only for what writes: planning (customer
list, change discovery's bookkeeping), each round's dlt load with its bookkeeping commit, and the marts (dbt).
While it fetches the next round from the APIs (worker processes and dlt's extract and normalize, which write only
to dlt's working directory) the file is closed, so readers open it read-only and see the last committed state:

- a round's load and its `state.commit` happen in one hold: a reader sees both or neither;
- dbt builds every mart inside one hold (it shares this process's DuckDB instance, `pipelines/models.py`), so a
  reader never sees a set of marts half rebuilt; each model also commits atomically (tests/test_reader_availability).

Closing the last connection checkpoints DuckDB's write-ahead log into the file; a reader of the file then reads
exactly what was committed. A reader holding the file when the run wants it back makes the run wait (readers open,
query and close: moments), never fail: `wait_s` is long, since the round waiting is already fetched and costs
nothing but time.

`hold()` nests: a step inside another step's hold (a discovery's raw tables loaded during planning) reuses the
connection. On a lake (readers attach their own snapshot and are never blocked) and with a connection the caller
owns (a backfill keeps the file throughout), the writer opens once and keeps the connection until `close()`.
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

import duckdb

from pipelines.warehouse import Warehouse

# how long a step waits for readers to let go of the file (they open, query and close: moments; the retry is
# `Warehouse.connect`'s). Long, because what waits is a round already fetched: failing it would only
# mean fetching it again tomorrow.
WAIT_S = 600.0


class WarehouseWriter:
    def __init__(self, warehouse: Warehouse, *, conn: duckdb.DuckDBPyConnection | None = None,
                 wait_s: float = WAIT_S) -> None:
        """`conn`: a connection the caller opened and keeps (it is never closed here)."""
        self.warehouse = warehouse
        # a lake's readers attach their own snapshot and are never blocked: nothing to release there
        self.release = conn is None and warehouse.kind == "duckdb"
        self.wait_s = wait_s
        self._owned = conn is None
        self._conn = conn
        self._depth = 0
        self.holds = 0              # how many times the file was taken (the run log reports it)
        self.held_s = 0.0           # for how long in total
        self._since = 0.0

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    @contextlib.contextmanager
    def hold(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The writing connection for one step; released after it unless the writer keeps it open."""
        if self._conn is None:
            self._conn = self._connect()
            self.holds += 1
            self._since = time.monotonic()
        self._depth += 1
        try:
            yield self._conn
        finally:
            self._depth -= 1
            if self._depth == 0 and self.release:
                self._close()

    def close(self) -> None:
        """Let go of the warehouse for good (the end of a run). A connection the caller gave stays open."""
        if self._owned:
            self._close()

    def _connect(self) -> duckdb.DuckDBPyConnection:
        return self.warehouse.connect(wait_s=self.wait_s)

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self.held_s += time.monotonic() - self._since
            conn.close()
