"""Run the real `loyalty-etl` CLI in a subprocess against a sandbox, the way cron would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb

REPO_ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "pipelines.cli"]

# Fast settings for tests: no real rate limit to respect, tiny backoff so retry storms take milliseconds.
FAST = {
    "SOURCES__CARECLOUD__RATE_LIMIT": "2000",
    "SOURCES__CAPILLARY__RATE_LIMIT": "2000",
    "SOURCES__CARECLOUD__RETRY_BACKOFF": "0.02",
    "SOURCES__CAPILLARY__RETRY_BACKOFF": "0.02",
    "SOURCES__CARECLOUD__CONCURRENCY": "8",
    "SOURCES__CAPILLARY__CONCURRENCY": "8",
    "RUNTIME__LOG_LEVEL": "ERROR",
}


def cli_env(sandbox_env: dict[str, str], **extra: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOURCES__", "DESTINATION__", "LOYALTY__"))}
    env.update(FAST)
    env.update(sandbox_env)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def query(warehouse: str | Path | Any, sql: str, params: list | None = None) -> list[tuple]:
    """Read-only `sql` on the warehouse file, or on a `pipelines.warehouse.Warehouse` (a lake)."""
    conn = (warehouse.connect(read_only=True) if hasattr(warehouse, "connect")
            else duckdb.connect(str(warehouse), read_only=True))
    try:
        return conn.execute(sql, params or []).fetchall()
    finally:
        conn.close()
