"""A run killed inside its load, after dlt's copy jobs into the in-memory staging and before its merge, must not
block the runs after it (pipelines/runner.py `make_pipeline`).

Found by the lake's kill -9 test (tests/test_lake_kill.py) and then reproduced on the embedded file: dlt had marked
the copy jobs done, the merge job was pending, and the staging they had filled lived in the killed process's memory.
The next run "finished" the package, dlt's merge found no staging ("Table with name loyalty_raw_staging... does not
exist"), and the package stayed pending, so every later run failed the same way. Here a real SIGKILL hits the
merge exactly (the child process replaces dlt's SQL job with a kill), on the file and on a lake on a real
PostgreSQL; the next pipeline must start cleanly and the same rows then load exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers.lake import Lake

CHILD = textwrap.dedent("""
    import os, signal
    from dlt.destinations.job_client_impl import SqlLoadJob
    from pipelines.runner import make_pipeline
    from pipelines.warehouse import configured_warehouse

    wh = configured_warehouse()
    conn = wh.connect()
    pipeline = make_pipeline(None, conn, wh)

    def killed(self, *args, **kwargs):  # dlt's merge (a .sql follow-up job) starts: SIGKILL, like the OOM killer
        os.kill(os.getpid(), signal.SIGKILL)

    SqlLoadJob.run = killed
    pipeline.run([{"id": i, "v": i} for i in range(3)], table_name="t", write_disposition="merge", primary_key="id")
""")


@pytest.fixture(params=["file", "lake"])
def warehouse_env(request, tmp_path, monkeypatch) -> dict[str, str]:
    env = {"DESTINATION__DUCKDB__CREDENTIALS": str(tmp_path / "wh" / "loyalty_warehouse.duckdb"),
           "RUNTIME__LOG_LEVEL": "ERROR"}
    (tmp_path / "wh").mkdir()
    if request.param == "lake":
        env.update(Lake(request.getfixturevalue("postgres"), tmp_path / "lake-data").env())
    for key in [k for k in os.environ if k.startswith(("LOYALTY__", "DESTINATION__"))]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def test_a_run_killed_between_copy_and_merge_does_not_block_the_next(warehouse_env):
    from pipelines.runner import make_pipeline
    from pipelines.warehouse import configured_warehouse

    root = Path(__file__).resolve().parents[1]
    child = subprocess.run([sys.executable, "-c", CHILD], cwd=root, env={**os.environ, **warehouse_env},
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, f"the child was not killed at the merge:\n{child.stderr[-3000:]}"

    wh = configured_warehouse()
    conn = wh.connect()
    try:
        import dlt

        # the state the bug needs: a pending package whose copy jobs are done and whose merge is not
        probe = dlt.attach("loyalty_warehouse", pipelines_dir=str(wh.pipelines_dir))
        (load_id,) = probe.list_normalized_load_packages()
        jobs = probe.get_load_package_info(load_id).jobs
        assert [j for j in jobs["completed_jobs"] if j.job_file_info.table_name == "t"], jobs
        assert [j for j in jobs["new_jobs"] + jobs["started_jobs"] if j.job_file_info.file_format == "sql"], jobs

        pipeline = make_pipeline(None, conn, wh)       # finishing that package instead failed here, every time
        assert not pipeline.has_pending_data
        pipeline.run([{"id": i, "v": i} for i in range(3)], table_name="t", write_disposition="merge",
                     primary_key="id")
        assert conn.execute("select count(*), count(distinct id), sum(v) from loyalty_raw.t").fetchall() == [
            (3, 3, 3)]
    finally:
        conn.close()
