"""The sandbox's Capillary event delivery against the real receiver: every event that occurs is delivered as the
vendor would (both documented envelopes, both transfer parties named), and each switch does what it says:
retries on non-2xx and on a receiver that is down, duplicates, out-of-order, hours late, never delivered."""

from __future__ import annotations

import json
import socket

import pytest

from pipelines.capillary.webhook import envelope
from pipelines.sandbox.data import CAPILLARY_USER_BASE
from pipelines.sandbox.events import EventDelivery, EventDeliveryConfig
from tests.helpers.receiver import SECRET, Receiver, stored

DAY = 86_400


@pytest.fixture
def receiver(tmp_path):
    r = Receiver(tmp_path).start()
    yield r
    r.kill()


def _ids(r: Receiver) -> list[str]:
    return [i for i, _, _ in stored(r.store)]


def test_delivers_every_event_once_in_both_envelopes(sandbox_factory, receiver):
    sb = sandbox_factory(customers=2000)
    cfg = EventDeliveryConfig(url=receiver.url, secret=SECRET, customer_added_share=0.3)
    with EventDelivery(sb, cfg) as d:
        for _ in range(8):
            sb.advance(2 * DAY)
            assert d.wait_idle(60)
        assert d.stats()["retries"] == 0
    rows = stored(receiver.store)
    assert sorted(i for i, _, _ in rows) == sorted(d.generated) and len(rows) > 20
    names = {n for _, n, _ in rows}
    assert names == {"pointsTransferred", "customerAdded"}
    bodies = [json.loads(b) for _, _, b in rows]
    assert any("attributes" in b for b in bodies) and any("data" in b for b in bodies)
    named: set[int] = set()
    for b in bodies:
        assert envelope(b)[0] == b["eventId"]
        data = b["data"] if "data" in b else b["attributes"]["data"]
        created = b.get("createdAt") or b["attributes"]["createdAt"]
        assert sb.now() - 16 * DAY <= created / 1000 <= sb.now()
        parties = [data.get("transferredFrom", {}), data.get("transferredTo", {}), data]
        for p in parties:
            ids = p.get("customerIdentifiers")
            if ids and ids["customerId"] < CAPILLARY_USER_BASE + 2000:
                named.add(ids["customerId"])
                # every identifier the pipeline may be configured with is there for a listed customer
                assert set(ids["instore"]) == {"mobile", "email", "externalId"}
    assert named == d.customers_named()
    # a transfer between two listed customers names both; the API shows it to both
    both = [b for b in bodies if (b.get("data") or b["attributes"]["data"]).get("transferredTo", {}).get(
        "customerIdentifiers", {}).get("customerId", 10**12) < CAPILLARY_USER_BASE + 2000
        and (b.get("data") or b["attributes"]["data"]).get("transferredFrom", {}).get(
        "customerIdentifiers", {}).get("customerId", 10**12) < CAPILLARY_USER_BASE + 2000]
    assert both
    for b in both[:5]:
        data = b.get("data") or b["attributes"]["data"]
        for side in ("transferredFrom", "transferredTo"):
            cid = str(data[side]["customerIdentifiers"]["customerId"])
            seen = [rec["transferId"] for _, rec in sb.app.data.capillary_view(int(cid) - CAPILLARY_USER_BASE)]
            assert data["transferId"] in seen


