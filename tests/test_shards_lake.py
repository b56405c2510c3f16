"""Shards at the same time on a DuckLake with a real PostgreSQL catalog (tests/helpers/postgres.py): N shard
processes of the real CLI run at once against the sandbox, then `loyalty-etl merge` once; the lake equals the
sandbox's truth row for row (nothing lost, nothing doubled), every customer's window is where the run put it, and
the shards' datasets were emptied by the merge. Concurrent shards never MERGE into the same table (their own
datasets); their bookkeeping commits that lose a race are redone (pipelines/keyed.py)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path

from pipelines.sharding import bucket
from tests.chaos.compare import compare
from tests.helpers.cli import CLI, REPO_ROOT, query, run_cli
from tests.test_lake_pipeline import lake_env, open_lake

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 11, 20, tzinfo=UTC)
UNTIL = NOW.strftime("%Y-%m-%dT%H:%M:%SZ")
N = 3


def test_shards_at_once_on_the_lake_match_the_truth(sandbox_factory, sandbox_env, postgres, tmp_path: Path) -> None:
    sb = sandbox_factory(customers=12, now=NOW)
    env = lake_env(sandbox_env(sb, tmp_path / "wh" / "loyalty_warehouse.duckdb"), postgres, tmp_path,
                   LOYALTY__CHUNK_CUSTOMERS=2)  # several rounds, so the shards' commits interleave
    lake = open_lake(env)
    procs = [subprocess.Popen([*CLI, "run", "--shard", f"{k}/{N}", "--until", UNTIL], cwd=REPO_ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k in range(1, N + 1)]
    outs = [p.communicate(timeout=600) for p in procs]
    for k, (p, (out, err)) in enumerate(zip(procs, outs), 1):
        assert p.returncode == 0, f"shard {k}/{N}: exit {p.returncode}\n{out}\n{err[-4000:]}"
    runs = query(lake, "SELECT started_at, ended_at, extra FROM loyalty_raw.runs WHERE command = 'run'")
    assert sorted(json.loads(e)["shard"] for *_, e in runs) == [f"{k}/{N}" for k in range(1, N + 1)]
    assert max(s for s, _, _ in runs) < min(e for _, e, _ in runs), "the shards did not run at the same time"

    merged = run_cli(env, "merge", "--no-models")
    assert merged.returncode == 0, f"{merged.stdout}\n{merged.stderr[-4000:]}"
    cmp = compare(lake, sb.truth(), until=NOW, ledger=False)
    assert cmp.ok, str(cmp)
    for source in ("carecloud", "capillary"):
        ids = set(sb.customer_ids(source))
        state = query(lake, "SELECT customer_id, last_success_end FROM loyalty_raw._customer_sync_state "
                            "WHERE source = ?", [source])
        assert {c for c, _ in state} == ids and len(state) == len(ids) and {e for _, e in state} == {NOW}
        assert {bucket(c, N) for c in ids} == set(range(N))
    left = query(lake, "SELECT table_schema, table_name FROM information_schema.tables WHERE "
                       "table_catalog = current_database() AND starts_with(table_schema, 'loyalty_shard_') "
                       "AND NOT starts_with(table_name, '_dlt')")
    assert left
    for schema, table in left:
        assert query(lake, f'SELECT count(*) FROM "{schema}"."{table}"')[0][0] == 0, f"{schema}.{table} not merged"
    # a second merge finds nothing to do and changes nothing
    again = run_cli(env, "merge", "--no-models")
    assert again.returncode == 0 and "rows written" not in again.stdout, again.stdout
    assert compare(lake, sb.truth(), until=NOW, ledger=False).ok
