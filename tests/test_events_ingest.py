"""Ingestion of received Capillary events into the warehouse (pipelines/capillary/events_ingest.py) and the customers they name
(pipelines/capillary/event_identifiers.py): the real receiver, the sandbox's live event delivery, the real SQLite
store and a real DuckDB file; rows checked against the sandbox's ground truth (what it generated, lost, delivered)."""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from pipelines.capillary.event_identifiers import named_customers, own_customer_id
from pipelines.capillary import events_ingest as ing
from pipelines.events.store import EventStore
from pipelines.sandbox.data import CAPILLARY_USER_BASE
from pipelines.sandbox.events import EventDelivery, EventDeliveryConfig
from tests.helpers.cli import REPO_ROOT
from tests.helpers.receiver import SECRET, Receiver, event, stored

DAY = 86_400
UTC = dt.timezone.utc


@pytest.fixture
def receiver(tmp_path):
    r = Receiver(tmp_path).start()
    yield r
    r.kill()


def _rows(warehouse: Path) -> list[tuple]:
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        return conn.execute(f"SELECT event_id, event_name, customer_id, occurred_at, payload, received_at "
                            f"FROM {ing.TABLE} ORDER BY store_seq").fetchall()


def _ingest(warehouse: Path, store: Path, **kw) -> ing.IngestResult:
    s = EventStore(store)
    try:
        with duckdb.connect(str(warehouse)) as conn:
            return ing.ingest(conn, s, **kw)
    finally:
        s.close()


def _listed(named: list[str], customers: int) -> set[int]:
    return {int(c) for c in named if CAPILLARY_USER_BASE <= int(c) < CAPILLARY_USER_BASE + customers}


# ---------------------------------------------------------------------------------------------- identifiers

def test_identifiers_in_both_envelopes_and_both_parties():
    ids = {"customerId": 564000007, "instore": {"mobile": "420600000007", "email": "c7@x.cz", "externalId": "E7"}}
    other = {"customerId": 564000009, "instore": {"mobile": "420600000009"}}
    data = {"transferId": 5, "customerIdentifiers": ids,
            "transferredFrom": {"entityType": "CUSTOMER", "customerIdentifiers": ids},
            "transferredTo": {"entityType": "CUSTOMER", "customerIdentifiers": other}}
    flat = {"eventName": "pointsTransferred", "eventId": "a", "createdAt": 1, "data": data}
    nested = {"eventId": "b", "eventType": "1800_pointsTransferred", "attributes": {"createdAt": 1, "data": data}}
    for body in (flat, nested):
        assert named_customers(body, "id").ids == ["564000007", "564000009"]
        assert named_customers(body, "mobile").ids == ["420600000007", "420600000009"]
        got = named_customers(body, "email")                     # the receiving party carries no email
        assert got.ids == ["c7@x.cz"] and got.unresolved == ["564000009"]
        assert own_customer_id(body) == "564000007"
    # identifiers flattened into the party object, inside a list, and an event with none at all
    odd = {"eventId": "c", "data": {"parties": [{"customerId": 11, "mobile": "777"}, {"userGroupId": 3}]}}
    assert named_customers(odd, "mobile").ids == ["777"] and named_customers(odd, "id").ids == ["11"]
    assert own_customer_id(odd) == "11"
    assert named_customers({"eventId": "d", "data": {"x": 1}}, "id").ids == []
    assert named_customers([1, 2], "id").ids == [] and own_customer_id("x") is None


# ---------------------------------------------------------------------------------------------- ingestion

