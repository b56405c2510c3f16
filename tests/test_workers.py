"""Extraction in worker processes (`pipelines/workers.py`): the same rows as extracting in the run's own process,
one login and one request budget across the processes, workers that die with a killed run, and one type per
column however the workers first saw it."""

from __future__ import annotations

import datetime as dt
import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pyarrow as pa

from tests.chaos.compare import compare
from tests.helpers.cli import CLI, REPO_ROOT, cli_env, query, run_cli
from pipelines.columns import ColumnTypes
from pipelines.extraction import ExtractJob
from pipelines.http import HttpStats
from pipelines.workers import _Coalescer, _conform, chunk_customers

NOW = dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc)
UNTIL = "2026-11-20T00:00:00Z"
# tables whose rows hold run ids or timestamps of the run itself: compared apart or not at all
RUN_TABLES = {"runs", "sync_issues", "_customer_sync_state"}
RUN_COLUMNS = {"_loaded_run_id", "_dlt_load_id", "_dlt_id", "run_id", "created_at"}


def _run(env: dict[str, str], expect: int = 0) -> subprocess.CompletedProcess:
    proc = run_cli(env, "run", "--no-models", "--until", UNTIL)
    assert proc.returncode == expect, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc


def _data_rows(wh: Path) -> dict[str, list[tuple]]:
    """Every loaded table, all rows, columns by name (new columns are added in the order batches arrive), without
    the columns that name the run."""
    tables = [r[0] for r in query(wh, "select table_name from information_schema.tables where table_schema = "
                                      "'loyalty_raw' and table_name not like '\\_dlt%' escape '\\'")]
    out = {}
    for table in sorted(set(tables) - RUN_TABLES):
        cols = [r[0] for r in query(wh, "select column_name from information_schema.columns where table_schema = "
                                        "'loyalty_raw' and table_name = ? order by column_name", [table])]
        keep = ", ".join(f'"{c}"' for c in cols if c not in RUN_COLUMNS)
        out[table] = query(wh, f"select {keep} from loyalty_raw.{table} order by all")
    return out


def test_worker_pool_loads_what_in_process_extraction_loads(sandbox_factory, sandbox_env, tmp_path: Path) -> None:
    """Bad input (new fields, a number sent as a string, broken times) over many one-customer chunks and small
    rounds (so chunks are carried into the next round): both ways give the truth, and the same rows."""
    sb = sandbox_factory(customers=60, now=NOW, extra_fields=True, type_drift=True, bad_times=True)
    assert chunk_customers(200) == 1
    rows, issues = {}, {}
    for processes in (1, 2):
        wh = tmp_path / f"p{processes}" / "loyalty_warehouse.duckdb"
        env = cli_env(sandbox_env(sb, wh), LOYALTY__EXTRACT_PROCESSES=processes, LOYALTY__ROUND_RECORDS=200,
                      LOYALTY__BATCH_ROWS=100, RUNTIME__LOG_LEVEL="INFO")
        proc = _run(env)
        assert ("extraction workers started" in proc.stderr) == (processes == 2), proc.stderr[-2000:]
        cmp = compare(wh, sb.truth(), until=NOW, ledger=False)
        assert cmp.ok, str(cmp)
        rounds = query(wh, "select count(*) from loyalty_raw._dlt_loads")[0][0]
        assert rounds >= 2, rounds
        rows[processes] = _data_rows(wh)
        issues[processes] = sorted(query(wh, "select source, coalesce(customer_id, ''), code "
                                             "from loyalty_raw.sync_issues"))
    assert rows[1].keys() == rows[2].keys() and "carecloud_point_history" in rows[1]
    for table in rows[1]:
        assert rows[1][table] == rows[2][table], _first_difference(table, rows[1][table], rows[2][table])
    # per-record issues are the same; which records report a new field or a type drift depends on which batch saw
    # the column first (thread completion order), in one process as across workers
    per_batch = {"unknown_field", "type_coerced", "type_mismatch"}
    assert [i for i in issues[1] if i[2] not in per_batch] == [i for i in issues[2] if i[2] not in per_batch]
    assert {i[2] for i in issues[1]} == {i[2] for i in issues[2]} >= per_batch - {"type_mismatch"}


def _first_difference(table: str, a: list[tuple], b: list[tuple]) -> str:
    if len(a) != len(b):
        return f"{table}: {len(a)} rows in-process, {len(b)} with workers"
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            cols = [j for j, (u, v) in enumerate(zip(x, y)) if u != v]
            return f"{table} row {i}: columns {cols} differ: {[x[j] for j in cols]} vs {[y[j] for j in cols]}"
    return table


