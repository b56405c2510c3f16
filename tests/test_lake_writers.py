"""Two writers on one DuckLake at once (catalog on a real PostgreSQL): what DuckLake does, pinned down.

DuckLake commits optimistically: every commit writes the next snapshot id; the loser of a race re-reads what the
winner changed (`ducklake_snapshot_changes`) and, when the two do not logically conflict, commits again on top of
it, up to `ducklake_max_retry_count` times (default 10), `ducklake_retry_wait_ms` apart (default 100 ms, times
`ducklake_retry_backoff` = 1.5 each retry). The granularity is the TABLE, not the row or the file (measured here,
DuckDB 1.5.5 / ducklake 1.5.5):

- appends (INSERT, MERGE that only inserts) to one table from any number of writers: all commit (retried);
- a transaction that deletes or updates rows of a table (UPDATE, DELETE, MERGE with a matched row, so also dlt's
  `merge` write disposition) conflicts with ANY other commit that inserted into or deleted from that table since it
  began, even on other rows: it fails at COMMIT with "Transaction conflict - attempting to ... table ...", and none
  of its changes, in any table, are applied; it may simply be run again;
- writes to different tables never conflict.

docs/reliability.md ("The lake: crashes, catalog outages, concurrent writers") says what this means for shards and
for two runs at once. The longer many-writer measurement is under the `chaos` marker.
"""

from __future__ import annotations

import os
import textwrap
import time

import duckdb
import pytest

from tests.chaos.fixtures import record_figures
from tests.helpers.lake import Lake, processes_at_once

CONFLICT = "Transaction conflict"

# one writer process: appends `commits` batches of `rows` rows, each its own transaction, into lake.main.t
WRITER = textwrap.dedent("""
    import json, os, sys, time
    import duckdb
    from tests.helpers.lake import load_lake_extensions
    k, commits, rows, go, lockstep = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
    con = duckdb.connect()
    load_lake_extensions(con)
    if os.environ.get("RETRIES"):
        con.execute(f"set ducklake_max_retry_count = {int(os.environ['RETRIES'])}")
    con.execute(os.environ["LAKE_ATTACH"])
    open(f"{go}.ready-{k}", "w").close()
    while not os.path.exists(go):
        time.sleep(0.01)
    failures = []
    t0, start = time.monotonic(), time.time()
    for i in range(commits):
        try:
            con.execute("begin")
            con.execute(f"insert into lake.t select {k} * 1000000 + {i} * 10000 + range, {k} from range({rows})")
            if lockstep:    # commit only once every writer has its round-i transaction open: a race each round
                open(f"{go}.round-{i}-{k}", "w").close()
                while not all(os.path.exists(f"{go}.round-{i}-{w}") for w in range(1, lockstep + 1)):
                    time.sleep(0.005)
            con.execute("commit")
        except duckdb.Error as exc:
            try:            # a failed COMMIT may already have ended the transaction
                con.execute("rollback")
            except duckdb.Error:
                pass
            failures.append(str(exc).splitlines()[0][:300] + " | " + " ".join(str(exc).split())[:300])
    print(json.dumps({"writer": k, "seconds": round(time.monotonic() - t0, 2), "start": start, "end": time.time(),
                      "failures": failures}))
""")


def _lake(postgres, tmp_path, name: str = "ducklake") -> Lake:
    """A fresh lake on the test's catalog database; `name` (its metadata schema) tells apart several lakes of one
    test: a second lake in the same schema would be the first one, whose catalog records another data path."""
    lake = Lake(postgres, tmp_path / "lake-data", name=name)
    con = lake.connect(read_only=False)
    con.execute("create table t (id bigint, writer int)")
    con.close()
    return lake


def _writers(lake: Lake, tmp_path, n: int, commits: int, rows: int, retries: int | None = None,
             lockstep: bool = False) -> list[dict]:
    """`n` processes appending to lake.t at once (released together); their JSON reports. `lockstep`: every
    writer holds its round's transaction open until all have theirs open, so each round's commits race for sure
    (free-running writers on a loaded machine may happen to commit one after another)."""
    go = tmp_path / f"go-{time.monotonic_ns()}"
    env = {**os.environ, "LAKE_ATTACH": lake.attach_sql("lake", read_only=False), "PYTHONPATH": os.getcwd()}
    if retries is not None:
        env["RETRIES"] = str(retries)
    argvs = [[str(k), str(commits), str(rows), str(go), str(n if lockstep else 0)] for k in range(1, n + 1)]
    return processes_at_once(WRITER, argvs, go, env)


