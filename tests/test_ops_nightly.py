"""Nightly operations end to end: the real CLI in subprocesses (no terminal) against the sandbox and a real DuckDB
file. A cron-style run leaves a readable log and a `runs` row, `status` shows it; a failing run calls the alert
hook once; a backfill killed mid-way resumes, ends identical to the truth and leaves the nightly state as it was."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pytest

from tests.chaos.compare import compare
from tests.chaos.harness import KILLED
from pipelines.commands.status import read_status
from pipelines.sandbox.config import CAPILLARY_PASSWORD, CARECLOUD_PASSWORD
from tests.test_ops_parts import receiver  # noqa: F401  (fixture: a webhook receiver on a free port)

ROOT = Path(__file__).resolve().parents[1]
ETL = [sys.executable, "-m", "pipelines.cli"]
CRON = ROOT / "deploy" / "cron" / "loyalty-etl-cron.sh"
VENV = Path(sys.executable).parent.parent


def _setup(sandbox_factory, sandbox_env, tmp_path, customers: int = 12, **env: str):
    sb = sandbox_factory(customers=customers)
    warehouse = tmp_path / "warehouse" / "loyalty_warehouse.duckdb"
    warehouse.parent.mkdir(parents=True)
    run_env = {**os.environ, **sandbox_env(sb, warehouse), "LOYALTY_LOG_DIR": str(tmp_path / "logs"),
               "LOYALTY_VENV": str(VENV), "LOYALTY_PROJECT_DIR": str(ROOT), **env}
    run_env.pop("LOYALTY_TEST_CRASH_AT", None)
    until = datetime.fromtimestamp(sb.now(), timezone.utc)
    return sb, warehouse, run_env, until


def _rows(warehouse: Path, sql: str, params: list | None = None) -> list[tuple]:
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def _cli(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _cli_on_a_terminal(args: list[str], env: dict[str, str], timeout: float = 300) -> tuple[int, str]:
    """Run the CLI with stdout and stderr on a pseudo-terminal, as a person at a shell would; returns (rc, output)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, cwd=ROOT, env={**env, "COLUMNS": "160"}, stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=slave)
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:   # keep reading so the child never blocks on a full terminal buffer
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed its side
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    rc = proc.wait(timeout=timeout)
    reader.join(timeout=10)
    os.close(master)
    return rc, b"".join(chunks).decode("utf-8", "replace")


