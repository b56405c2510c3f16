"""Airflow DAG for the nightly load and its marts, on dlt's own Airflow integration (see docs/operations.md).

What dlt's integration gives here:
- secrets: with Airflow installed, dlt adds its `AirflowSecretsTomlProvider`, which reads the whole
  `.dlt/secrets.toml` from the Airflow Variable `dlt_secrets_toml`; `load_settings()` resolves the credentials from
  it like from the file, and registers them for redaction as always;
- the schedule: `airflow_get_execution_dates()` (dlt.helpers.airflow_helper) gives the run's data interval, whose end
  becomes the run's `--until`, so a cleared or caught-up DAG run loads exactly its own interval end.

What it deliberately does not use: `PipelineTasksGroup.add_run`. That helper runs `pipeline.run(source)` in a task
and, by default, wipes the pipeline's working folder afterwards; this project's run must commit each customer's
window to `_customer_sync_state` after its load (pipelines/runner.py), keep the pipeline working dir beside the
DuckDB file between runs, and write the `runs` row even when the load fails. So the task calls the project's runner,
the same code as `loyalty-etl run`.

Where it runs: the DuckDB file is a local file with a single writer. Every task of this DAG must run on the one
machine that keeps the warehouse directory, one at a time: use a LocalExecutor (or a worker queue served only by that
machine, `LOYALTY_AIRFLOW_QUEUE`) and the pool `loyalty_warehouse` with 1 slot (`airflow pools set loyalty_warehouse
1 "DuckDB single writer"`). `max_active_runs=1` keeps two DAG runs from queueing behind each other's lock.
Set `LOYALTY_PROJECT_DIR` to the checkout with `.dlt/config.toml` (default /opt/loyalty-warehouse).
"""

from __future__ import annotations

import os

import pendulum
from airflow import DAG
from airflow.exceptions import AirflowException

try:  # Airflow 3
    from airflow.sdk import task
except ImportError:  # Airflow 2.x
    from airflow.decorators import task

PROJECT_DIR = os.environ.get("LOYALTY_PROJECT_DIR", "/opt/loyalty-warehouse")
QUEUE = os.environ.get("LOYALTY_AIRFLOW_QUEUE", "default")


def _load(command: str) -> dict:
    """One `loyalty-etl run` for this DAG run's interval; fails the task on exit code 1 or 2 (the run has already
    written its `runs` row and called the alert hook; Airflow's own failure callbacks come on top)."""
    from dlt.helpers.airflow_helper import airflow_get_execution_dates

    os.chdir(PROJECT_DIR)   # .dlt/config.toml and a relative warehouse path are resolved from the working dir
    from pipelines.config import load_settings
    from pipelines.runner import SOURCES, run

    _, interval_end = airflow_get_execution_dates()
    report = run(load_settings(), list(SOURCES), until=interval_end, models=True, command=command)
    if report.exit_code != 0:
        raise AirflowException(f"loyalty-etl run {report.run_id} ended {report.status}: {report.error or ''}")
    return report.to_dict()


with DAG(
    dag_id="loyalty_etl_nightly",
    description="CareCloud + Capillary -> DuckDB (loyalty_raw) -> dbt marts (loyalty)",
    schedule="15 2 * * *",
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 0, "pool": "loyalty_warehouse", "queue": QUEUE},
    tags=["loyalty", "dlt"],
) as dag:

    @task(task_id="load_and_build_marts", execution_timeout=pendulum.duration(hours=6))
    def load_and_build_marts() -> dict:
        return _load("run")

    load_and_build_marts()