def test_two_processes_appending_to_one_table_both_commit_everything(postgres, tmp_path):
    lake = _lake(postgres, tmp_path)
    commits, rows = 20, 100
    reports = _writers(lake, tmp_path, 2, commits, rows, lockstep=True)
    assert all(not r["failures"] for r in reports), reports
    con = lake.connect()
    assert con.execute("select writer, count(*), count(distinct id) from t group by 1 order by 1").fetchall() == [
        (1, commits * rows, commits * rows), (2, commits * rows, commits * rows)]
    # the two really wrote at once: their commit loops overlapped in time and their snapshots interleave (by
    # construction in lockstep; checked so that a change to the harness cannot quietly make this a serial test)
    overlap = min(r["end"] for r in reports) - max(r["start"] for r in reports)
    switches = _writer_switches(con, lake)
    assert overlap > 0 and switches >= 2, \
        f"the writers did not write at once (overlap {overlap:.2f} s, {switches} switches): {reports}"
    con.close()


def _writer_switches(con: duckdb.DuckDBPyConnection, lake: Lake) -> int:
    """How often consecutive snapshots that inserted into t came from different writers (time travel: each
    snapshot's rows per writer against the one before)."""
    snaps = [s for (s,) in con.execute(
        f"select snapshot_id from ducklake_snapshots('{lake.name}') order by 1").fetchall()]
    committers, before = [], {}
    for s in snaps:
        try:
            now = dict(con.execute(f"select writer, count(*) from t at (version => {s}) group by 1").fetchall())
        except duckdb.CatalogException:     # before t was created
            continue
        committers += [w for w in now if now[w] > before.get(w, 0)]
        before = now
    return sum(1 for x, y in zip(committers, committers[1:]) if x != y)


CONFLICTING = {
    "update": "update t set v = v + {d} where id < 10",
    "update other rows": "update t set v = v + {d} where id between 50 + {d} and 59 + {d}",
    "delete": "delete from t where id < 5 + {d}",
    "merge": """merge into t using (select range as id, {d} as v from range(5)) s on t.id = s.id
                when matched then update set v = s.v when not matched then insert values (s.id, s.v)""",
}


def test_concurrent_changes_to_one_table_conflict_and_nothing_is_half_applied(postgres, tmp_path):
    """For each kind of change (UPDATE, UPDATE of other rows, DELETE, MERGE): A changes t and writes an audit row
    into u; before A commits, B changes t and commits. A's commit fails with DuckLake's conflict error, and NOTHING
    of A is applied (neither t nor u); run again, A commits on top of B. (Three DuckDB instances = three DuckLake
    clients, as three processes would be; one instance each because every new instance pays ~1 s to load and
    verify the two extensions.)"""
    lake = Lake(postgres, tmp_path / "lake-data")
    a, b, reader = lake.connect(read_only=False), lake.connect(read_only=False), lake.connect()
    for kind, sql in CONFLICTING.items():
        t, u = f"t_{kind.replace(' ', '_')}", f"u_{kind.replace(' ', '_')}"
        a.execute(f"create table {t} as select range as id, 0 as v from range(1000)")
        a.execute(f"create table {u} (who varchar)")

        def change(con: duckdb.DuckDBPyConnection, who: str, d: int) -> None:
            con.execute(sql.format(d=d).replace("update t ", f"update {t} ").replace("from t ", f"from {t} ")
                        .replace("into t ", f"into {t} ").replace("t.id", f"{t}.id"))
            con.execute(f"insert into {u} values (?)", [who])

        a.execute("begin")
        change(a, "A", 1)
        b.execute("begin")
        change(b, "B", 2)
        b.execute("commit")
        after_b = reader.execute(f"select id, v from {t} order by id").fetchall()
        with pytest.raises(duckdb.TransactionException, match=CONFLICT) as err:
            a.execute("commit")
        assert "retry count" not in str(err.value), f"{kind}: a logical conflict, not retries running out"
        assert reader.execute(f"select id, v from {t} order by id").fetchall() == after_b, \
            f"{kind}: A's change was half-applied"
        assert reader.execute(f"select who from {u}").fetchall() == [("B",)], f"{kind}: A's other table was written"
        # the remedy is to run the transaction again: it then sees B's commit and applies on top of it
        a.execute("begin")
        change(a, "A", 1)
        a.execute("commit")
        assert reader.execute(f"select who from {u} order by who").fetchall() == [("A",), ("B",)], kind
    for con in (a, b, reader):
        con.close()