def test_duplicates_reordering_late_and_lost(sandbox_factory, receiver):
    sb = sandbox_factory(customers=3000)
    cfg = EventDeliveryConfig(url=receiver.url, secret=SECRET, duplicate_share=0.3, duplicate_max_seconds=DAY,
                              reorder_share=0.5, reorder_max_seconds=6 * 3600, late_share=0.3,
                              late_min_seconds=3 * 3600, late_max_seconds=10 * 3600, lost_share=0.15)
    arrived_in_step: dict[str, int] = {}
    with EventDelivery(sb, cfg) as d:
        for step in range(16):
            sb.advance(DAY / 2)
            assert d.wait_idle(60)
            for i in _ids(receiver):
                arrived_in_step.setdefault(i, step)
        occurred_in_step = {}  # from the events' own time
        sb.advance(2 * DAY)   # everything late or duplicated is due by now
        assert d.wait_idle(60)
        stats = d.stats()
    ids = _ids(receiver)
    assert len(ids) == len(set(ids))                                 # stored once, whatever was re-sent
    # everything due by now arrived, except the lost share
    assert set(ids) == {e for e, due in d.due.items() if due <= sb.now()}
    assert set(d.due) == set(d.generated) - d.lost
    assert d.lost and not set(ids) & d.lost                          # some never did
    assert stats["duplicates_sent"] > 0 and sum(d.delivered.values()) > len(d.delivered)
    bodies = {i: json.loads(b) for i, _, b in stored(receiver.store)}
    created = [(bodies[i].get("createdAt") or bodies[i]["attributes"]["createdAt"]) for i in ids]
    assert created != sorted(created)                                # out of order
    start = sb.now() - 2 * DAY - 8 * DAY
    for i, body in bodies.items():
        occurred_in_step[i] = int(((body.get("createdAt") or body["attributes"]["createdAt"]) / 1000 - start)
                                  // (DAY / 2))
    late_arrivals = [i for i in d.late & set(ids) if arrived_in_step.get(i, 99) > occurred_in_step[i]]
    assert late_arrivals                                             # some came in a later step: hours late


def test_retries_until_the_receiver_accepts(sandbox_factory, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = Receiver(tmp_path, port=port)
    sb = sandbox_factory(customers=2000)
    cfg = EventDeliveryConfig(url=f"http://127.0.0.1:{port}/capillary/events", secret="wrong-secret-0123456789",
                              retry_backoff=0.05, retry_max_backoff=0.2)
    with EventDelivery(sb, cfg) as d:
        sb.advance(6 * DAY)
        assert not d.wait_idle(1.5)                                  # the receiver is not running: retried
        assert d.stats()["errors"] > 0 and not d.delivered
        r.start()
        assert not d.wait_idle(1.5)                                  # now it answers 401: retried
        assert d.stats()["non_2xx"] > 0 and not d.delivered
        assert _ids(r) == []
        d.update(secret=SECRET)                                      # the brand fixes the webhook's header
        assert d.wait_idle(60)
        assert set(_ids(r)) == set(d.generated) and d.generated and not d.failed
    r.kill()


def test_a_non_retriable_answer_is_never_retried(sandbox_factory, receiver):
    sb = sandbox_factory(customers=2000)
    cfg = EventDeliveryConfig(url=receiver.url, secret="wrong-secret-0123456789", non_retriable=(400, 401))
    with EventDelivery(sb, cfg) as d:
        sb.advance(6 * DAY)
        assert d.wait_idle(60)
        stats = d.stats()
    assert stats["retries"] == 0 and stats["failed"] == len(d.generated) > 0
    assert _ids(receiver) == []


def test_switches_are_validated():
    with pytest.raises(ValueError, match="lost_share"):
        EventDeliveryConfig(url="http://x/", lost_share=1.5)
    with pytest.raises(ValueError, match="envelope"):
        EventDeliveryConfig(url="http://x/", envelope="xml")


def test_cli_sandbox_delivers_to_the_receiver(receiver, tmp_path):
    """`loyalty-etl sandbox --events-url ...` as processes: what arrives is exactly what the same seed generates."""
    import subprocess
    import sys
    import time
    import urllib.request

    from pipelines.sandbox import Sandbox, SandboxConfig
    from tests.helpers.cli import REPO_ROOT

    now = "2026-11-20T00:00:00+00:00"
    log = (tmp_path / "sandbox.out").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "sandbox", "--port", "0", "--customers", "2000",
                             "--now", now, "--events-url", receiver.url, "--events-secret", SECRET],
                            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "delivering Capillary events" not in (tmp_path / "sandbox.out").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "sandbox.out").read_text()
            time.sleep(0.05)
        url = (tmp_path / "sandbox.out").read_text().split(" on ", 1)[1].split()[0]
        req = urllib.request.Request(url + "/_sandbox/clock", data=json.dumps({"advance_seconds": 6 * DAY}).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=10).read()
        # the same events, computed in process from the same seed, without sending
        sb = Sandbox(SandboxConfig(customers=2000, now=now))
        expected = EventDelivery(sb, EventDeliveryConfig(url="http://unused/"))
        expected._build_timeline()
        expected._cursor = sb.now()
        expected._schedule(sb.now() + 6 * DAY)
        assert expected.generated
        while set(_ids(receiver)) != set(expected.generated):
            assert time.monotonic() < deadline + 60, (len(_ids(receiver)), len(expected.generated))
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(30)
