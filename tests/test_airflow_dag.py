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
import subprocess
import sys
from pathlib import Path

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
    pytest.skip(f"no Airflow at {AIRFLOW}: `make test-airflow` installs it", allow_module_level=True)


class Airflow:
    """Airflow's CLI with its own home (SQLite metadata DB) and the DAG folder of this checkout."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
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


def test_dags_test_loads_the_sandbox_into_the_file_warehouse(sandbox_factory, tmp_path: Path) -> None:
    """`airflow dags test` of the DAG as a single-machine user has it (embedded DuckDB file, one shard, one
    credential): both sources loaded up to the data interval end, marts built, rows equal to the truth."""
    sb = sandbox_factory(customers=30, now=INTERVAL_END.isoformat())
    wh = tmp_path / "wh" / "loyalty_warehouse.duckdb"
    airflow = Airflow(tmp_path / "airflow", _project_env(sb.env(wh)))
    airflow.home.mkdir()
    airflow("db", "migrate")
    airflow("pools", "set", "loyalty_warehouse", "1", "embedded DuckDB file: one writer")

    run_id, states = _dags_test(airflow, INTERVAL_END)
    assert states == {"load_carecloud_default": ["success"], "load_capillary_default": ["success"],
                      "marts": ["success"], "all_shards_landed": ["success"]}, states
    cmp = compare(wh, sb.truth(), until=INTERVAL_END, ledger=False)
    assert cmp.ok, str(cmp)
    assert query(wh, "select count(*) from loyalty.fct_points_ledger")[0][0] > 0
    # every customer's window ends at the DAG run's data interval end (`--until`)
    ends = query(wh, "select distinct source, last_success_end from loyalty_raw._customer_sync_state order by 1")
    assert ends == [("capillary", INTERVAL_END), ("carecloud", INTERVAL_END)], ends