def test_what_does_not_conflict_commits_by_retrying(postgres, tmp_path):
    """Appends to the same table and changes to different tables both commit: DuckLake retried the loser on top of
    the winner. With no retries allowed the same append fails, which shows the first success was a retry."""
    lake = Lake(postgres, tmp_path / "lake-data")
    a, b = lake.connect(read_only=False), lake.connect(read_only=False)
    a.execute("create table t as select range as id, 0 as v from range(1000)")
    a.execute("create table t2 as select range as id, 0 as v from range(1000)")
    cases = [("append + append, same table", "insert into t select 5000 + range, 1 from range(100)",
              "insert into t select 6000 + range, 2 from range(100)"),
             ("merge of new keys + append, same table",
              "merge into t using (select 7000 + range as id, 3 as v from range(100)) s on t.id = s.id "
              "when matched then update set v = s.v when not matched then insert values (s.id, s.v)",
              "insert into t select 8000 + range, 4 from range(100)"),
             ("update t + update t2 (different tables)", "update t set v = 9 where id < 10",
              "update t2 set v = 9 where id < 10")]
    for what, sql_a, sql_b in cases:
        a.execute("begin")
        a.execute(sql_a)
        b.execute(sql_b)           # autocommit: commits first
        a.execute("commit")        # raises if DuckLake could not retry it
    con = lake.connect()
    assert con.execute("select count(*), sum(v) from t").fetchall() == [(1400, 1090)]
    assert con.execute("select sum(v) from t2").fetchall() == [(90,)]
    con.close()

    a.execute("set ducklake_max_retry_count = 0")
    a.execute("begin")
    a.execute("insert into t select 9000 + range, 5 from range(100)")
    b.execute("insert into t select 9500 + range, 6 from range(100)")
    with pytest.raises(duckdb.TransactionException, match="maximum retry count of 0"):
        a.execute("commit")
    con = lake.connect()
    assert con.execute("select count(*) from t where id >= 9000").fetchall() == [(100,)]
    for c in (a, b, con):
        c.close()


@pytest.mark.chaos
def test_many_writers_exhaust_the_default_retries(postgres, tmp_path):
    """6 processes x 30 appends into one table at once on this 2-core machine: with DuckLake's default 10 retries
    some commits may give up ("Exceeded the maximum retry count"); with 100 none does. Whatever failed is absent
    as a whole (no partial batch). Figures: LOYALTY_RELIABILITY_FIGURES."""
    figures = {}
    for retries in (None, 100):
        lake = _lake(postgres, tmp_path / f"r{retries}", name=f"lake_r{retries or 'default'}")
        n, commits, rows = 6, 30, 200
        reports = _writers(lake, tmp_path, n, commits, rows, retries=retries)
        failed = sum(len(r["failures"]) for r in reports)
        assert all("retry count" in f for r in reports for f in r["failures"]), reports
        con = lake.connect()
        total, distinct = con.execute("select count(*), count(distinct id) from t").fetchone()
        con.close()
        assert total == distinct == (n * commits - failed) * rows, (total, distinct, failed)
        figures[f"failed_commits_retries_{retries or 'default'}"] = failed
        figures[f"seconds_retries_{retries or 'default'}"] = max(r["seconds"] for r in reports)
        if retries:
            assert failed == 0, f"{failed} of {n * commits} commits failed with {retries} retries: {reports}"
    record_figures("lake_many_writers", writers=6, commits_each=30, **figures)
