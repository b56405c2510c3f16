"""A reader in another process (an analyst: plain DuckDB, the lake attached READ_ONLY) queries the lake in a loop
while a run loads it (tests/chaos/lake_rig.py): it never fails, counts never go backwards, it never sees part of a
customer's rows in a table nor a customer's bookkeeping ahead of its rows, and it does see the committed rounds of a
run that is still going; afterwards the lake equals the sandbox's truth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from tests.chaos.fixtures import Rig, record_figures, rig_factory, wait_for  # noqa: F401  (fixture)
from tests.chaos.lake_rig import lake_rig  # noqa: F401  (fixture)
from tests.chaos.harness import ROOT


class LakeReader:
    """tests/chaos/lake_reader.py in another process, reading the lake in a loop until `stop()`."""

    def __init__(self, rig: Rig, name: str = "reader") -> None:
        self.out = rig.dir / f"{name}-{time.monotonic_ns()}.jsonl"
        self.stopfile = self.out.with_suffix(".stop")
        env = {**os.environ, "LOYALTY_TEST_LAKE_ATTACH": rig.warehouse.attach_sql("lake", read_only=True)}
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.chaos.lake_reader", str(self.out),
                                      str(self.stopfile)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        wait_for(lambda: len(self.records()) >= 1 or self.proc.poll() is not None, 300, "the reader to start")
        assert self.proc.poll() is None, f"the reader died: {self.proc.stderr.read()[-3000:]}"

    def records(self) -> list[dict]:
        if not self.out.exists():
            return []
        lines = self.out.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip() and "ready" not in line]

    def wait_for(self, n: int, timeout: float = 300) -> None:
        start = len(self.records())
        wait_for(lambda: len(self.records()) >= start + n or self.proc.poll() is not None, timeout,
                  f"{n} more reader snapshots")

    def stop(self) -> list[dict]:
        self.stopfile.touch()
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)
        assert self.proc.returncode == 0, f"the reader exited {self.proc.returncode}: {self.proc.stderr.read()[-3000:]}"
        return self.records()


def _reader_findings(snapshots: list[dict], final: dict) -> list[str]:
    """What a reader must never see, against the final complete state `final` (a snapshot equal to the truth):
    a failure, a count going backwards, part of a customer's rows in a table, a customer's bookkeeping ahead of its
    rows."""
    table_of = {"carecloud": "carecloud_point_history", "capillary": "capillary_customer_transfers"}
    found: list[str] = []
    last: dict[str, int] = {}
    for i, snap in enumerate(snapshots):
        if not snap["ok"]:
            found.append(f"#{i}: read failed: {snap['error']}")
            continue
        for table, n in snap["counts"].items():
            if n < last.get(table, 0):
                found.append(f"#{i} snapshot {snap['snapshot_id']}: {table} went back from {last[table]} to {n}")
            last[table] = max(n, last.get(table, 0))
        for table, per in snap["per_customer"].items():
            for cid, n in per.items():
                want = final["per_customer"][table].get(cid)
                if n != want:
                    found.append(f"#{i} snapshot {snap['snapshot_id']}: {table} has {n} rows of {cid}, "
                                 f"complete is {want} (part of a customer)")
        for source, cid in snap["done"]:
            table = table_of[source]
            have = snap["per_customer"].get(table, {}).get(cid, 0)
            want = final["per_customer"][table].get(cid, 0)
            if have != want:
                found.append(f"#{i} snapshot {snap['snapshot_id']}: {source} {cid} marked done with {have} of "
                             f"{want} rows (bookkeeping ahead of data)")
    return found


def test_reader_during_a_lake_load_never_fails_and_sees_only_committed_rounds(lake_rig):
    """The run loads 2 rounds; it is held after its first round's load (before that round's bookkeeping) while the
    reader reads, then goes on. The reader must see that round's rows (a committed mid-run state) and nothing
    partial, ever; afterwards the lake equals the truth."""
    rig = lake_rig("reader", customers=12, chunk_customers=6)
    run, release = rig.spawn_held("state")
    reader = None
    try:
        reader = LakeReader(rig)
        reader.wait_for(3)
        during_hold = reader.records()
    finally:
        release.touch()
    try:
        done = run.wait(600)
        assert done.returncode == 0, done.describe()
        reader.wait_for(2)
    finally:
        snapshots = reader.stop() if reader else []
    cmp = rig.compare()
    assert cmp.ok, f"after the run:\n{cmp}"
    final = snapshots[-1]
    assert final["ok"] and final["counts"]["carecloud_point_history"] > 0, final
    findings = _reader_findings(snapshots, final)
    assert not findings, f"{len(findings)} findings in {len(snapshots)} snapshots:\n" + "\n".join(findings[:20])
    mid = [s for s in during_hold if s["ok"]
           and 0 < s["counts"]["carecloud_point_history"] < final["counts"]["carecloud_point_history"]]
    assert mid, ("while the run was held after its first round the reader did not see that round's rows: "
                 f"{[s.get('counts') for s in during_hold]}")
    snapshot_ids = sorted({s["snapshot_id"] for s in snapshots if s["ok"]})
    record_figures("lake_reader", snapshots=len(snapshots), failures=0, distinct_lake_snapshots=len(snapshot_ids),
                   rows_compared=cmp.rows_compared)


