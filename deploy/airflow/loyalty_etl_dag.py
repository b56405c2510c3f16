"""Airflow DAG for the nightly load: N shards per source in parallel, one pool per API credential, then the marts once.

Shape of one DAG run (docs/operations.md "Airflow" has the sizing and the operation):

    load_<source>_<credential>  [mapped: one task instance per shard K of N that uses this credential]
        -> marts                 (`loyalty-etl merge`: the shards' rows into loyalty_raw, then the dbt marts)
        -> all_shards_landed     (fails the DAG run when any shard failed, after marts ran on what landed)

Each task runs the project's own CLI from the project's own virtual environment with a BashOperator:
`cd $LOYALTY_PROJECT_DIR && $LOYALTY_VENV/bin/loyalty-etl run --source S --shard K/N --no-models --until <end>`.
Why a BashOperator and not `@task.external_python`: the task is exactly the command an operator types (and the cron
and systemd recipes run), its exit code is the task's result, and nothing of Airflow is imported into the project's
interpreter nor the other way round, so the project's pins (dlt, duckdb, dbt) and Airflow's constraints never meet.
external_python would serialize a Python callable into the other interpreter, which then needs the callable's code
importable there and gains nothing over the CLI, whose exit codes and run report already say what happened.

Credentials and pools (TEAM contract 4): a customer's credential is bucket(id, C) and its shard bucket(id, N); when C
divides N every customer of shard K uses credential (K-1) mod C, so a shard task uses exactly one credential and
sits in that credential's pool `loyalty_<source>_<credential>`. A pool with 1 slot (`airflow pools set
loyalty_carecloud_eu1 1 "..."`) means one process at a time per credential, so a credential's rate limit is only
ever spent by one client limiter. The DAG refuses to load when C does not divide N (the import error says so).
Pools must exist before the first run: Airflow queues a task whose pool is missing and never starts it.

The data interval end becomes `--until`, so a cleared DAG run loads exactly up to its own interval end again. (Airflow 3
gives a triggered run the data interval of its trigger time, whatever logical date it is given.)

A failed shard (after its retries) fails its own task only; the other shards still land. What the marts do then
is LOYALTY_MARTS_RULE:
- "landed" (default): the marts run once every shard task has finished, successful or not (trigger rule
  all_done), and build on what landed. The failed shard's customers keep their last loaded rows and their per-customer
  state, so the next run (or clearing the failed task, which also clears the marts downstream) fetches exactly what
  they missed. `all_shards_landed` then fails, so the DAG run is failed and alerts like any failure.
- "wait": the marts run only when every shard succeeded (all_success); a failed shard leaves the marts as they were
  until the shard is cleared and succeeds.

Configuration: Airflow Variables first, then the scheduler's and workers' environment, then the defaults below.
They are read when the DAG file is parsed (N and the credentials shape the DAG). The DAG processor sees Variables
stored in the metadata DB and those set as AIRFLOW_VAR_LOYALTY_* environment variables; a tool that parses the file
in its own process (`airflow dags test`, a bare DagBag) sees, in Airflow 3.0, only the AIRFLOW_VAR_* ones, so keep
the shape settings (shards, credentials, warehouse) in the environment or in AIRFLOW_VAR_* to get the same DAG
everywhere.

| Variable / environment     | default                         |                                                     |
| loyalty_project_dir / LOYALTY_PROJECT_DIR | /opt/loyalty-warehouse | checkout with .dlt/config.toml (the tasks' working dir) |
| loyalty_venv / LOYALTY_VENV | <project dir>/.venv            | the project's virtual environment (bin/loyalty-etl) |
| loyalty_shards / LOYALTY_SHARDS | 1                           | N; 1 = today's unsharded run (no --shard argument)  |
| loyalty_sources / LOYALTY_SOURCES | carecloud,capillary       | the sources to load                                 |
| loyalty_credentials / LOYALTY_CREDENTIALS | {} (each source: ["default"]) | JSON {"carecloud": ["eu1", "eu2"], ...}: the credential names of each source in the order of its [[sources.X.credentials]] list |
| loyalty_shard_retries / LOYALTY_SHARD_RETRIES | 2             | retries of a shard task                             |
| loyalty_retry_delay_seconds / LOYALTY_RETRY_DELAY_SECONDS | 600 | wait before a retry                             |
| loyalty_marts_rule / LOYALTY_MARTS_RULE | landed              | landed or wait (above)                              |
| loyalty_merge / LOYALTY_MERGE | auto                          | auto: the marts task runs `loyalty-etl merge` (merge, then marts) when the project has that command, else `loyalty-etl models`; yes; no (models only) |
| loyalty_airflow_queue / LOYALTY_AIRFLOW_QUEUE | default       | worker queue of every task                          |
| loyalty_schedule / LOYALTY_SCHEDULE | 15 2 * * *              | cron expression (UTC), or "none" for triggered runs only |
| loyalty_warehouse / LOYALTY_WAREHOUSE | the project's `[loyalty] warehouse` (LOYALTY__WAREHOUSE or .dlt/config.toml), else duckdb | duckdb: the embedded file has one writer on one machine, so every load task sits in the one pool `loyalty_warehouse` (1 slot) and runs one after another, as before shards; ducklake: the pools per credential |

Secrets stay where the project reads them: the project dir's .dlt/secrets.toml or the workers' environment (the
BashOperator passes the worker's environment on: append_env).
"""

