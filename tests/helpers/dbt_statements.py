"""`python -m tests.helpers.dbt_statements <loyalty-etl args>`: the CLI, with a hook on every SQL statement dbt-duckdb
sends (its cursor wrapper), for tests of what a crash in the middle of a dbt build leaves behind:

- env `LOYALTY_TEST_DBT_LOG=<file>`: append each statement (one JSON string per line);
- env `LOYALTY_TEST_DBT_KILL_AFTER=<regex>`: SIGKILL this process right after the first statement matching it
  (case-insensitive, whitespace collapsed), like a power cut between two statements of one materialization.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys


def _install() -> None:
    from dbt.adapters.duckdb.environments.local import DuckDBCursorWrapper

    log = os.environ.get("LOYALTY_TEST_DBT_LOG")
    kill = os.environ.get("LOYALTY_TEST_DBT_KILL_AFTER")
    pattern = re.compile(kill, re.I) if kill else None
    execute = DuckDBCursorWrapper.execute

    def hooked(self, sql, bindings=None):  # type: ignore[no-untyped-def]
        out = execute(self, sql, bindings)
        text = " ".join(str(sql).split())
        if log:
            with open(log, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(text) + "\n")
        if pattern is not None and pattern.search(text):
            print(f"killed after: {text[:300]}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    DuckDBCursorWrapper.execute = hooked


if __name__ == "__main__":
    _install()
    from pipelines.cli import main

    sys.exit(main(sys.argv[1:]))
