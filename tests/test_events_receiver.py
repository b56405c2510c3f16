"""The Capillary webhook receiver, as a real process on loopback: what it rejects, what it stores, and that no
event it answered 2xx to is ever lost (kill -9, SIGTERM mid-request, two receivers on one store)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import duckdb
import psutil
import pytest

from pipelines.capillary.webhook import envelope
from tests.helpers.cli import run_cli
from tests.helpers.receiver import PATH, SECRET, Receiver, event, stored


@pytest.fixture
def receivers(tmp_path):
    started: list[Receiver] = []

    def make(*args: str, **kw) -> Receiver:
        r = Receiver(tmp_path, *args, **kw).start()
        started.append(r)
        return r

    yield make
    for r in started:
        r.kill()


def _raw(port: int, data: bytes, read: bool = True) -> tuple[socket.socket, bytes]:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(data)
    if not read:
        return s, b""
    chunks = []
    while True:
        try:
            c = s.recv(65536)
        except ConnectionResetError:
            break
        if not c:
            break
        chunks.append(c)
    s.close()
    return s, b"".join(chunks)


def _status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def test_rejects_bad_requests_and_stores_none_of_them(receivers, tmp_path):
    r = receivers(env={"SOURCES__CAPILLARY__WEBHOOK__MAX_BODY_BYTES": "4096"})
    good = event("e-good")
    assert r.post(good, secret=None)[0] == 401                              # no header
    assert r.post(good, secret="x" * len(SECRET))[0] == 401                 # wrong, same length
    assert r.post(good, secret=SECRET[:-1])[0] == 401                       # a prefix of the secret
    assert r.post(good, secret=SECRET + "x")[0] == 401
    assert r.post(good, secret=None, headers={"X-Other": SECRET})[0] == 401  # right value, wrong header
    big = event("e-big", notes="n" * 5000)
    assert r.post(big)[0] == 413                                            # by Content-Length
    # by Content-Length, before the body is sent at all
    _, raw = _raw(r.port, f"POST {PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: {SECRET}\r\n"
                          f"Content-Length: {50 * 1024 * 1024}\r\n\r\n".encode())
    assert _status(raw) == 413
    # chunked, over the limit only while reading
    chunk = b"x" * 3000
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3)) + b"0\r\n\r\n"
    _, raw = _raw(r.port, f"POST {PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: {SECRET}\r\n"
                          "Transfer-Encoding: chunked\r\n\r\n".encode() + body)
    assert _status(raw) == 413
    assert r.post(b'{"eventId": "e-bad", ')[0] == 400                     # invalid JSON
    assert r.post(b"\xff\xfe not utf-8")[0] == 400
    assert r.post(b'["eventId", "e-list"]')[0] == 400                      # not an object
    assert r.post({"eventName": "customerAdded", "data": {}})[0] == 400   # no eventId
    assert r.post({"eventId": "", "eventName": "customerAdded"})[0] == 400
    assert r.post({"eventId": None})[0] == 400
    assert r.post({"eventId": {"id": 1}})[0] == 400
    assert r.post(b"[" * 100_000 + b"]" * 100_000)[0] == 413
    assert r.post(b'{"eventId": "deep", "data": ' + b"[" * 2000 + b"]" * 2000 + b"}")[0] == 400  # nested too deep
    assert stored(r.store) == []
    # and the receiver is still fine: a good event after all that is stored, also chunked
    assert r.post(good) == (200, {"status": "stored", "eventId": "e-good"})
    small = json.dumps(event("e-chunked")).encode()
    _, raw = _raw(r.port, f"POST {PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: {SECRET}\r\nConnection: close\r\n"
                          "Transfer-Encoding: chunked\r\n\r\n".encode()
                  + b"%x\r\n%s\r\n0\r\n\r\n" % (len(small), small))
    assert _status(raw) == 200
    assert [(i, n) for i, n, _ in stored(r.store)] == [("e-good", "pointsIssued"), ("e-chunked", "pointsIssued")]
    assert stored(r.store)[0][2] == json.dumps(good).encode()             # the body exactly as received


def test_duplicate_event_id_is_acknowledged_and_stored_once_also_after_a_restart(receivers):
    r = receivers()
    first = event("dup-1", points=10)
    assert r.post(first) == (200, {"status": "stored", "eventId": "dup-1"})
    assert r.post(first) == (200, {"status": "duplicate", "eventId": "dup-1"})
    # the vendor's retry may differ in envelope details; the eventId decides, the first body is kept
    assert r.post({**first, "retry": 3}) == (200, {"status": "duplicate", "eventId": "dup-1"})
    assert r.stop() == 0
    r.start()  # days later is the same as after a restart: the store keeps every id
    assert r.post(first)[1]["status"] == "duplicate"
    assert r.post(event("dup-2"))[1]["status"] == "stored"
    rows = stored(r.store)
    assert [i for i, _, _ in rows] == ["dup-1", "dup-2"]
    assert rows[0][2] == json.dumps(first).encode()


def test_kill_9_right_after_2xx_loses_nothing(receivers):
    r = receivers()
    acked: list[str] = []

    def send(i: int) -> None:
        status, _ = r.post(event(f"k-{i}"))
        if status == 200:
            acked.append(f"k-{i}")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(send, range(40)))
    status, _ = r.post(event("k-last"))
    assert status == 200
    r.proc.kill()  # SIGKILL the moment the last 2xx arrived
    r.proc.wait(10)
    acked.append("k-last")
    assert len(acked) == 41
    assert sorted(i for i, _, _ in stored(r.store)) == sorted(acked)
    r.start()  # the store opens again after the kill (WAL recovery) and keeps deduplicating
    assert r.post(event("k-3"))[1]["status"] == "duplicate"
    assert len(stored(r.store)) == 41
    res = run_cli(r.env, "events", "status", timeout=120)  # read while the receiver runs
    assert res.returncode == 0 and ": 41 events" in res.stdout and "pointsIssued 41" in res.stdout


def test_sigterm_finishes_the_request_in_flight_then_exits(receivers):
    r = receivers()
    body = json.dumps(event("term-1")).encode()
    s, _ = _raw(r.port, f"POST {PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: {SECRET}\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:10], read=False)
    time.sleep(0.3)
    idle = socket.create_connection(("127.0.0.1", r.port), timeout=30)  # an idle keep-alive connection
    time.sleep(0.2)
    r.signal(signal.SIGTERM)
    time.sleep(0.8)
    assert r.proc.poll() is None, "stopped before the request in flight was answered"
    s.sendall(body[10:])
    raw = s.recv(65536)
    s.close()
    assert _status(raw) == 200 and b"Connection: close" in raw
    assert r.proc.wait(20) == 0
    assert idle.recv(100) == b""  # closed, not left hanging
    assert [i for i, _, _ in stored(r.store)] == ["term-1"]
    assert "stopped" in r.logs()


def test_two_receivers_on_one_store_store_each_event_once(receivers):
    a = receivers()
    b = receivers()  # same tmp_path -> same store file
    assert a.store == b.store
    results: list[tuple[int, dict]] = []
    lock = threading.Lock()

    def send(i: int) -> None:
        ev = event(f"two-{i % 150}", n=i)  # each id delivered about twice, to either receiver
        res = (a if i % 2 else b).post(ev)
        with lock:
            results.append(res)

    with ThreadPoolExecutor(12) as pool:
        list(pool.map(send, range(300)))
    assert all(status == 200 for status, _ in results), [r for r in results if r[0] != 200][:3]
    assert sum(1 for _, body in results if body["status"] == "stored") == 150
    ids = [i for i, _, _ in stored(a.store)]
    assert sorted(ids) == sorted(f"two-{k}" for k in range(150))


def test_secret_never_in_logs_or_store(receivers):
    r = receivers("--log-format", "json", "-vv")
    r.post(event("s-1"))
    r.post(event("s-2"), secret=SECRET + "-wrong")
    r.post(event("s-3"), secret="Basic " + SECRET)
    r.post(event("s-4"), headers={"X-Echo": SECRET})
    r.post(b"not json " + SECRET.encode())
    assert r.stop() == 0
    logs = r.logs()
    assert logs.count('"status": 200') == 2 and logs.count('"status": 401') == 2 and logs.count('"status": 400') == 1
    assert SECRET not in logs
    assert all(SECRET.encode() not in body for _, _, body in stored(r.store))
    for line in r.err.read_text().splitlines():
        json.loads(line)  # one JSON object per line


def test_never_opens_the_warehouse(receivers, tmp_path):
    r = receivers()
    fds = {os.readlink(f"/proc/{r.proc.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{r.proc.pid}/fd")}
    assert not any(str(r.warehouse) in f for f in fds)
    # a writer holding the DuckDB file (a nightly run) does not stop receiving
    conn = duckdb.connect(str(r.warehouse))
    try:
        conn.execute("CREATE TABLE t AS SELECT 1 AS x")
        assert r.post(event("w-1"))[0] == 200
    finally:
        conn.close()
    assert [i for i, _, _ in stored(r.store)] == ["w-1"]


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed")
def test_every_2xx_follows_an_fsync(tmp_path):
    """The durability claim checked at the system-call level: each acknowledged event had its fsync first."""
    trace = tmp_path / "trace"
    r = Receiver(tmp_path, wrap=["strace", "-f", "-qq", "-e", "trace=fsync,fdatasync,sendto,write", "-o",
                                 str(trace)])
    try:
        r.start(timeout=120)
    except RuntimeError as exc:
        pytest.skip(f"strace cannot trace here: {exc}")
    try:
        for i in range(5):
            assert r.post(event(f"f-{i}"))[0] == 200
    finally:
        tree = psutil.Process(r.proc.pid).children(recursive=True)  # the receiver under strace
        for child in tree:
            child.terminate()
        try:
            r.proc.wait(60)
        except subprocess.TimeoutExpired:  # never leave a traced receiver behind
            for p in [*tree, psutil.Process(r.proc.pid)]:
                p.kill()
            r.proc.wait(30)
    calls = trace.read_text().splitlines()
    syncs = [n for n, line in enumerate(calls) if "fsync(" in line or "fdatasync(" in line]
    answers = [n for n, line in enumerate(calls) if "HTTP/1.1 200" in line]
    if not calls or not answers:
        pytest.skip("strace produced no trace here")
    assert len(answers) == 5
    # before each 200 there is an fsync after the previous 200
    prev = -1
    for a in answers:
        assert any(prev < s < a for s in syncs), f"no fsync before the 200 at trace line {a}"
        prev = a


def test_configuration_errors_are_clear(tmp_path):
    r = Receiver(tmp_path)
    del r.env["SOURCES__CAPILLARY__WEBHOOK__SECRET"]
    res = run_cli(r.env, "events", "serve", "--port", "0", timeout=120)
    assert res.returncode == 1 and "SOURCES__CAPILLARY__WEBHOOK__SECRET" in res.stderr
    res = run_cli({**r.env, "SOURCES__CAPILLARY__WEBHOOK__SECRET": "short"}, "events", "serve", timeout=120)
    assert res.returncode == 1 and "at least 16 characters" in res.stderr
    # a second receiver on a busy port says so
    first = Receiver(tmp_path).start()
    try:
        res = run_cli(first.env, "events", "serve", "--port", str(first.port), timeout=120)
        assert res.returncode == 1 and f"cannot listen on 127.0.0.1:{first.port}" in res.stderr
    finally:
        first.kill()


def test_envelope_reads_both_documented_shapes():
    # "Event schema (Payload)", flat shape
    assert envelope({"eventName": "customerAdded", "eventId": "06750c10-dcf1-45de-a0eb-d9c64372feed",
                     "orgId": 1800, "createdAt": 1619199042493, "data": {}}) == (
        "06750c10-dcf1-45de-a0eb-d9c64372feed", "customerAdded")
    # the same page's newer sample: eventType "<org>_<name>", payload under attributes
    assert envelope({"eventId": "81b1f0ce", "eventType": "150698_customerAdded", "actionType": "START",
                     "attributes": {"createdAt": 1683874799971, "data": {}, "eventName": "customerAdded"}}) == (
        "81b1f0ce", "customerAdded")
    assert envelope({"eventId": "x", "eventType": "150698_pointsIssued", "attributes": {}}) == ("x", "pointsIssued")
    assert envelope({"eventId": 15}) == ("15", None)
    for bad in ({}, {"eventId": ""}, {"eventId": " "}, {"eventId": True}, {"eventId": [1]}, [], "e"):
        with pytest.raises(ValueError):
            envelope(bad)


def test_store_that_cannot_commit_answers_503_and_the_retry_is_stored(receivers):
    r = receivers()
    assert r.post(event("u-1"))[0] == 200
    blocker = sqlite3.connect(r.store, timeout=1, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock past the receiver's busy timeout
    try:
        started = time.monotonic()
        status, body = r.post(event("u-2"))
        assert status == 503 and "unavailable" in body["error"] and time.monotonic() - started >= 9
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert [i for i, _, _ in stored(r.store)] == ["u-1"]
    assert r.post(event("u-2")) == (200, {"status": "stored", "eventId": "u-2"})  # the vendor's retry
    assert r.proc.poll() is None