def test_nights_of_live_delivery_match_the_sandbox_truth(sandbox_factory, receiver, tmp_path):
    """Several nights: every event the receiver stored lands once in capillary_events with its fields; the events
    each night's run uses are exactly those received since the previous one, whatever their own time (duplicates,
    reordering, hours-late events); the customers they name are the truth's; lost events name nobody (the sweep's
    job)."""
    customers = 3000
    sb = sandbox_factory(customers=customers)
    cfg = EventDeliveryConfig(url=receiver.url, secret=SECRET, customer_added_share=0.1, duplicate_share=0.2,
                              duplicate_max_seconds=DAY, reorder_share=0.3, late_share=0.2,
                              late_min_seconds=3 * 3600, late_max_seconds=30 * 3600, lost_share=0.1)
    warehouse = tmp_path / "warehouse.duckdb"
    used: list[str] = []
    named_by_night: list[set[int]] = []
    with EventDelivery(sb, cfg) as d:
        for night in range(5):
            sb.advance(DAY)
            assert d.wait_idle(60)
            before = {i for i, _, _ in stored(receiver.store)}
            result = _ingest(warehouse, receiver.store)
            assert result.read == len(before) - len(used) and result.added == result.read and not result.issues
            with duckdb.connect(str(warehouse)) as conn:
                pending = ing.pending_events(conn)
                assert {p.event_id for p in pending} == before - set(used)   # since the previous run, all of them
                named: set[int] = set()
                for p in pending:
                    named |= _listed(named_customers(p.payload, "id").ids, customers)
                ing.mark_selected(conn, [p.event_id for p in pending], dt.datetime.now(UTC))
            named_by_night.append(named)
            used += [p.event_id for p in pending]
            assert named == d.customers_named({p.event_id for p in pending})
        stats = d.stats()
    assert stats["lost"] > 0 and stats["duplicates_sent"] > 0 and d.late
    assert len(used) == len(set(used)) and set(used) == set(d.generated) - d.lost - {
        e for e, due in d.due.items() if due > sb.now()}
    # every row equals what the receiver stored
    rows = _rows(warehouse)
    bodies = {i: (n, b) for i, n, b in stored(receiver.store)}
    assert [r[0] for r in rows] == list(bodies)
    for event_id, name, customer_id, occurred_at, payload, received_at in rows:
        body = json.loads(bodies[event_id][1])
        assert name == bodies[event_id][0] and json.loads(payload) == body
        created = body.get("createdAt") or body["attributes"]["createdAt"]
        assert occurred_at == dt.datetime.fromtimestamp(created / 1000, UTC)
        data = body.get("data") or body["attributes"]["data"]
        if "customerIdentifiers" in data:                          # the event's own customer
            assert customer_id == str(data["customerIdentifiers"]["customerId"])
        else:                                                      # a transfer from a group: its receiver
            receiving = data["transferredTo"].get("customerIdentifiers")
            assert customer_id == (str(receiving["customerId"]) if receiving else None)
        assert received_at is not None
    # the lost events' customers were named by no event (unless another event named them too)
    lost_only = d.customers_named(d.lost) - set().union(*named_by_night)
    assert lost_only, "the lost events should leave customers only the sweep can find"
    # identifier_name = mobile: the same customers, as the truth's mobiles
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        payloads = [json.loads(p) for (p,) in conn.execute(f"SELECT payload FROM {ing.TABLE}").fetchall()]
    mobiles = {m for p in payloads for m in named_customers(p, "mobile").ids}
    truth = {sb.app.data.capillary_identifiers(c - CAPILLARY_USER_BASE)["mobile"] for c in set().union(*named_by_night)}
    assert truth <= mobiles and all(m in truth for m in mobiles)  # outside parties carry no mobile: unresolved


def test_reingest_adds_nothing_and_duplicates_merge(tmp_path, receiver):
    for n in range(5):
        assert receiver.post(event(f"e{n}"))[0] == 200
    warehouse = tmp_path / "warehouse.duckdb"
    first = _ingest(warehouse, receiver.store)
    assert (first.read, first.added, first.mark) == (5, 5, 5)
    again = _ingest(warehouse, receiver.store)
    assert (again.read, again.added, again.mark) == (0, 0, 5)
    assert receiver.post(event("e2"))[0] == 200                    # the vendor re-sends: stored once
    assert receiver.post(event("e5"))[0] == 200
    third = _ingest(warehouse, receiver.store)
    assert (third.read, third.added) == (1, 1)
    assert [r[0] for r in _rows(warehouse)] == [f"e{n}" for n in range(6)]
    s = EventStore(receiver.store)
    assert s.consumed_seq() == third.mark == max(e.seq for e in s.events())  # seqs may have gaps: never assumed
    s.close()


def test_a_replaced_store_is_read_again_without_doubles(tmp_path):
    warehouse = tmp_path / "warehouse.duckdb"
    old, new = tmp_path / "old.sqlite3", tmp_path / "new.sqlite3"
    s = EventStore(old)
    for n in range(4):
        s.add(f"e{n}", "pointsIssued", json.dumps(event(f"e{n}")).encode())
    s.close()
    _ingest(warehouse, old)
    s = EventStore(new)
    for n in (2, 9):
        s.add(f"e{n}", "pointsIssued", json.dumps(event(f"e{n}")).encode())
    s.close()
    result = _ingest(warehouse, new)
    assert result.store_replaced and [i.code for i in result.issues] == ["event_store_replaced"]
    assert (result.read, result.added, result.duplicates) == (2, 1, 1)
    assert sorted(r[0] for r in _rows(warehouse)) == ["e0", "e1", "e2", "e3", "e9"]


