"""Operations parts on their own: progress rendering, the alert hook against real local receivers, `status` on a real
DuckDB file (including while another process holds it), backfill chunk planning/resume bookkeeping, the cron
wrapper's lock, and the systemd units (`systemd-analyze verify`, where installed)."""

from __future__ import annotations

import datetime as dt
import fcntl
import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pendulum
import pytest

from pipelines import alerts, backfill, state
from pipelines.logs import register_secret
from pipelines.progress import RunProgress
from pipelines.report import RunReport, SourceReport, render_summary

ROOT = Path(__file__).resolve().parents[1]
ETL = [sys.executable, "-m", "pipelines.cli"]
UTC = dt.timezone.utc


# ---------------------------------------------------------------------------------------------------- helpers
class _Receiver(http.server.BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append({"path": self.path, "type": self.headers["Content-Type"], "body": json.loads(body)})
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver():
    """A webhook receiver on a free loopback port: yields (url, list of received requests)."""
    handler = type("Receiver", (_Receiver,), {"received": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/T0KEN-abc123", handler.received
    server.shutdown()
    server.server_close()


def _partial_report(secret: str = "") -> RunReport:
    report = RunReport(command="run", error=None)
    report.sources["carecloud"] = SourceReport(
        window_start=pendulum.datetime(2026, 11, 17), window_end=pendulum.datetime(2026, 11, 20),
        customers_total=3, customers_done=2, customers_failed=1, failed_customers=["cust-9"], requests=12,
        records=40)
    report.extra["note"] = f"upstream said {secret}" if secret else "-"
    return report.finish()


def _alert_command(out: Path) -> str:
    """A shell command that writes its stdin, the JSON env var and its environment keys to files."""
    return (f"cat > {out}.stdin; printf '%s' \"$LOYALTY_ALERT_JSON\" > {out}.json; "
            f"env | cut -d= -f1 > {out}.env; echo \"$LOYALTY_RUN_STATUS $LOYALTY_EXIT_CODE\" > {out}.status")


def _settings(command: str = "", webhook: str = ""):
    import argparse

    return argparse.Namespace(alert_command=command, alert_webhook=webhook)


# ---------------------------------------------------------------------------------------------------- progress
def test_progress_plain_lines_every_interval_and_exact_counts_from_many_threads():
    stream = io.StringIO()
    progress = RunProgress({"carecloud": 8000, "capillary": 10}, interactive=False, interval_s=0.05, stream=stream)

    def worker() -> None:
        for _ in range(1000):
            progress.update("carecloud", customers_done=1, records=3, requests=2, retries=1)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    progress.update("capillary", customers_failed=2, http_429=5)
    time.sleep(0.2)   # no update in this time: the background thread still writes lines
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) >= 3 and all(line.startswith("progress ") for line in lines)
    assert "carecloud: 8000/8000 customers (0 failed), 24,000 records" in lines[-1]
    assert "8000 retries" in lines[-1] and "ETA 0:00" in lines[-1]
    assert "capillary: 2/10 customers (2 failed)" in lines[-1] and "5 x429" in lines[-1]
    snap = progress.snapshot()
    assert snap["carecloud"]["requests"] == 16000 and snap["carecloud"]["done"] == 8000


def test_progress_on_a_terminal_is_drawn_by_rich():
    stream = io.StringIO()
    progress = RunProgress({"carecloud": 4}, interactive=True, stream=stream)
    progress.update("carecloud", customers_done=3, customers_failed=1, records=1234, requests=9, http_429=2)
    progress.close()
    out = stream.getvalue()
    assert "\x1b[" in out                    # rich's terminal control codes, not plain lines
    assert "4/4" in out and "1,234 rec" in out and "2x429" in out
    assert "progress " not in out


# ---------------------------------------------------------------------------------------------------- alerts
def test_alert_webhook_and_command_receive_the_summary_redacted(receiver, tmp_path, monkeypatch):
    url, received = receiver
    secret = "s3cret-token-for-ops-test"
    register_secret(secret)
    monkeypatch.setenv("SOURCES__CARECLOUD__CREDENTIALS__PASSWORD", secret)
    report = _partial_report(secret)
    out = tmp_path / "alert"
    alerts.notify(_settings(_alert_command(out), url), report)

    assert len(received) == 1
    body = received[0]["body"]
    assert received[0]["type"] == "application/json"
    assert body["run"]["run_id"] == report.run_id and body["run"]["status"] == "partial"
    assert body["run"]["sources"]["carecloud"]["failed_customers"] == ["cust-9"]
    assert body["text"] == render_summary(report) and "cust-9" in body["text"]

    stdin = (out.parent / "alert.stdin").read_text()
    assert stdin.strip() == render_summary(report)
    as_json = json.loads((out.parent / "alert.json").read_text())
    assert as_json["exit_code"] == 2 and as_json["sources"]["carecloud"]["customers_failed"] == 1
    assert (out.parent / "alert.status").read_text().split() == ["partial", "2"]
    env_keys = (out.parent / "alert.env").read_text().split()
    assert "SOURCES__CARECLOUD__CREDENTIALS__PASSWORD" not in env_keys and "LOYALTY_RUN_ID" in env_keys

    everything = json.dumps(received) + stdin + (out.parent / "alert.json").read_text()
    assert secret not in everything and "***" in everything


def test_alert_not_sent_for_a_good_run_and_never_raises(receiver, tmp_path, caplog):
    url, received = receiver
    ok = RunReport()
    ok.sources["carecloud"] = SourceReport(customers_total=1, customers_done=1)
    alerts.notify(_settings(f"touch {tmp_path}/called", url), ok.finish())
    assert received == [] and not (tmp_path / "called").exists()

    failed = RunReport(error="boom").finish()
    # a receiver that is not there, a command that fails: logged, not raised
    alerts.notify(_settings("exit 3", "http://127.0.0.1:9/nothing-listens"), failed)
    assert "alert_command exited 3" in caplog.text and "alert_webhook POST failed" in caplog.text
    assert "127.0.0.1:9" not in caplog.text      # webhook URLs carry tokens: never logged


def test_alert_command_timeout_is_bounded(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(alerts, "COMMAND_TIMEOUT_S", 0.5)
    start = time.monotonic()
    alerts.notify(_settings("sleep 30"), RunReport(error="boom").finish())
    assert time.monotonic() - start < 5 and "did not finish" in caplog.text


def test_alert_module_for_a_killed_process_sends_log_tail(receiver, tmp_path):
    url, received = receiver
    log = tmp_path / "run.log"
    log.write_text("line one\nlast words before the kill\n")
    env = {**os.environ, "LOYALTY__ALERT_WEBHOOK": url}
    done = subprocess.run([sys.executable, "-m", "pipelines.alerts", "--exit-code", "KILL", "--log", str(log)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert len(received) == 1
    run = received[0]["body"]["run"]
    assert run["exit_code"] == 137 and run["status"] == "failed"
    assert "killed by SIGKILL" in run["error"] and "last words before the kill" in run["error"]


# ---------------------------------------------------------------------------------------------------- status
def _warehouse_with_runs(path: Path) -> tuple[RunReport, RunReport]:
    con = duckdb.connect(str(path))
    state.ensure_tables(con)
    first = RunReport(started_at=pendulum.datetime(2026, 11, 20, 2, 15))
    first.sources["carecloud"] = SourceReport(window_start=pendulum.datetime(2024, 1, 1),
                                              window_end=pendulum.datetime(2026, 11, 20, 2, 5), customers_total=2,
                                              customers_done=2, records=77)
    first.finish()
    state.commit(con, run_id=first.run_id, source="carecloud", window_end=first.sources["carecloud"].window_end,
                 succeeded=["c-1", "c-2"], failed={}, issues=[], report=first)
    second = RunReport(started_at=pendulum.datetime(2026, 11, 21, 2, 15))
    second.sources["carecloud"] = SourceReport(window_start=pendulum.datetime(2026, 11, 17, 2, 5),
                                               window_end=pendulum.datetime(2026, 11, 21, 2, 5), customers_total=2,
                                               customers_done=1, customers_failed=1, failed_customers=["c-2"])
    second.finish()
    state.commit(con, run_id=second.run_id, source="carecloud", window_end=second.sources["carecloud"].window_end,
                 succeeded=["c-1"], failed={"c-2": "HTTP 503 after 6 attempts [/retry]"}, issues=[], report=second)
    con.close()
    return first, second


def test_status_shows_runs_windows_and_failing_customers(tmp_path):
    wh = tmp_path / "wh.duckdb"
    first, second = _warehouse_with_runs(wh)
    env = {**os.environ, "DESTINATION__DUCKDB__CREDENTIALS": str(wh)}
    done = subprocess.run([*ETL, "status"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.index(second.run_id) < out.index(first.run_id)         # newest first
    assert "partial" in out and "ok" in out
    assert "carecloud: 2026-11-17 02:05 → 2026-11-21 02:05" in out
    assert "Customers currently failing: 1" in out and "c-2" in out and "HTTP 503 after 6 attempts [/retry]" in out

    from pipelines.commands.status import read_status

    data = read_status(wh)             # what `status --json` prints
    assert [r["run_id"] for r in data["runs"]] == [second.run_id, first.run_id]
    assert [(f["customer_id"], f["consecutive_failures"]) for f in data["failing"]] == [("c-2", 1)]


def test_status_while_a_load_holds_the_file_says_so_and_does_not_wait(tmp_path):
    wh = tmp_path / "wh.duckdb"
    _warehouse_with_runs(wh)
    writer = duckdb.connect(str(wh))   # this test process plays the running load
    try:
        env = {**os.environ, "DESTINATION__DUCKDB__CREDENTIALS": str(wh)}
        start = time.monotonic()
        done = subprocess.run([*ETL, "status"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 75
        assert "a load is running" in done.stderr and "retry shortly" in done.stderr
        assert time.monotonic() - start < 30
        writer.execute("SELECT count(*) FROM loyalty_raw.runs").fetchone()   # the writer was never disturbed
    finally:
        writer.close()


def test_status_without_a_warehouse(tmp_path, monkeypatch, capsys):
    from pipelines.cli import main

    monkeypatch.setenv("DESTINATION__DUCKDB__CREDENTIALS", str(tmp_path / "none.duckdb"))
    assert main(["status"]) == 1
    assert "no warehouse" in capsys.readouterr().err
    assert not (tmp_path / "none.duckdb").exists()     # a reader never creates the file


# ---------------------------------------------------------------------------------------------------- backfill
def test_backfill_chunks_and_resume_bookkeeping(tmp_path):
    since, until = pendulum.datetime(2026, 1, 1), pendulum.datetime(2026, 1, 20)
    chunks = backfill.plan_chunks(since, until, pendulum.duration(days=7))
    assert [(c.start.day, c.end.day) for c in chunks] == [(1, 8), (8, 15), (15, 20)]
    with pytest.raises(ValueError):
        backfill.plan_chunks(until, since, pendulum.duration(days=7))

    con = duckdb.connect(str(tmp_path / "wh.duckdb"))
    backfill.ensure_table(con)
    customers = ["a", "b", "c"]
    assert [p.chunk for p in backfill.pending(con, "carecloud", chunks, customers)] == chunks
    plans = backfill.pending(con, "carecloud", chunks, customers)
    backfill.record_chunk(con, "carecloud", plans[0], "r1", [], 10)
    backfill.record_chunk(con, "carecloud", plans[1], "r1", ["b"], 5)
    left = backfill.pending(con, "carecloud", chunks, customers)
    assert [(p.chunk, p.customers, p.retry) for p in left] == [(chunks[1], ["b"], True), (chunks[2], customers, False)]
    assert backfill.pending(con, "capillary", chunks, customers)[0].customers == customers  # per source
    # a customer added to the list: nothing done so far fetched it, so every chunk is pending for the new list
    assert [p.chunk for p in backfill.pending(con, "carecloud", chunks, [*customers, "d"])] == chunks
    assert backfill.customer_set(["b", "a", "a"]) == backfill.customer_set(["a", "b"])
    # a rerun with another chunk size still skips what completed rows cover
    daily = backfill.plan_chunks(since, until, pendulum.duration(days=1))
    assert min(p.chunk.start for p in backfill.pending(con, "carecloud", daily, customers)) == chunks[1].start
    backfill.record_chunk(con, "carecloud", left[0], "r2", [], 1)
    assert [p.chunk for p in backfill.pending(con, "carecloud", chunks, customers)] == [chunks[2]]
    assert con.execute("SELECT records FROM loyalty_raw._backfill_progress WHERE chunk_start = ?",
                       [chunks[1].start]).fetchone()[0] == 6
    con.close()


# ---------------------------------------------------------------------------------------------------- deploy
def test_cron_wrapper_refuses_to_overlap_and_alerts(tmp_path):
    out = tmp_path / "alert"
    lock = tmp_path / "cron.lock"
    env = {**os.environ, "LOYALTY_PROJECT_DIR": str(ROOT), "LOYALTY_VENV": str(Path(sys.executable).parent.parent),
           "LOYALTY_LOG_DIR": str(tmp_path / "logs"), "LOYALTY_LOCK_FILE": str(lock),
           "LOYALTY__ALERT_COMMAND": _alert_command(out)}
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)   # last night's run, still going
        done = subprocess.run([str(ROOT / "deploy/cron/loyalty-etl-cron.sh"), "status"], env=env,
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 75
    log = (tmp_path / "logs" / "latest.log").read_text()
    assert "previous run still holds" in log and "exit code 75" in log
    assert "the previous run still holds the lock" in (tmp_path / "alert.stdin").read_text()


def test_systemd_units_verify(tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze not installed")
    units = ("loyalty-etl.service", "loyalty-etl.timer", "loyalty-etl-events.service")
    for unit in units:
        text = (ROOT / "deploy/systemd" / unit).read_text()
        # the recipe's install path and user are placeholders; check it as installed here
        text = text.replace("/opt/loyalty-warehouse", str(ROOT))
        text = text.replace("User=loyalty", "User=root").replace("Group=loyalty", "Group=root")
        (tmp_path / unit).write_text(text)
    done = subprocess.run(["systemd-analyze", "verify", *units],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    problems = [line for line in done.stderr.splitlines() if "loyalty-etl" in line]
    assert done.returncode == 0 and not problems, done.stderr


def test_airflow_dag_compiles():
    """At least valid Python here; Airflow itself imports and runs the DAG in its own venv: tests/test_airflow_dag.py,
    `make test-airflow` (Airflow is not a project dependency: its pins and the project's must not meet)."""
    source = (ROOT / "deploy/airflow/loyalty_etl_dag.py").read_text()
    compile(source, "loyalty_etl_dag.py", "exec")
