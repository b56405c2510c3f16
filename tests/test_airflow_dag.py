"""The Airflow DAG (deploy/airflow/loyalty_etl_dag.py) on a real Airflow 3: `make test-airflow`, not `make test`.

Airflow lives in its own virtual environment (.airflow-venv, installed by `make airflow-venv` with the vendored
constraints); these tests run in the project's venv and drive Airflow's CLI from there, the way an operator would:
`airflow db migrate` into a temporary AIRFLOW_HOME (SQLite), `airflow pools set` for the pools the DAG names,
`airflow dags test` for one DAG run. The DAG's tasks run the project's `loyalty-etl` from the project's venv
against a sandbox started here; the warehouse is then compared row for row with the sandbox's truth.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from tests.chaos.compare import compare
from tests.helpers.cli import FAST, REPO_ROOT, query

pytestmark = pytest.mark.airflow

AIRFLOW_VENV = Path(os.environ.get("LOYALTY_AIRFLOW_VENV", REPO_ROOT / ".airflow-venv"))
AIRFLOW = AIRFLOW_VENV / "bin" / "airflow"
DAG_ID = "loyalty_etl_nightly"
UTC = dt.timezone.utc
# the DAG's schedule is 02:15 UTC daily: this DAG run's data interval ends here, and so does the sandbox's clock
INTERVAL_END = dt.datetime(2026, 11, 20, 2, 15, tzinfo=UTC)

if not AIRFLOW.exists():
    if os.environ.get("LOYALTY_REQUIRE_AIRFLOW", "").strip() not in ("", "0"):   # make test-airflow: never skip
        raise RuntimeError(f"LOYALTY_REQUIRE_AIRFLOW is set but there is no Airflow at {AIRFLOW}")
    pytest.skip(f"no Airflow at {AIRFLOW}: `make test-airflow` installs it", allow_module_level=True)


class Airflow:
    """Airflow's CLI with its own home (SQLite metadata DB) and the DAG folder of this checkout."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.interval_end: dt.datetime | None = None   # of the last triggered run
        self.env = {
            **env,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "deploy" / "airflow"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        }

    def __call__(self, *args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([str(AIRFLOW), *args], env=self.env, cwd=self.home, capture_output=True, text=True,
                              timeout=timeout)
        if check:
            assert done.returncode == 0, (f"airflow {' '.join(args)}: exit {done.returncode}\n"
                                          f"{done.stdout[-6000:]}\n{done.stderr[-6000:]}")
        return done

    def task_states(self, run_id: str) -> dict[str, list[str]]:
        out = self("tasks", "states-for-dag-run", DAG_ID, run_id, "--output", "json").stdout
        states: dict[str, list[str]] = {}
        for row in json.loads(out[out.index("["):]):
            states.setdefault(row["task_id"], []).append(row["state"])
        return states


def _project_env(sandbox_env: dict[str, str], **settings: str) -> dict[str, str]:
    """What the scheduler and workers see: the project's settings (the sandbox's URLs and credentials, fast
    backoff) and the DAG's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOURCES__", "DESTINATION__", "LOYALTY"))}
    env.update(FAST)
    env.update(sandbox_env)
    env.update({
        "LOYALTY_PROJECT_DIR": str(REPO_ROOT),
        "LOYALTY_VENV": str(Path(sys.executable).parent.parent),
        "LOYALTY_RETRY_DELAY_SECONDS": "1",
    })
    env.update(settings)
    return env


def _dags_test(airflow: Airflow, logical_date: dt.datetime) -> tuple[str, dict[str, list[str]]]:
    # Airflow 3.0's `dags test` finds the DAG's file through the metadata DB: parse the DAG folder into it first
    airflow("dags", "reserialize")
    done = airflow("dags", "test", DAG_ID, logical_date.isoformat(), timeout=1800, check=False)
    (airflow.home / "dags-test.log").write_text(done.stdout + "\n" + done.stderr)
    # `dags test` names its run itself; read it back from the metadata DB
    runs = json.loads(_json(airflow("dags", "list-runs", DAG_ID, "--output", "json").stdout))
    assert runs, "dags test made no DAG run"
    run_id = runs[0]["run_id"]
    return run_id, airflow.task_states(run_id)


@contextmanager
def _scheduler(airflow: Airflow) -> Iterator[None]:
    """`airflow standalone` (scheduler, DAG processor, API server, triggerer; LocalExecutor on the SQLite metadata DB)
    on a free loopback port, in its own process group, stopped with everything it started at the end."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    airflow.env.update({
        "PATH": f"{AIRFLOW_VENV / 'bin'}:{airflow.env.get('PATH', '')}",   # standalone starts `airflow` by name
        "AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": str(port), "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__CORE__PARALLELISM": "8",
    })
    log = open(airflow.home / "standalone.log", "w")
    proc = subprocess.Popen([str(AIRFLOW), "standalone"], env=airflow.env, cwd=airflow.home, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, (airflow.home / "standalone.log").read_text()[-4000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "airflow standalone did not come up in 300 s"
            time.sleep(2)
        yield
    finally:
        _stop_group(proc)
        log.close()


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group (standalone and the components it started), SIGKILL what is left after 60 s."""
    for sig, wait in ((signal.SIGTERM, 60), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.5)


def _triggered_run(airflow: Airflow, logical_date: dt.datetime, timeout: float = 1200) -> tuple[str, list[dict]]:
    """Unpause, trigger one DAG run at `logical_date`, wait for its end; its state and task instances (from the
    metadata DB: pool, start, end, state, try). Airflow 3 gives a triggered run the data interval of its trigger
    time (`run_after`), whatever its logical date: `airflow.interval_end` holds it afterwards."""
    airflow("dags", "unpause", DAG_ID)
    run_id = f"manual__{logical_date:%Y%m%dT%H%M}"
    airflow("dags", "trigger", DAG_ID, "--logical-date", logical_date.isoformat(), "--run-id", run_id)
    deadline = time.monotonic() + timeout
    while True:
        with sqlite3.connect(airflow.home / "airflow.db") as db:
            state = db.execute("select state from dag_run where dag_id = ? and run_id = ?", (DAG_ID, run_id)).fetchone()
        if state and state[0] in ("success", "failed"):
            break
        assert time.monotonic() < deadline, f"DAG run {run_id} still {state} after {timeout} s"
        time.sleep(3)
    with sqlite3.connect(airflow.home / "airflow.db") as db:
        end = db.execute("select data_interval_end from dag_run where dag_id = ? and run_id = ?",
                         (DAG_ID, run_id)).fetchone()[0]
        airflow.interval_end = dt.datetime.fromisoformat(end).replace(microsecond=0, tzinfo=UTC)
        db.row_factory = sqlite3.Row
        tis = [dict(r) for r in db.execute(
            "select task_id, map_index, pool, state, try_number, start_date, end_date from task_instance "
            "where dag_id = ? and run_id = ? order by start_date", (DAG_ID, run_id))]
    return state[0], tis


def _overlaps(a: dict, b: dict) -> bool:
    return a["start_date"] < b["end_date"] and b["start_date"] < a["end_date"]


def _json(out: str) -> str:
    return out[min(i for i in (out.find("["), out.find("{")) if i >= 0):]


def test_dagbag_imports_the_dag_in_airflow(tmp_path: Path) -> None:
    """The DAG file imports in Airflow's own interpreter, with the structure the docs describe: for 4 shards and 2
    credentials, one mapped load task per (source, credential) in that credential's pool, the marts after all of
    them, and C not dividing N refused with a clear import error."""
    check = r"""
import json, sys
from airflow.models import DagBag
bag = DagBag(dag_folder=sys.argv[1], include_examples=False)
out = {"errors": {k: str(v) for k, v in bag.import_errors.items()}}
dag = bag.dags.get("loyalty_etl_nightly")
if dag is not None:
    out["max_active_runs"] = dag.max_active_runs
    out["tasks"] = {t.task_id: {"pool": t.pool, "upstream": sorted(t.upstream_task_ids),
                                "trigger_rule": str(t.trigger_rule), "retries": t.retries,
                                "commands": [str(c) for c in getattr(t, "expand_input").value["bash_command"]]
                                if hasattr(t, "expand_input") else None}
                    for t in dag.tasks}
print(json.dumps(out))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOYALTY")}
    env.update({"AIRFLOW_HOME": str(tmp_path), "LOYALTY_PROJECT_DIR": "/srv/loyalty", "LOYALTY_SHARDS": "4",
                "LOYALTY_WAREHOUSE": "ducklake",
                "LOYALTY_CREDENTIALS": json.dumps({"carecloud": ["eu1", "eu2"], "capillary": ["default"]})})

    def load(**extra: str) -> dict:
        done = subprocess.run([str(AIRFLOW_VENV / "bin" / "python"), "-c", check, str(REPO_ROOT / "deploy/airflow")],
                              env={**env, **extra}, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-4000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    got = load()
    assert not got["errors"], got["errors"]
    tasks = got["tasks"]
    assert got["max_active_runs"] == 1
    assert set(tasks) == {"load_carecloud_eu1", "load_carecloud_eu2", "load_capillary_default", "marts",
                          "all_shards_landed"}
    assert tasks["load_carecloud_eu1"]["pool"] == "loyalty_carecloud_eu1"
    assert tasks["load_carecloud_eu2"]["pool"] == "loyalty_carecloud_eu2"
    assert tasks["load_capillary_default"]["pool"] == "loyalty_capillary_default"

    def shards(task: str) -> list[str]:
        return [c.split("--shard ")[1].split(" ")[0] for c in tasks[task]["commands"]]

    # shard K uses credential (K-1) mod C (TEAM contract 4)
    assert shards("load_carecloud_eu1") == ["1/4", "3/4"] and shards("load_carecloud_eu2") == ["2/4", "4/4"]
    assert shards("load_capillary_default") == ["1/4", "2/4", "3/4", "4/4"]
    for c in tasks["load_carecloud_eu1"]["commands"]:
        assert c.startswith("cd /srv/loyalty && exec /srv/loyalty/.venv/bin/loyalty-etl run --source carecloud")
        assert "--no-models --until {{ data_interval_end" in c
    assert tasks["load_carecloud_eu1"]["retries"] == 2
    assert set(tasks["marts"]["upstream"]) == {"load_carecloud_eu1", "load_carecloud_eu2", "load_capillary_default"}
    assert tasks["marts"]["trigger_rule"] == "all_done"
    assert tasks["all_shards_landed"]["trigger_rule"] == "all_success"
    assert load(LOYALTY_MARTS_RULE="wait")["tasks"]["marts"]["trigger_rule"] == "all_success"
    # an Airflow Variable (here from Airflow's environment secrets backend) wins over the plain environment
    assert load(AIRFLOW_VAR_LOYALTY_MARTS_RULE="wait", LOYALTY_MARTS_RULE="landed")["tasks"]["marts"][
        "trigger_rule"] == "all_success"
    # the embedded file: one writer, so every load in the one 1-slot pool
    assert {t["pool"] for k, t in load(LOYALTY_WAREHOUSE="duckdb")["tasks"].items() if k.startswith("load_")} == \
        {"loyalty_warehouse"}
    # 3 credentials do not divide 4 shards: refused at import, saying why
    bad = load(LOYALTY_CREDENTIALS=json.dumps({"carecloud": ["a", "b", "c"]}))
    assert bad["errors"] and "does not divide LOYALTY_SHARDS=4" in next(iter(bad["errors"].values()))


# ---------------------------------------------------------------------------------------------------------------
# 4 shards, 2 credentials per source, the DuckLake warehouse on a real PostgreSQL

SHARDS = 4
RATE = 10            # the client's limit per credential (req/s)
SANDBOX_RATE = 12    # the sandbox's bucket per credential: above the client's, so a 429 means a credential overspent
# ... and its size. The client's limiter (1 token, RATE/s) spaces its requests >= 1/RATE apart when it SENDS them;
# the sandbox counts them when it HANDLES them, and the delays in between (threads, both processes scheduled on a
# busy machine) vary. k+1 requests sent within k/RATE s all fit a bucket of B tokens refilled at SANDBOX_RATE/s as
# long as that jitter stays under (B - 1)/RATE: 0.1 s for B = 2, which this 2-core machine at load average ~10 broke
# once (1 x 429 in 45 requests of one credential, each shard process alone on it: `airflow dags test` runs tasks one
# after another). B = 5 tolerates 0.4 s. Two processes on one credential at once (what the pools prevent) send
# ~14-20 req/s against 12 and empty it in 1-3 s, about a shard's fetch here: so the scheduler test checks the pools
# directly too (no two tasks of one pool overlap).
SANDBOX_BURST = 5


def _lake_airflow(tmp_path: Path, env: dict[str, str]) -> "Airflow":
    """A fresh Airflow home for the lake with its metadata database and one 1-slot pool per source and credential
    (u1, u2), as docs/operations.md tells an operator to create them."""
    airflow = Airflow(tmp_path / "airflow", env)
    airflow.home.mkdir()
    airflow("db", "migrate")
    for source in ("carecloud", "capillary"):
        for credential in ("u1", "u2"):
            airflow("pools", "set", f"loyalty_{source}_{credential}", "1", f"{source} API credential {credential}")
    return airflow


def _lake_project_env(sb, postgres, root: Path, *, broken: str | None = None, **settings: str) -> dict[str, str]:
    """Scheduler and worker environment for the lake with 2 credentials per source; `broken`: the name of a
    CareCloud credential whose password is made wrong."""
    project = sb.env(root / "wh" / "loyalty_warehouse.duckdb", credentials=2)
    if broken:
        users = json.loads(project["SOURCES__CARECLOUD__CREDENTIALS"])
        for user in users:
            if user["name"] == broken:
                user["password"] = "wrong-" + user["password"]
        project["SOURCES__CARECLOUD__CREDENTIALS"] = json.dumps(users)
    return _project_env(project, **{
        "LOYALTY__WAREHOUSE": "ducklake",
        "DESTINATION__DUCKLAKE__CREDENTIALS__CATALOG": postgres.url,
        "DESTINATION__DUCKLAKE__CREDENTIALS__STORAGE": str(root / "lake"),
        "SOURCES__CARECLOUD__RATE_LIMIT": str(RATE),
        "SOURCES__CAPILLARY__RATE_LIMIT": str(RATE),
        "LOYALTY__EXTRACT_PROCESSES": "1",
        "LOYALTY_SHARDS": str(SHARDS),
        "LOYALTY_CREDENTIALS": json.dumps({"carecloud": ["u1", "u2"], "capillary": ["u1", "u2"]}),
        "LOYALTY_SHARD_RETRIES": "1",
        **settings,
    })


def _open_lake(env: dict[str, str]):
    """The lake as the project sees it with `env` (its own settings loader)."""
    from pipelines.config import load_settings
    from pipelines.warehouse import open_warehouse

    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update({k: v for k, v in env.items() if not k.startswith("AIRFLOW")})
    try:
        return open_warehouse(load_settings())
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _credentials_used(lake) -> dict[tuple[str, str], set[str]]:
    """(source, shard "K/N") -> the credentials the runs of that shard sent any request with, logins and listings
    included (the run report's per-credential counts in `runs.sources`)."""
    out: dict[tuple[str, str], set[str]] = {}
    for extra, sources in query(lake, "select extra, sources from loyalty_raw.runs where command = 'run'"):
        extra = json.loads(extra) if isinstance(extra, str) else extra
        sources = json.loads(sources) if isinstance(sources, str) else sources
        for source, s in sources.items():
            used = {name for name, c in (s.get("credentials") or {}).items() if c.get("requests")}
            out.setdefault((source, extra["shard"]), set()).update(used)
    return out


def _ledger_customers(lake) -> set[str]:
    return {r[0] for r in query(lake, "select distinct customer_id from loyalty.fct_points_ledger "
                                      "where source_system = 'carecloud'")}


def test_dags_test_4_shards_2_credentials_on_the_lake(sandbox_factory, postgres, tmp_path: Path) -> None:
    """The issue's proof: `airflow dags test` of the DAG with 4 shards and 2 credentials per source on a DuckLake
    whose catalog is a real PostgreSQL.
    Night 1, CareCloud's second API user refused (wrong password): the shards that use it (2 and 4) fail after their
    retry, the other shards land, the marts run on what landed (rule `landed`) and `all_shards_landed` fails the DAG
    run. The same night run again with the password fixed (as clearing it would): every row equals the sandbox's
    truth, each customer's window ends at the data interval end, the marts are built, and the sandbox counted no 429
    for any credential, each of which carried its share."""
    from pipelines.sharding import bucket

    sb = sandbox_factory(customers=40, now=INTERVAL_END.isoformat(), api_users=2, heavy_every=0,
                         rate_limit_rps=SANDBOX_RATE, rate_limit_burst=SANDBOX_BURST)
    airflow = _lake_airflow(tmp_path, _lake_project_env(sb, postgres, tmp_path, broken="u2"))

    _, states = _dags_test(airflow, INTERVAL_END)
    assert states == {
        "load_carecloud_u1": ["success", "success"],          # shards 1 and 3
        "load_carecloud_u2": ["failed", "failed"],            # shards 2 and 4: their credential is refused
        "load_capillary_u1": ["success", "success"],
        "load_capillary_u2": ["success", "success"],
        "marts": ["success"],                                 # on what landed
        "all_shards_landed": ["upstream_failed"],             # ... and the DAG run says a shard is missing
    }, states
    lake = _open_lake(airflow.env)
    truth = sb.truth()
    cmp = compare(lake, truth, until=INTERVAL_END, sources=("capillary",), ledger=False)
    assert cmp.ok, str(cmp)
    landed = {r[0] for r in query(lake, "select distinct customer_id from loyalty_raw.carecloud_point_history")}
    with_records = {r["customer_id"] for r in truth.carecloud_point_history.to_pylist()}
    assert landed == {c for c in with_records if bucket(c, SHARDS) in (0, 2)}, "exactly shards 1 and 3 landed"
    assert _ledger_customers(lake) == landed, "the marts were built on what landed"

    # the night again, with the credential fixed
    airflow.env.update(_lake_project_env(sb, postgres, tmp_path))
    _, states = _dags_test(airflow, INTERVAL_END)
    assert all(s == ["success"] * len(s) for s in states.values()), states
    assert len(states["load_carecloud_u1"]) == len(states["load_carecloud_u2"]) == 2
    cmp = compare(lake, truth, until=INTERVAL_END, ledger=False)
    assert cmp.ok, str(cmp)
    ends = query(lake, "select source, count(*), min(last_success_end), max(last_success_end) "
                       "from loyalty_raw._customer_sync_state group by source order by source")
    assert ends == [("capillary", 40, INTERVAL_END, INTERVAL_END), ("carecloud", 40, INTERVAL_END, INTERVAL_END)]
    assert _ledger_customers(lake) == with_records, "the marts were rebuilt with every shard"
    # each shard spoke only with its own credential, the one whose pool its task sits in (not even a login or a
    # listing with the other): shard K uses credential (K-1) mod 2
    assert _credentials_used(lake) == {(s, f"{k}/{SHARDS}"): {f"u{(k - 1) % 2 + 1}"}
                                       for s in ("carecloud", "capillary") for k in range(1, SHARDS + 1)}
    # the marts were built once per night, after that night's shards: one merge per DAG run, started after every
    # shard run had ended
    merges = query(lake, "select started_at from loyalty_raw.runs where command = 'merge' order by started_at")
    assert len(merges) == 2, merges
    last_shard_end = query(lake, "select max(ended_at) from loyalty_raw.runs where command = 'run'")[0][0]
    assert merges[-1][0] >= last_shard_end, (merges, last_shard_end)
    counts = sb.stats()["credentials"]
    assert all(c["429"] == 0 for c in counts.values()), counts
    assert all(counts[k]["requests"] > 0 for k in ("carecloud:sandbox", "carecloud:sandbox-2",
                                                    "capillary:sandbox-key", "capillary:sandbox-key-2")), counts


def test_scheduler_serializes_the_file_warehouse_in_its_one_pool(sandbox_factory, tmp_path: Path) -> None:
    """The DAG as a single-machine user has it (embedded DuckDB file, one shard, one credential per source) under a
    real scheduler (`airflow standalone`, LocalExecutor): both sources' loads sit in the one-slot pool
    `loyalty_warehouse` and never run at once, the marts are built, rows equal the truth, and every customer's window
    ends at the DAG run's data interval end."""
    sb = sandbox_factory(customers=20, now=INTERVAL_END.isoformat())
    wh = tmp_path / "wh" / "loyalty_warehouse.duckdb"
    airflow = Airflow(tmp_path / "airflow", _project_env(sb.env(wh), LOYALTY_SCHEDULE="none"))
    airflow.home.mkdir()
    airflow("db", "migrate")
    airflow("pools", "set", "loyalty_warehouse", "1", "embedded DuckDB file: one writer")
    airflow("dags", "reserialize")
    with _scheduler(airflow):
        state, tis = _triggered_run(airflow, INTERVAL_END)
    assert state == "success", tis
    loads = [t for t in tis if t["task_id"].startswith("load_")]
    assert len(loads) == 2 and {t["pool"] for t in loads} == {"loyalty_warehouse"}
    assert not _overlaps(*loads), loads
    cmp = compare(wh, sb.truth(), until=INTERVAL_END, ledger=False)
    assert cmp.ok, str(cmp)
    assert query(wh, "select count(*) from loyalty.fct_points_ledger")[0][0] > 0
    # every customer's window ends at the DAG run's data interval end (`--until`): for a triggered run, its trigger
    # time (the sandbox's clock stands earlier, at INTERVAL_END, so the rows are the same)
    ends = query(wh, "select distinct source, last_success_end from loyalty_raw._customer_sync_state order by 1")
    assert ends == [("capillary", airflow.interval_end), ("carecloud", airflow.interval_end)], ends


def test_scheduler_runs_4_shards_2_credentials_at_once_one_task_per_credential(
        sandbox_factory, postgres, tmp_path: Path) -> None:
    """The same DAG under a real scheduler (`airflow standalone`, LocalExecutor), where pools are enforced: the 8 load
    tasks (2 sources x 4 shards) run in 4 one-slot pools, so the two shards of one credential never run at once while
    shards of different credentials do; rows equal the truth on the lake, and no credential got a 429."""
    from itertools import combinations

    sb = sandbox_factory(customers=40, now=INTERVAL_END.isoformat(), api_users=2, heavy_every=0,
                         rate_limit_rps=SANDBOX_RATE, rate_limit_burst=SANDBOX_BURST)
    airflow = _lake_airflow(tmp_path, _lake_project_env(sb, postgres, tmp_path, LOYALTY_SCHEDULE="none"))
    airflow("dags", "reserialize")
    with _scheduler(airflow):
        state, tis = _triggered_run(airflow, INTERVAL_END)
    assert state == "success", tis
    loads = [t for t in tis if t["task_id"].startswith("load_")]
    assert sorted((t["pool"], t["map_index"]) for t in loads) == sorted(
        (f"loyalty_{s}_{c}", i) for s in ("carecloud", "capillary") for c in ("u1", "u2") for i in (0, 1))
    same_pool = [(a, b) for a, b in combinations(loads, 2) if a["pool"] == b["pool"]]
    assert len(same_pool) == 4 and not any(_overlaps(a, b) for a, b in same_pool), loads
    assert any(_overlaps(a, b) for a, b in combinations(loads, 2) if a["pool"] != b["pool"]), \
        f"no two credentials' shards ran at once: {loads}"
    lake = _open_lake(airflow.env)
    cmp = compare(lake, sb.truth(), until=INTERVAL_END, ledger=False)
    assert cmp.ok, str(cmp)
    counts = sb.stats()["credentials"]
    assert all(c["429"] == 0 for c in counts.values()), counts
