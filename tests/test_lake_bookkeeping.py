"""The run bookkeeping (`state.commit`: customer state, issues, the runs row) from two processes at once into one
DuckLake on a real PostgreSQL, as shards of one night do: every commit lands, nothing is lost or doubled.

Two writers MERGE-updating rows of one table conflict on DuckLake (the loser's COMMIT fails; tests/test_keyed.py,
tests/test_lake_writers.py); `keyed.transaction` redoes the loser's transaction at the new snapshot."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

from tests.helpers.cli import REPO_ROOT
from tests.helpers.lake import processes_at_once

WRITER = textwrap.dedent("""
    import datetime as dt, json, os, sys, time
    from dlt.destinations.impl.ducklake.configuration import DuckLakeCredentials
    from pipelines import lake, state
    from pipelines.report import RunReport
    k, commits, go = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    creds = DuckLakeCredentials("bk", catalog=os.environ["CATALOG"], storage=os.environ["STORAGE"])
    conn = lake.connect(lake.LakeConfig(creds, "bk", "bk", os.environ["STORAGE"]))
    open(f"{go}.ready-{k}", "w").close()
    while not os.path.exists(go):
        time.sleep(0.01)
    state.ensure_tables(conn)  # both at once, on a lake without the tables: DuckLake's conflict of two creates
    ids = [f"w{k}-{i}" for i in range(20)]
    report = RunReport(command="run")
    end = dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc)
    t0, start = time.monotonic(), time.time()
    for i in range(commits):
        # half succeed, half fail (their failure count grows by one per commit), one issue each, the runs row
        state.commit(conn, run_id=report.run_id, source="carecloud", window_end=end, succeeded=ids[:10],
                     failed={c: "boom" for c in ids[10:]}, issues=[state.Issue("carecloud", ids[0], "x", str(i))],
                     report=report)
    print(json.dumps({"start": start, "end": time.time(), "seconds": round(time.monotonic() - t0, 2),
                      "run_id": report.run_id}))
""")


def test_two_writers_commit_bookkeeping_at_once(postgres, tmp_path: Path) -> None:
    from dlt.destinations.impl.ducklake.configuration import DuckLakeCredentials

    from pipelines import lake

    storage = str(tmp_path / "files")
    creds = DuckLakeCredentials("bk", catalog=postgres.url, storage=storage)
    conn = lake.connect(lake.LakeConfig(creds, "bk", "bk", storage))
    commits, go = 8, tmp_path / "go"
    env = {**os.environ, "CATALOG": postgres.url, "STORAGE": storage, "PYTHONPATH": str(REPO_ROOT)}
    reports = processes_at_once(WRITER, [[str(k), str(commits), str(go)] for k in (1, 2)], go, env, cwd=REPO_ROOT)
    assert min(r["end"] for r in reports) > max(r["start"] for r in reports), f"the writers did not overlap: {reports}"

    rows = conn.execute("SELECT customer_id, consecutive_failures, last_success_end IS NOT NULL "
                        "FROM loyalty_raw._customer_sync_state ORDER BY customer_id").fetchall()
    assert len(rows) == 40 and len({r[0] for r in rows}) == 40  # one row per customer: the MERGE key held
    for cid, failures, succeeded in rows:
        assert (failures, succeeded) == ((0, True) if int(cid.split("-")[1]) < 10 else (commits, False)), cid
    assert conn.execute("SELECT count(*) FROM loyalty_raw.sync_issues").fetchone()[0] == 2 * commits
    assert sorted(r[0] for r in conn.execute("SELECT run_id FROM loyalty_raw.runs").fetchall()) == \
        sorted(r["run_id"] for r in reports)