def test_a_stored_body_that_is_not_an_event_is_an_issue_not_a_crash(tmp_path):
    store = tmp_path / "s.sqlite3"
    EventStore(store).close()
    with sqlite3.connect(store) as c:                              # written by something other than the receiver
        c.execute("INSERT INTO events (event_id, event_name, received_at, body) VALUES "
                  "('x', NULL, '2026-12-01T00:00:00.000000Z', 'not json'), "
                  "('z', NULL, '2026-12-01T00:00:00.500000Z', '{\"eventId\": \"z\", \"v\": NaN}'), "
                  "('y', 'pointsIssued', '2026-12-01T00:00:01.000000Z', ?)", (json.dumps(event("y")),))
    result = _ingest(tmp_path / "w.duckdb", store)
    assert [i.code for i in result.issues] == ["bad_event"] * 2 and result.added == 1 and result.mark == 3
    assert "NaN is not JSON" in result.issues[1].message
    assert [r[0] for r in _rows(tmp_path / "w.duckdb")] == ["y"]


def test_retention_prunes_only_used_events(tmp_path):
    store = tmp_path / "s.sqlite3"
    s = EventStore(store)
    for n in range(3):
        s.add(f"e{n}", "pointsIssued", json.dumps(event(f"e{n}")).encode())
    s.close()
    warehouse = tmp_path / "w.duckdb"
    _ingest(warehouse, store)
    with duckdb.connect(str(warehouse)) as conn:
        ing.mark_selected(conn, ["e0", "e1"], dt.datetime.now(UTC))
    later = dt.datetime.now(UTC) + dt.timedelta(days=31)
    result = _ingest(warehouse, store, retention_days=30, now=later)
    assert (result.pruned_warehouse, result.pruned_store) == (2, 3)   # e2 not used yet: kept in the warehouse
    assert [r[0] for r in _rows(warehouse)] == ["e2"]
    assert stored(store) == []
    soon = _ingest(warehouse, store, retention_days=30, now=dt.datetime.now(UTC))
    assert soon.pruned_warehouse == 0


def test_silence_warning(tmp_path):
    from pipelines.events.store import newest_receipt

    path = tmp_path / "s.sqlite3"
    assert newest_receipt(path) is None and not path.exists()       # read-only: nothing created
    s = EventStore(path)
    now = dt.datetime.now(UTC)
    assert newest_receipt(path) is None
    assert "ever been received" in ing.silence_warning(None, now, dt.timedelta(hours=24), path)
    s.add("e1", "pointsIssued", json.dumps(event("e1")).encode())
    newest = newest_receipt(path)
    assert newest == s.newest_received_at()
    assert ing.silence_warning(newest, now + dt.timedelta(hours=23), dt.timedelta(hours=24), path) is None
    warning = ing.silence_warning(newest, now + dt.timedelta(hours=30), dt.timedelta(hours=24), path)
    assert "no Capillary event received for 30.0 h" in warning and "silence limit 24 h" in warning
    s.close()


# ---------------------------------------------------------------------------------------------- kill -9

INGEST_SCRIPT = """
import sys, duckdb
from pipelines.capillary.events_ingest import ingest
from pipelines.events.store import EventStore
with duckdb.connect(sys.argv[1]) as conn:
    r = ingest(conn, EventStore(sys.argv[2]))
print(r.read, r.added)
"""