def test_cron_run_leaves_log_and_runs_row_and_status_shows_it(sandbox_factory, sandbox_env, tmp_path):
    sb, warehouse, env, until = _setup(sandbox_factory, sandbox_env, tmp_path,
                                       SOURCES__CARECLOUD__INITIAL_START="2026-09-01T00:00:00+00:00",
                                       SOURCES__CAPILLARY__INITIAL_START="2026-09-01T00:00:00+00:00")
    done = _cli([str(CRON), "run", "--until", until.isoformat(), "--no-models"], env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == "" and done.stderr == ""          # cron mails nothing on success: it is all in the log

    logs = sorted((tmp_path / "logs").glob("loyalty-etl-*-run.log"))
    assert len(logs) == 1 and (tmp_path / "logs" / "latest.log").resolve() == logs[0].resolve()
    log = logs[0].read_text()
    assert "\x1b[" not in log                                # no terminal: plain lines, no rich control codes
    assert CARECLOUD_PASSWORD not in log and CAPILLARY_PASSWORD not in log
    assert "loyalty-etl-cron: start: loyalty-etl run" in log and "exit code 0" in log
    progress = [line for line in log.splitlines() if "INFO loyalty.progress: progress " in line]
    assert progress and "carecloud: 12/12 customers (0 failed)" in progress[-1]
    assert "capillary: 12/12 customers (0 failed)" in progress[-1]

    [run] = _rows(warehouse, "SELECT run_id, command, status, exit_code, customers_done, customers_failed, records, "
                             "requests, sources, rows_by_table, ended_at > started_at FROM loyalty_raw.runs")
    run_id, command, status, exit_code, done_n, failed_n, records, requests, sources, rows_by_table, ordered = run
    assert (command, status, exit_code, done_n, failed_n, ordered) == ("run", "ok", 0, 24, 0, True)
    assert f"run {run_id} (run): OK" in log                  # the human summary is in the log too
    sources = json.loads(sources)
    assert sources["carecloud"]["window_end"].startswith(until.isoformat()[:19])
    assert sources["carecloud"]["window_start"].startswith("2026-09-01T00:00:00")
    truth = compare(warehouse, sb.truth(), until=until, initial_start=datetime(2026, 9, 1, tzinfo=timezone.utc),
                    ledger=False)
    assert truth.ok, str(truth)
    loaded = _rows(warehouse, "SELECT count(*) FROM loyalty_raw.carecloud_point_history")[0][0]
    assert loaded > 0 and json.loads(rows_by_table)["carecloud_point_history"] == loaded
    assert requests >= 24 and records >= loaded

    status = _cli([*ETL, "status"], env)
    assert status.returncode == 0, status.stderr
    assert run_id in status.stdout and " ok " in status.stdout
    assert f"carecloud: 2026-09-01 00:00 → {until:%Y-%m-%d %H:%M}" in status.stdout
    assert "no customer is currently failing" in status.stdout


def test_failing_run_calls_the_alert_hook_once(sandbox_factory, sandbox_env, tmp_path, receiver):
    url, requests = receiver
    out = tmp_path / "alert.txt"
    # Capillary's API is unreachable (nothing listens on port 9): its customers fail, CareCloud's load
    sb, warehouse, env, until = _setup(
        sandbox_factory, sandbox_env, tmp_path, customers=5,
        SOURCES__CAPILLARY__BASE_URL="http://127.0.0.1:9", SOURCES__CAPILLARY__MAX_ATTEMPTS="1",
        SOURCES__CARECLOUD__INITIAL_START="2026-11-01T00:00:00+00:00",
        LOYALTY__ALERT_WEBHOOK=url, LOYALTY__ALERT_COMMAND=f"cat > {out}")
    done = _cli([str(CRON), "run", "--until", until.isoformat(), "--no-models"], env)
    assert done.returncode == 2, (tmp_path / "logs" / "latest.log").read_text()   # partial: some customers failed

    [(run_id, failed)] = _rows(warehouse, "SELECT run_id, customers_failed FROM loyalty_raw.runs "
                                          "WHERE status = 'partial' AND exit_code = 2")
    assert failed == 5
    assert len(requests) == 1, requests          # the run alerted itself; the wrapper did not alert again
    run = requests[0]["body"]["run"]
    assert run["run_id"] == run_id and run["status"] == "partial"
    assert sorted(run["sources"]["capillary"]["failed_customers"]) == sorted(sb.customer_ids("capillary"))
    assert run["sources"]["carecloud"]["customers_done"] == 5          # the good source still loaded
    text = out.read_text()
    assert text.startswith(f"run {run_id} (run): PARTIAL") and "failed: " in text
    assert CAPILLARY_PASSWORD not in text + json.dumps(requests)


def test_killed_backfill_resumes_matches_truth_and_keeps_nightly_state(sandbox_factory, sandbox_env, tmp_path):
    nightly_start = "2026-10-01T00:00:00+00:00"
    sb, warehouse, env, until = _setup(sandbox_factory, sandbox_env, tmp_path, customers=10,
                                       SOURCES__CARECLOUD__INITIAL_START=nightly_start,
                                       SOURCES__CAPILLARY__INITIAL_START=nightly_start)
    # the nightly run, started by hand at a terminal: rich draws the progress bars
    rc, output = _cli_on_a_terminal([*ETL, "run", "--until", until.isoformat(), "--no-models"], env)
    assert rc == 0, output
    assert "\x1b[" in output and "loyalty.progress: progress" not in output          # bars, not plain lines
    assert re.search(r"carecloud\S* \S+ \S*10/10", output) and "req/s" in output and "ETA" in output
    state_sql = "SELECT * FROM loyalty_raw._customer_sync_state ORDER BY source, customer_id"
    state_before = _rows(warehouse, state_sql)
    assert len(state_before) == 20

    # 2026-06-01 .. 2026-10-01 in 61-day chunks: 2 per source; die at the 4th chunk commit (capillary's 2nd)
    args = [*ETL, "-v", "backfill", "--since", "2026-06-01", "--until", "2026-10-01", "--chunk", "61d", "--no-models"]
    crashed = _cli(args, {**env, "LOYALTY_TEST_CRASH_AT": "state:4"})
    assert crashed.returncode == KILLED, crashed.stderr
    chunks = _rows(warehouse, "SELECT source, count(*) FROM loyalty_raw._backfill_progress GROUP BY 1 ORDER BY 1")
    assert chunks == [("capillary", 1), ("carecloud", 2)]

    resumed = _cli([*ETL, "--log-format", "json", *args[len(ETL):]], env)
    assert resumed.returncode == 0, resumed.stderr
    events = []
    for line in resumed.stderr.splitlines():        # every line is one JSON event
        try:
            events.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON log line: {line!r}")
    assert any(e.get("logger") == "loyalty.progress" and e["progress"]["capillary"]["done"] == 10 for e in events)
    assert "backfill carecloud: 2 chunks of" in resumed.stderr and "2 done before, 0 to load" in resumed.stderr
    assert "backfill capillary: 2 chunks of" in resumed.stderr and "1 done before, 1 to load" in resumed.stderr
    assert _rows(warehouse, "SELECT source, count(*), sum(customers_failed) FROM loyalty_raw._backfill_progress "
                            "GROUP BY 1 ORDER BY 1") == [("capillary", 2, 0), ("carecloud", 2, 0)]
    assert _rows(warehouse, state_sql) == state_before          # the nightly windows did not move

    truth = compare(warehouse, sb.truth(), until=until, initial_start=datetime(2026, 6, 1, tzinfo=timezone.utc),
                    ledger=False)
    assert truth.ok, str(truth)
    coverage = {b["source"]: (b["covered_from"], b["covered_until"], b["chunks"])
                for b in read_status(warehouse)["backfill"]}                 # what `status` shows
    june, october = datetime(2026, 6, 1, tzinfo=timezone.utc), datetime(2026, 10, 1, tzinfo=timezone.utc)
    assert coverage == {"carecloud": (june, october, 2), "capillary": (june, october, 2)}
    [(status, customers_done)] = _rows(warehouse, "SELECT status, customers_done FROM loyalty_raw.runs "
                                                  "WHERE command = 'backfill'")
    assert status == "ok" and customers_done == 10            # the one capillary chunk left x 10 customers