from __future__ import annotations

import json
import os
import shlex
import tomllib

import pendulum
from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG
from airflow.utils.trigger_rule import TriggerRule

DAG_ID = "loyalty_etl_nightly"


def _setting(name: str, default: str) -> str:
    """Airflow Variable `loyalty_<name>`, else environment `LOYALTY_<NAME>`, else `default`."""
    try:
        from airflow.sdk import Variable

        value = Variable.get(f"loyalty_{name}", default=None)
    except Exception:   # parsed outside the DAG processor (Airflow 3.0: no API to ask): AIRFLOW_VAR_* were tried
        value = None
    if value is None:
        value = os.environ.get(f"LOYALTY_{name.upper()}")
    return default if value is None or str(value).strip() == "" else str(value)


def pool_name(source: str, credential: str) -> str:
    return f"loyalty_{source}_{credential}"


FILE_POOL = "loyalty_warehouse"


def plan(shards: int, credentials: dict[str, list[str]]) -> dict[tuple[str, str], list[int]]:
    """(source, credential name) -> the 1-based shards that use that credential: shard K uses credential (K-1) mod C
    (contract 4; exact only when C divides N, which is checked here)."""
    if shards < 1:
        raise ValueError(f"LOYALTY_SHARDS must be >= 1, got {shards}")
    out: dict[tuple[str, str], list[int]] = {}
    for source, names in credentials.items():
        if not names or len(set(names)) != len(names):
            raise ValueError(f"{source}: credential names must be a non-empty list of distinct names, got {names}")
        if shards % len(names):
            raise ValueError(f"{source} has {len(names)} credentials, which does not divide LOYALTY_SHARDS={shards}: "
                             f"a shard would use several credentials and could not sit in one credential's pool. "
                             f"Use a multiple of {len(names)} shards.")
        for index, name in enumerate(names):
            out[(source, name)] = [k for k in range(1, shards + 1) if (k - 1) % len(names) == index]
    return out


def _project_warehouse_kind(project_dir: str) -> str:
    """The project's own `[loyalty] warehouse` (environment over .dlt/config.toml, as the project reads it)."""
    if os.environ.get("LOYALTY__WAREHOUSE"):
        return os.environ["LOYALTY__WAREHOUSE"]
    try:
        with open(os.path.join(project_dir, ".dlt", "config.toml"), "rb") as f:
            return str(tomllib.load(f).get("loyalty", {}).get("warehouse", "duckdb"))
    except (OSError, tomllib.TOMLDecodeError):   # the checkout is on the workers only: the safe, serial default
        return "duckdb"


