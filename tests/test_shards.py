"""Sharded runs (`run --shard K/N` then `merge`) against the real CLI, the sandbox and real DuckDB files: the
warehouse they build is the one an unsharded run builds (every raw table and every mart, EXCEPT ALL both ways),
night after night, and both equal the sandbox's truth."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import duckdb
import pytest

from pipelines.shards import Shard, ShardSpecError
from pipelines.sharding import bucket
from tests.chaos.compare import compare
from tests.helpers.cli import cli_env, query, run_cli

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 11, 20, tzinfo=UTC)
N = 3
# columns that name the run, the load or the dbt build that wrote a row: they differ between any two runs
RUN_COLUMNS = {"_loaded_run_id", "loaded_run_id", "_dlt_load_id", "_dlt_id", "_dbt_invocation_id", "_dbt_updated_at"}
# bookkeeping, compared on their own terms below (run ids, times, per-shard keys)
BOOKKEEPING = {"runs", "sync_issues", "_customer_sync_state", "_discovery_state", "_shard_merges",
               "_capillary_event_mark", "capillary_events", "_capillary_added_customers", "carecloud_customers"}


def _until(at: dt.datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def _cli(env: dict[str, str], *args: str, expect: int = 0) -> str:
    proc = run_cli(env, *args)
    assert proc.returncode == expect, f"{args}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc.stdout


def _night_sharded(env: dict[str, str], until: dt.datetime, *merge_args: str) -> None:
    for k in range(1, N + 1):
        _cli(env, "run", "--shard", f"{k}/{N}", "--until", _until(until))
    _cli(env, "merge", *merge_args)


def _compared_tables(conn: duckdb.DuckDBPyConnection) -> dict[str, list[str]]:
    """schema.table -> its columns (sorted, run-specific ones left out): every raw table and every mart."""
    rows = conn.execute(
        "SELECT c.table_schema, c.table_name, c.column_name, c.data_type FROM information_schema.columns c "
        "JOIN information_schema.tables t USING (table_catalog, table_schema, table_name) "
        "WHERE t.table_type = 'BASE TABLE' AND c.table_schema IN ('loyalty_raw', 'loyalty') "
        "AND NOT starts_with(c.table_name, '_dlt')").fetchall()
    out: dict[str, list[str]] = {}
    for schema, table, column, data_type in rows:
        if table in BOOKKEEPING:
            continue
        cols = out.setdefault(f"{schema}.{table}", [])
        if column not in RUN_COLUMNS:
            # a sum of doubles depends on the order DuckDB's threads add the rows in (the last bits differ between
            # two builds of the same rows): compared to a millionth of a point
            cols.append(f'round("{column}", 6)' if data_type in ("DOUBLE", "FLOAT") else f'"{column}"')
    return {t: sorted(c) for t, c in out.items()}


def _assert_identical(a: Path, b: Path) -> dict[str, int]:
    """Same tables, same columns, same rows (multisets, both ways). Returns the row counts."""
    conn = duckdb.connect()
    conn.execute(f"ATTACH '{a}' AS a (READ_ONLY)")
    conn.execute(f"ATTACH '{b}' AS b (READ_ONLY)")
    conn.execute("USE a")
    ta = _compared_tables(conn)
    conn.execute("USE b")
    tb = _compared_tables(conn)
    assert ta == tb, "sharded and unsharded warehouses differ in tables or columns"
    counts, diffs = {}, []
    for table, cols in sorted(ta.items(), key=lambda kv: (not kv[0].startswith("loyalty_raw."), kv[0])):
        sel = ", ".join(cols)
        for x, y in (("a", "b"), ("b", "a")):
            diff = conn.execute(f"SELECT count(*) FROM (SELECT {sel} FROM {x}.{table} EXCEPT ALL "
                                f"SELECT {sel} FROM {y}.{table})").fetchone()[0]
            if diff:
                diffs.append(f"{table}: {diff} rows in {x} not in {y}")
        counts[table] = conn.execute(f"SELECT count(*) FROM a.{table}").fetchone()[0]
    assert not diffs, "\n".join(diffs)
    for x, y in (("a", "b"), ("b", "a")):  # every customer's window where the unsharded run has it
        diff = conn.execute(
            f"SELECT count(*) FROM (SELECT source, customer_id, last_success_end, consecutive_failures, last_error "
            f"FROM {x}.loyalty_raw._customer_sync_state EXCEPT ALL SELECT source, customer_id, last_success_end, "
            f"consecutive_failures, last_error FROM {y}.loyalty_raw._customer_sync_state)").fetchone()[0]
        assert diff == 0, f"_customer_sync_state: {diff} rows in {x} not in {y}"
    conn.close()
    return counts


def _assert_shard_datasets_empty(wh: Path) -> None:
    tables = query(wh, "SELECT table_schema, table_name FROM information_schema.tables WHERE "
                       "starts_with(table_schema, 'loyalty_shard_') AND NOT starts_with(table_name, '_dlt')")
    assert tables, "the shards loaded into their own datasets"
    for schema, table in tables:
        assert query(wh, f'SELECT count(*) FROM "{schema}"."{table}"')[0][0] == 0, f"{schema}.{table} not merged"


def test_shards_one_after_another_equal_unsharded_and_truth(sandbox_factory, sandbox_env, tmp_path: Path) -> None:
    """Two nights: 3 shards one after another then `merge` vs one unsharded `run` into another file (the marts
    built on the second night: one dbt build per side keeps the test short). Raw tables, marts and every
    customer's window identical; both equal the truth; each shard loaded exactly its customers; the shards'
    datasets are empty after the merge."""
    # a short data span with many late records, so the second night brings new rows and late ones
    sb = sandbox_factory(customers=45, now=NOW, data_start="2026-09-01", data_end="2027-01-01",
                         records_per_customer=30, late_share=0.5)
    sharded = tmp_path / "sharded" / "loyalty_warehouse.duckdb"
    single = tmp_path / "single" / "loyalty_warehouse.duckdb"
    env_s = cli_env(sandbox_env(sb, sharded), LOYALTY__CHUNK_CUSTOMERS=6)  # several rounds per shard
    env_u = cli_env(sandbox_env(sb, single), LOYALTY__CHUNK_CUSTOMERS=6)

    first: dict[str, int] = {}
    for night, until in enumerate((NOW, NOW + dt.timedelta(days=2))):
        sb.set_now(until)
        no_models = ("--no-models",) if night == 0 else ()
        _night_sharded(env_s, until, *no_models)
        _cli(env_u, "run", "--until", _until(until), *no_models)
        counts = _assert_identical(sharded, single)
        _assert_shard_datasets_empty(sharded)
        for wh in (sharded, single):
            cmp = compare(wh, sb.truth(), until=until, ledger=False)
            assert cmp.ok, f"{wh}: {cmp}"
        if night == 0:
            first = counts
    assert counts["loyalty.fct_points_ledger"] > 0 and counts["loyalty.dim_customers"] > 0
    assert counts["loyalty_raw.carecloud_point_history"] > first["loyalty_raw.carecloud_point_history"]

    # each shard run loaded exactly its customers (runs rows), and the merges are recorded
    runs = query(sharded, "SELECT command, extra, customers_done, customers_total FROM loyalty_raw.runs "
                          "ORDER BY started_at")
    assert [r[0] for r in runs] == (["run"] * N + ["merge"]) * 2
    for source in ("carecloud", "capillary"):
        ids = sb.customer_ids(source)
        per_shard = [sum(1 for c in ids if bucket(c, N) == k) for k in range(N)]
        assert all(per_shard) and sum(per_shard) == len(ids)
    shard_runs = [r for r in runs if r[0] == "run"]
    assert [json.loads(r[1])["shard"] for r in shard_runs] == [f"{k}/{N}" for k in range(1, N + 1)] * 2
    expected = [sum(1 for s in ("carecloud", "capillary") for c in sb.customer_ids(s) if bucket(c, N) == k - 1)
                for k in range(1, N + 1)]
    assert [r[2] for r in shard_runs] == expected * 2
    merged = query(sharded, "SELECT count(DISTINCT dataset), count(*) FROM loyalty_raw._shard_merges")[0]
    assert merged[0] == N and merged[1] >= 2 * N


def test_changed_selection_shards_keep_their_own_discovery_window(sandbox_factory, sandbox_env,
                                                                  tmp_path: Path) -> None:
    """CareCloud `selection = "changed"`: every shard reads the tenant-wide listings and keeps its own customers
    and its own discovery window (the first shard's commit must not empty the window of the next one). Two nights,
    2 shards: sharded == unsharded each night, the first night == truth, the second night loads the same
    customers as the unsharded run, fewer than all."""
    n = 2
    sb = sandbox_factory(customers=30, now=NOW, data_start="2026-09-01", data_end="2027-01-01",
                         records_per_customer=20)
    sharded = tmp_path / "sharded" / "loyalty_warehouse.duckdb"
    single = tmp_path / "single" / "loyalty_warehouse.duckdb"
    # the second run three days later with a 1 h lookback: a shard reading the window another shard committed
    # (its end minus 1 h) would miss the changes of those three days
    extra = {"SOURCES__CARECLOUD__SELECTION": "changed", "SOURCES__CARECLOUD__SWEEP_DAYS": "7",
             "SOURCES__CARECLOUD__LOOKBACK": "1h"}
    env_s = cli_env(sandbox_env(sb, sharded), **extra)
    env_u = cli_env(sandbox_env(sb, single), **extra)
    for night, until in enumerate((NOW, NOW + dt.timedelta(days=3))):
        sb.set_now(until)
        for k in range(1, n + 1):
            _cli(env_s, "run", "--source", "carecloud", "--shard", f"{k}/{n}", "--until", _until(until))
        _cli(env_s, "merge", "--no-models")
        _cli(env_u, "run", "--source", "carecloud", "--no-models", "--until", _until(until))
        _assert_identical(sharded, single)
        if night == 0:  # everyone is new on the first night; later nights load what discovery and the sweep chose
            cmp = compare(sharded, sb.truth(), until=until, sources=("carecloud",), ledger=False)
            assert cmp.ok, str(cmp)
    keys = query(sharded, "SELECT source, last_end FROM loyalty_raw._discovery_state ORDER BY source")
    assert [k for k, _ in keys] == [f"carecloud shard {k}/{n}" for k in range(1, n + 1)]
    assert {e for _, e in keys} == set(query(single, "SELECT last_end FROM loyalty_raw._discovery_state")[0])
    done_s = [r[0] for r in query(sharded, "SELECT customers_done FROM loyalty_raw.runs WHERE command = 'run' "
                                           "ORDER BY started_at")]
    done_u = [r[0] for r in query(single, "SELECT customers_done FROM loyalty_raw.runs ORDER BY started_at")]
    assert [sum(done_s[:n]), sum(done_s[n:])] == done_u
    assert done_u[0] == 30 > done_u[1] > 0


def test_shard_option_errors_and_help(tmp_path: Path) -> None:
    assert Shard.parse("2/4", ["carecloud"]).holds("x") == (bucket("x", 4) == 1)
    for bad in ("0/4", "5/4", "1/0", "a/b", "3", ""):
        with pytest.raises(ShardSpecError):
            Shard.parse(bad)
    names = Shard.parse("2/4", ["carecloud", "capillary"])
    assert names == Shard.parse(" 2 / 4 ", ["capillary", "carecloud"])
    assert names.dataset == "loyalty_shard_capillary_carecloud_2of4"
    assert names.lock_scope == "run:capillary+carecloud:shard 2/4"
    proc = run_cli(cli_env({}), "run", "--shard", "5/4")
    assert proc.returncode == 1 and "K must be 1..N" in proc.stderr
    assert "--shard K/N" in run_cli(cli_env({}), "run", "--help").stdout
    assert "loyalty-etl merge" in run_cli(cli_env({}), "merge", "--help").stdout