def _ingest_process(warehouse: Path, store: Path, crash_at: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LOYALTY_TEST_CRASH_AT"}
    if crash_at:
        env["LOYALTY_TEST_CRASH_AT"] = crash_at
    return subprocess.run([sys.executable, "-c", INGEST_SCRIPT, str(warehouse), str(store)], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("stage", ing.CRASH_STAGES)
def test_kill_9_between_ingestion_and_commit_loses_and_doubles_nothing(tmp_path, receiver, stage):
    for n in range(20):
        assert receiver.post(event(f"e{n}"))[0] == 200
    warehouse = tmp_path / "w.duckdb"
    assert _ingest_process(warehouse, receiver.store).returncode == 0
    for n in range(20, 50):                                       # the receiver keeps running throughout
        assert receiver.post(event(f"e{n}"))[0] == 200
    killed = _ingest_process(warehouse, receiver.store, crash_at=stage)
    assert killed.returncode == -9, killed.stderr
    rows = [r[0] for r in _rows(warehouse)]
    s = EventStore(receiver.store)
    consumed = s.consumed_seq()
    s.close()
    if stage == "events_ingest":      # killed before the warehouse COMMIT: nothing of the second batch is there
        assert rows == [f"e{n}" for n in range(20)] and consumed == 20
    else:                             # after it, before the store's consumed mark: rows there, mark behind
        assert rows == [f"e{n}" for n in range(50)] and consumed == 20
    again = _ingest_process(warehouse, receiver.store)
    assert again.returncode == 0, again.stderr
    assert again.stdout.split() == (["30", "30"] if stage == "events_ingest" else ["0", "0"])
    assert [r[0] for r in _rows(warehouse)] == [f"e{n}" for n in range(50)]
    s = EventStore(receiver.store)
    assert s.consumed_seq() == 50 and s.count() == 50
    s.close()


# ---------------------------------------------------------------------------------------------- change discovery

def test_event_changes_name_the_truths_customers_night_by_night(sandbox_factory, receiver, tmp_path):
    """Capillary's change discovery from events: each night names exactly the customers of the events received
    since the last run that committed (a run that dies before its commit leaves them for the next); customerAdded
    customers join the customer list for good; events that never arrived name nobody (left to the sweep)."""
    from pipelines.capillary.event_changes import discover_from_events, with_added_customers

    customers = 3000
    sb = sandbox_factory(customers=customers)
    cfg = EventDeliveryConfig(url=receiver.url, secret=SECRET, customer_added_share=0.6, lost_share=0.1,
                              duplicate_share=0.2, duplicate_max_seconds=DAY)
    warehouse = tmp_path / "w.duckdb"
    base_list = [str(CAPILLARY_USER_BASE + i) for i in range(customers)]
    kw = dict(identifier_name="id", retention_days=30, silence=dt.timedelta(hours=24))
    with EventDelivery(sb, cfg) as d:
        sb.advance(DAY)
        assert d.wait_idle(60)
        with duckdb.connect(str(warehouse)) as conn:
            dead = discover_from_events(conn, receiver.store, **kw)   # this run dies before its commit
        used: set[str] = set()
        for night in range(3):
            sb.advance(3 * DAY)                     # nights apart: customerAdded events are sparse
            assert d.wait_idle(60)
            with duckdb.connect(str(warehouse)) as conn:
                found = discover_from_events(conn, receiver.store, **kw)
                if night == 0:
                    assert set(dead.event_ids) <= set(found.event_ids)    # not lost with the dead run
                assert found.complete and found.requests == 0 and found.silence is None
                events = set(found.event_ids)
                assert not events & used and len(found.event_ids) == len(events)
                assert _listed(list(found.named()), customers) == d.customers_named(events)
                truth_added = {str(CAPILLARY_USER_BASE + i) for e, (k, i) in d.generated.items()
                               if e in events and k == "c"}
                assert set(found.added) == truth_added
                found.commit(conn)
                used |= events
        assert used == {e for e in d.generated if e not in d.lost and d.due[e] <= sb.now()}
        assert d.customers_named(d.lost) - d.customers_named(used)          # only the sweep finds these
    # customerAdded customers join a list that lacks them, and stay after their events are pruned
    all_added = {str(CAPILLARY_USER_BASE + i) for e, (k, i) in d.generated.items() if e in used and k == "c"}
    assert all_added
    short = [c for c in base_list if c not in all_added]
    with duckdb.connect(str(warehouse)) as conn:
        assert set(with_added_customers(short, conn)) == set(base_list)
        assert with_added_customers(short, conn)[:len(short)] == short
        conn.execute(f"DELETE FROM {ing.TABLE}")
        assert all_added <= set(with_added_customers(short, conn))


def test_event_changes_without_a_store_warn_and_go_on(tmp_path):
    from pipelines.capillary.event_changes import discover_from_events

    (tmp_path / "dir.sqlite3").mkdir()
    with duckdb.connect(str(tmp_path / "w.duckdb")) as conn:
        broken = discover_from_events(conn, tmp_path / "dir.sqlite3", identifier_name="id", retention_days=30,
                                      silence=dt.timedelta(hours=24))
        assert not broken.complete and "cannot be read" in broken.errors[0] and broken.named() == set()
        quiet = discover_from_events(conn, tmp_path / "new.sqlite3", identifier_name="id", retention_days=30,
                                     silence=dt.timedelta(hours=24))
        assert quiet.complete and "ever been received" in quiet.silence
        assert [i.code for i in quiet.issues] == ["events_silent"]


def test_status_warns_when_the_webhook_went_silent(tmp_path, receiver):
    """`loyalty-etl status` reads the store (read-only) beside the warehouse and warns past `events_silence`."""
    import time

    from tests.helpers.cli import CLI

    assert receiver.post(event("e1"))[0] == 200
    _ingest(receiver.warehouse, receiver.store)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOURCES__", "DESTINATION__", "LOYALTY__"))}
    env.update({"DESTINATION__DUCKDB__CREDENTIALS": str(receiver.warehouse),
                "SOURCES__CAPILLARY__WEBHOOK__STORE": str(receiver.store)})
    fresh = subprocess.run([*CLI, "status"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert fresh.returncode == 0, fresh.stderr
    assert "Capillary events: last received" in fresh.stdout and "warning" not in fresh.stdout
    time.sleep(1.5)
    env["SOURCES__CAPILLARY__EVENTS_SILENCE"] = "1s"
    quiet = subprocess.run([*CLI, "status", "--json"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                           timeout=120)
    assert quiet.returncode == 0, quiet.stderr
    events = json.loads(quiet.stdout)["capillary_events"]
    assert events["store"] == str(receiver.store) and "no Capillary event received for" in events["warning"]
    assert SECRET not in quiet.stdout + quiet.stderr


def test_the_capillary_api_discovers_from_the_store_beside_its_warehouse(tmp_path, receiver, monkeypatch):
    """`CapillaryApi.discover` (what the engine asks a source for in a changed run) finds the store beside the
    warehouse its connection has open, and names customers as the configured identifier."""
    from pipelines.capillary.helpers import CapillaryApi
    from pipelines.config import load_settings
    from pipelines.http import HttpStats
    from pipelines.windows import Window

    ids = {"customerId": 564000007, "instore": {"mobile": "420600000007"}}
    assert receiver.post(event("e1", customerIdentifiers=ids))[0] == 200
    assert receiver.post(event("e2", name="customerAdded",
                               customerIdentifiers={"customerId": 9, "instore": {"mobile": "420999"}}))[0] == 200
    for name in list(os.environ):
        if name.startswith(("SOURCES__", "LOYALTY__", "DESTINATION__")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setenv("SOURCES__CAPILLARY__CREDENTIALS__TILL_ID", "till")
    monkeypatch.setenv("SOURCES__CAPILLARY__CREDENTIALS__PASSWORD", "pw-0123456789")
    monkeypatch.setenv("SOURCES__CAPILLARY__IDENTIFIER_NAME", "mobile")
    api = CapillaryApi(load_settings().source("capillary"), HttpStats())
    until = dt.datetime.now(UTC)
    with duckdb.connect(str(receiver.warehouse)) as conn:            # the store is beside it: found by default
        found = api.discover(conn, "loyalty_raw", Window(until - dt.timedelta(days=1), until))
        assert found.requests == 0 and found.complete and found.named() == {"420600000007", "420999"}
        assert found.added == ["420999"]


def test_a_store_locked_after_the_commit_delays_only_pruning(tmp_path, monkeypatch):
    import pipelines.events.store as store_module

    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_MS", 300)
    path = tmp_path / "s.sqlite3"
    s = EventStore(path)
    for n in range(3):
        s.add(f"e{n}", "pointsIssued", json.dumps(event(f"e{n}")).encode())
    s.close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")                              # another writer holds the lock throughout
    try:
        result = _ingest(tmp_path / "w.duckdb", path)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert [i.code for i in result.issues] == ["event_store_busy"] and result.added == 3 and result.mark == 3
    s = EventStore(path)
    assert s.consumed_seq() == 0 and s.count() == 3                 # written next run; nothing lost
    s.close()
    assert _ingest(tmp_path / "w.duckdb", path).added == 0
    s = EventStore(path)
    assert s.consumed_seq() == 3
    s.close()