PROJECT_DIR = _setting("project_dir", "/opt/loyalty-warehouse")
WAREHOUSE = _setting("warehouse", _project_warehouse_kind(PROJECT_DIR))
VENV = _setting("venv", os.path.join(PROJECT_DIR, ".venv"))
SHARDS = int(_setting("shards", "1"))
SOURCES = [s.strip() for s in _setting("sources", "carecloud,capillary").split(",") if s.strip()]
_named = json.loads(_setting("credentials", "{}"))
CREDENTIALS = {s: list(_named.get(s) or ["default"]) for s in SOURCES}
RETRIES = int(_setting("shard_retries", "2"))
RETRY_DELAY = pendulum.duration(seconds=float(_setting("retry_delay_seconds", "600")))
MARTS_RULE = _setting("marts_rule", "landed")
MERGE = _setting("merge", "auto")
QUEUE = _setting("airflow_queue", "default")
SCHEDULE = _setting("schedule", "15 2 * * *")
if WAREHOUSE not in ("duckdb", "ducklake"):
    raise ValueError(f"LOYALTY_WAREHOUSE must be duckdb or ducklake, got {WAREHOUSE!r}")
if MARTS_RULE not in ("landed", "wait"):
    raise ValueError(f"LOYALTY_MARTS_RULE must be 'landed' or 'wait', got {MARTS_RULE!r}")
if MERGE not in ("auto", "yes", "no"):
    raise ValueError(f"LOYALTY_MERGE must be auto, yes or no, got {MERGE!r}")
PLAN = plan(SHARDS, CREDENTIALS)

ETL = shlex.quote(os.path.join(VENV, "bin", "loyalty-etl"))
CD = f"cd {shlex.quote(PROJECT_DIR)}"
# data_interval_end is the run's end instant (UTC); the CLI reads ISO 8601
UNTIL = "{{ data_interval_end.in_timezone('UTC').strftime('%Y-%m-%dT%H:%M:%SZ') }}"


def shard_command(source: str, shard: int) -> str:
    sharded = f" --shard {shard}/{SHARDS}" if SHARDS > 1 else ""
    return f"{CD} && exec {ETL} run --source {source}{sharded} --no-models --until {UNTIL}"


# `loyalty-etl merge` moves every shard's committed rows into loyalty_raw in one serialized step and then builds the
# marts; with nothing to merge (N = 1) it only builds them. A checkout from before shards has only `models`.
if MERGE == "yes":
    MARTS_COMMAND = f"{CD} && exec {ETL} merge"
elif MERGE == "auto":
    MARTS_COMMAND = f"{CD} && if {ETL} merge --help >/dev/null 2>&1; then exec {ETL} merge; else exec {ETL} models; fi"
else:
    MARTS_COMMAND = f"{CD} && exec {ETL} models"


with DAG(
    dag_id=DAG_ID,
    description="CareCloud + Capillary -> N shards per source, one pool per credential -> warehouse -> dbt marts",
    schedule=None if SCHEDULE.lower() == "none" else SCHEDULE,
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,   # nights one after another: a night's marts before the next night's shards
    default_args={"queue": QUEUE, "append_env": True},
    tags=["loyalty", "dlt"],
    doc_md=__doc__,
) as dag:
    loads = []
    for (source, credential), shards in PLAN.items():
        loads.append(
            BashOperator.partial(
                task_id=f"load_{source}_{credential}",
                pool=pool_name(source, credential) if WAREHOUSE == "ducklake" else FILE_POOL,
                retries=RETRIES,
                retry_delay=RETRY_DELAY,
                execution_timeout=pendulum.duration(hours=6),
                map_index_template="{{ task.bash_command.split('--shard ')[-1].split(' ')[0] "
                                   "if '--shard ' in task.bash_command else 'all' }}",
            ).expand(bash_command=[shard_command(source, k) for k in shards])
        )

    marts = BashOperator(
        task_id="marts",
        bash_command=MARTS_COMMAND,
        trigger_rule=TriggerRule.ALL_DONE if MARTS_RULE == "landed" else TriggerRule.ALL_SUCCESS,
        retries=1,
        retry_delay=pendulum.duration(minutes=5),
        execution_timeout=pendulum.duration(hours=2),
    )
    # a leaf that fails (upstream_failed) when any shard failed, so the DAG run's state says so even though the
    # marts ran on what landed
    all_shards_landed = EmptyOperator(task_id="all_shards_landed", trigger_rule=TriggerRule.ALL_SUCCESS)

    loads >> marts
    [*loads, marts] >> all_shards_landed
