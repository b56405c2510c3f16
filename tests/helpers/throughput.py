"""Quick throughput figure: the real CLI (`loyalty-etl run --no-models`) against an in-process sandbox.

    .venv/bin/python -m tests.helpers.throughput --customers 3000 [--source carecloud|capillary|all]

Prints records/s (wall, whole run including start-up) and the pipeline process's CPU seconds. The sandbox serves
from this process on a background thread, so it shares the machine's cores with the pipeline. `make bench` is the
real benchmark; this is the developer's quick check.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipelines.sandbox import FaultConfig, Sandbox, SandboxConfig

REPO = Path(__file__).resolve().parents[2]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=3000)
    ap.add_argument("--source", default="carecloud", choices=["carecloud", "capillary", "all"])
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    sb = Sandbox(SandboxConfig(customers=args.customers, seed=7, now="2026-11-20T00:00:00+00:00"), FaultConfig())
    sb.start()
    sb.warm()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**{k: v for k, v in __import__("os").environ.items() if not k.startswith(("SOURCES__", "LOYALTY__"))},
               **sb.env(Path(tmp) / "loyalty_warehouse.duckdb"),
               "SOURCES__CARECLOUD__RATE_LIMIT": "0", "SOURCES__CAPILLARY__RATE_LIMIT": "0",
               "SOURCES__CARECLOUD__CONCURRENCY": str(args.concurrency),
               "SOURCES__CAPILLARY__CONCURRENCY": str(args.concurrency), "RUNTIME__LOG_LEVEL": "ERROR"}
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "--no-models", "--source", args.source,
                               "--until", "2026-11-19T23:50:00Z"], cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.monotonic() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    stats = sb.stats()
    sb.stop()
    records = sum(stats["records_served"].values())
    print(proc.stdout.strip())
    print(f"exit {proc.returncode}; {records:,} records served in {wall:.1f}s wall = {records / wall:,.0f} records/s; "
          f"pipeline CPU {usage.ru_utime + usage.ru_stime:.1f}s ({records / (usage.ru_utime + usage.ru_stime):,.0f} "
          f"records per CPU second), peak RSS {usage.ru_maxrss / 1024:.0f} MB")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