def test_workers_share_one_login_and_one_request_budget(sandbox_factory, sandbox_env, tmp_path: Path) -> None:
    """The sandbox limits each credential to 40 requests/s and expires the token every 15 requests; the run's
    limiter is set to 34/s. Two workers with a limiter each would send ~68/s and meet 429s; two workers with
    separate tokens would log in once per process per expiry."""
    sb = sandbox_factory(customers=50, now=NOW, rate_limit_rps=40, rate_limit_burst=4, token_max_requests=15)
    wh = tmp_path / "loyalty_warehouse.duckdb"
    env = cli_env(sandbox_env(sb, wh), LOYALTY__EXTRACT_PROCESSES=2, LOYALTY__ROUND_RECORDS=400,
                  SOURCES__CARECLOUD__RATE_LIMIT=34, SOURCES__CAPILLARY__RATE_LIMIT=34,
                  SOURCES__CARECLOUD__MAX_ATTEMPTS=10, SOURCES__CAPILLARY__MAX_ATTEMPTS=10)
    started = time.monotonic()
    _run(env)
    elapsed = time.monotonic() - started
    cmp = compare(wh, sb.truth(), until=NOW, ledger=False)
    assert cmp.ok, str(cmp)
    stats = sb.stats()["requests"]
    answered = {endpoint: sum(by_status.values()) for endpoint, by_status in stats.items()}
    x429 = sum(by_status.get("429", 0) for by_status in stats.values())
    assert x429 == 0, stats
    # ~50 requests per source at 34/s: the two sources run side by side, each under its own budget
    assert answered["carecloud.point_history"] >= 50 and elapsed > 50 / 34 * 0.8
    expired = sb.stats()["faults"].get("token_expired", 0)
    logins = stats.get("carecloud.login", {}).get("200", 0)
    assert expired >= 2 and logins == expired + 1, (expired, logins, stats)


def test_killed_run_takes_its_workers_with_it(sandbox_factory, sandbox_env, tmp_path: Path) -> None:
    """SIGKILL of the run (here at its first load): the kernel ends the workers too (PR_SET_PDEATHSIG), so nothing
    is left blocked on the task queue holding the run's pipes open; the next run loads everything."""
    sb = sandbox_factory(customers=30, now=NOW)
    wh = tmp_path / "loyalty_warehouse.duckdb"
    env = cli_env(sandbox_env(sb, wh), LOYALTY__EXTRACT_PROCESSES=2, RUNTIME__LOG_LEVEL="INFO",
                  LOYALTY_TEST_CRASH_AT="load")
    proc = subprocess.Popen([*CLI, "--log-format", "json", "run", "--no-models", "--until", UNTIL], cwd=REPO_ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=120)  # would time out if a worker kept the pipes open
    assert proc.returncode == -signal.SIGKILL, err[-2000:]
    started = [json.loads(line) for line in err.splitlines() if "extraction workers started" in line]
    pids = started[0]["pids"]
    assert len(pids) == 2
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids), pids
    env.pop("LOYALTY_TEST_CRASH_AT")
    _run(env)
    cmp = compare(wh, sb.truth(), until=NOW, ledger=False)
    assert cmp.ok, str(cmp)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return re.split(r"\) ", fh.read(), maxsplit=1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_a_column_keeps_the_type_it_got_first_across_workers() -> None:
    """Worker 1 typed `extended_data__size` as a number, worker 2 (not knowing) as text: the run coerces worker 2's
    values to the column's type and records each one, as extracting in one process would."""
    job = ExtractJob(source="carecloud", run_id="r", tasks=[], types=ColumnTypes(), concurrency=1, batch_rows=10,
                     stats=HttpStats())
    first = pa.table({"customer_id": ["a"], "extended_data__size": [1.5]})
    second = pa.table({"customer_id": ["b", "c", "d"], "extended_data__size": ["2", "big", None]})
    assert _conform(job, [("t", first)])[0][1].equals(first)
    (name, table), = _conform(job, [("t", second)])
    assert table.schema.field("extended_data__size").type == pa.float64()
    assert table.column("extended_data__size").to_pylist() == [2.0, None, None]
    assert [(i.customer_id, i.code) for i in job.issues] == [("b", "type_coerced"), ("c", "type_mismatch")]
    assert job.types.snapshot()["t"] == {"customer_id": "text", "extended_data__size": "double"}


def test_chunks_tables_are_joined_per_table_until_batch_rows() -> None:
    """The run hands dlt one item per `batch_rows` rows and table, not one per chunk: rows, their order and every
    sparse column are kept (a column one chunk lacks is null there); a table whose types cannot be joined is handed
    over part by part rather than lost."""
    merged = _Coalescer(rows=4)
    assert merged.add([("ph", pa.table({"k": ["a", "b"], "x": [1.0, 2.0]})),
                       ("items", pa.table({"k": ["a"], "_idx": pa.array([0], pa.int64())}))]) == []
    (name, table), = merged.add([("ph", pa.table({"k": ["c", "d"], "y": ["p", "q"]}))])
    assert name == "ph"
    assert table.to_pylist() == [{"k": "a", "x": 1.0, "y": None}, {"k": "b", "x": 2.0, "y": None},
                                 {"k": "c", "x": None, "y": "p"}, {"k": "d", "x": None, "y": "q"}]
    assert merged.add([("ph", pa.table({"k": ["e"], "x": ["text now"]}))]) == []
    assert merged.add([("ph", pa.table({"k": ["f"], "x": [3.0]}))]) == []
    rest = merged.flush()
    assert [(n, t.num_rows) for n, t in rest] == [("items", 1), ("ph", 1), ("ph", 1)]  # string vs double: not joined
    assert merged.flush() == []
