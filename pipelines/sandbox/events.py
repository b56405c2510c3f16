"""Capillary's Event Notification Service, simulated: the sandbox POSTs an event for every points transfer and every
new customer it creates to a configured receiver URL, as the vendor does for a registered webhook (api-notes §2.8).

What the vendor documents is followed: the two envelopes of its "Event schema" pages (flat `eventName` + `data`, and
`eventType` "<orgId>_<name>" + `attributes{eventName, createdAt, data}`), `eventId` for idempotency, the webhook's
headers sent verbatim, retries with exponential backoff on retriable failures (its "Consuming event notifications"
page: 429-style failures are retried for at least 7 days, a 400 is never retried). What it leaves open is a switch
in `EventDeliveryConfig`, off or neutral by default: duplicates, out-of-order delivery, hours-late delivery, and a
share of events that is never delivered (which the pipeline's rolling sweep must catch).

Deliveries follow the sandbox clock: starting delivery takes "now" as the moment the webhook was registered, and
every event that occurs after it (advance the clock) is delivered once its due time has come. Events and their
fates (lost, late, duplicated) are a pure function of the seeds, so a test knows exactly what was never sent.
"""

from __future__ import annotations

import hashlib
import heapq
import http.client
import random
import threading
import time
import uuid
from bisect import bisect_right
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from pipelines.sandbox.config import EventDeliveryConfig
from pipelines.sandbox.data import CAPILLARY_USER_BASE, PROGRAM_NAME, TRANSFER_ID_BASE, TRANSFERS_PER_GROUP_MAX

if TYPE_CHECKING:
    from pipelines.sandbox.service import Sandbox

TRANSFER = "t"
CUSTOMER = "c"


@dataclass(order=True)
class _Delivery:
    due: float                             # sandbox time it may be sent
    not_before: float                      # wall time (retry backoff)
    seq: int
    key: tuple = field(compare=False)      # (kind, id) in the timeline
    event_id: str = field(compare=False)
    attempt: int = field(compare=False, default=0)
    copy: int = field(compare=False, default=0)


class EventDelivery:
    """Delivers the sandbox's events to `config.url` from a background thread. `with EventDelivery(sb, cfg) as d:`;
    `d.wait_idle()` waits until every event due at the sandbox's current time has been answered 2xx (or failed)."""

    def __init__(self, sandbox: "Sandbox", config: EventDeliveryConfig) -> None:
        if not config.url:
            raise ValueError("EventDeliveryConfig.url is not set")
        self.sandbox = sandbox
        self.config = config
        self.gen = sandbox.app.data
        self.clock = sandbox.app.clock
        self._lock = threading.Condition()
        self._heap: list[_Delivery] = []
        self._seq = 0
        self._in_flight = 0
        self._timeline: list[tuple[float, str, int]] | None = None
        self._times: list[float] = []
        self._cursor: float | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._local = threading.local()
        self._generation = 0
        self._registered: dict[int, float] = {}
        self.generated: dict[str, tuple] = {}  # event id -> (kind, id) of every event that occurred
        self.due: dict[str, float] = {}       # event id -> sandbox time its first copy may be sent
        self.lost: set[str] = set()
        self.late: set[str] = set()
        self.delivered: dict[str, int] = {}   # event id -> 2xx answers received
        self.failed: dict[str, int] = {}      # event id -> the non-retriable status it got
        self.counts = {"attempts": 0, "retries": 0, "duplicates_sent": 0, "non_2xx": 0, "errors": 0}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "EventDelivery":
        self._build_timeline()
        self._cursor = self.clock.now()
        self._threads = [threading.Thread(target=self._schedule_loop, name="sandbox-events", daemon=True)]
        self._threads += [threading.Thread(target=self._send_loop, name=f"sandbox-events-{n}", daemon=True)
                          for n in range(self.config.connections)]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        for t in self._threads:
            t.join(self.config.timeout + 5)
        self._threads = []

    def __enter__(self) -> "EventDelivery":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def update(self, **changes: Any) -> None:
        """Change switches while delivering, e.g. `update(secret=...)` after a 401 storm, `update(url=...)`."""
        with self._lock:
            self.config = replace(self.config, **changes)
            self._generation += 1  # each sender reconnects with the new settings
            self._lock.notify_all()

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Wait until nothing due at the current sandbox time is queued or in flight. False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._schedule(self.clock.now())
            with self._lock:
                now = self.clock.now()
                if self._in_flight == 0 and not any(d.due <= now for d in self._heap):
                    return True
                self._lock.wait(0.05)
        return False

    def stats(self) -> dict:
        with self._lock:
            return {"generated": len(self.generated), "delivered": len(self.delivered), "lost": len(self.lost),
                    "late": len(self.late), "failed": len(self.failed), "queued": len(self._heap),
                    **self.counts}

    # ------------------------------------------------------------------ what happens, and when
    def _build_timeline(self) -> None:
        """(occurred at, kind, id) of every transfer and new customer, sorted: built once, so each clock step is a
        bisect, also for a 100,000-customer bench sandbox."""
        c = self.gen.config
        out: list[tuple[float, str, int]] = []
        size = c.transfer_group_size
        groups = (c.customers + size - 1) // size
        first: dict[int, float] = {}
        for g in range(groups):
            for t in self.gen.transfers_of_group(g):
                out.append((float(t["ts"]), TRANSFER, t["transfer_id"]))
                for kind, ident in (t["from"], t["to"]):
                    if kind == "CUSTOMER":
                        first[ident] = min(first.get(ident, t["ts"]), t["ts"])
        for index in range(c.customers):
            reg = self._registered_at(index, first.get(index))
            if reg is not None:
                self._registered[index] = reg
                out.append((reg, CUSTOMER, index))
        out.sort()
        self._timeline = out
        self._times = [t for t, _, _ in out]

    def _registered_at(self, index: int, first_transfer: float | None) -> float | None:
        """A share of customers register during the data span (before their first transfer); the rest before it."""
        rng = random.Random(f"reg:{self.config.seed}:{self.gen.config.seed}:{index}")
        if rng.random() >= self.config.customer_added_share:
            return None
        start, end = self.gen.start_ts, self.gen.end_ts
        latest = first_transfer - 60.0 if first_transfer is not None else end
        return max(start, latest - rng.uniform(3_600.0, 30 * 86_400.0))

    def _event_id(self, key: tuple) -> str:
        digest = hashlib.md5(f"event:{self.config.seed}:{self.gen.config.seed}:{key[0]}:{key[1]}".encode())
        return str(uuid.UUID(bytes=digest.digest(), version=4))

    def _schedule(self, now: float) -> None:
        """Queue every event that occurred in (cursor, now], each with its fate drawn from its own id."""
        with self._lock:
            if self._cursor is None or now <= self._cursor or self._timeline is None:
                return
            lo, hi = bisect_right(self._times, self._cursor), bisect_right(self._times, now)
            self._cursor = now
            cfg = self.config
            for occurred, kind, ident in self._timeline[lo:hi]:
                key = (kind, ident)
                eid = self._event_id(key)
                self.generated[eid] = key
                rng = random.Random(eid)
                if rng.random() < cfg.lost_share:
                    self.lost.add(eid)
                    continue
                due = occurred
                if rng.random() < cfg.late_share:
                    due += rng.uniform(cfg.late_min_seconds, cfg.late_max_seconds)
                    self.late.add(eid)
                if rng.random() < cfg.reorder_share:
                    due += rng.uniform(0.0, cfg.reorder_max_seconds)
                self.due[eid] = due
                self._push(_Delivery(due, 0.0, 0, key, eid))
                if rng.random() < cfg.duplicate_share:
                    self._push(_Delivery(due + rng.uniform(0.0, cfg.duplicate_max_seconds), 0.0, 0, key, eid,
                                         copy=1))
                    self.counts["duplicates_sent"] += 1
            self._lock.notify_all()

    def _push(self, d: _Delivery) -> None:
        self._seq += 1
        d.seq = self._seq
        heapq.heappush(self._heap, d)

    def _schedule_loop(self) -> None:
        while not self._stop.is_set():
            self._schedule(self.clock.now())
            self._stop.wait(self.config.poll_seconds)

    # ------------------------------------------------------------------ sending
    def _next(self) -> _Delivery | None:
        with self._lock:
            while not self._stop.is_set():
                now, wall = self.clock.now(), time.monotonic()
                ready = [d for d in self._heap if d.due <= now and d.not_before <= wall]
                if ready:
                    d = min(ready, key=lambda x: (x.not_before, x.due, x.seq))
                    self._heap.remove(d)
                    heapq.heapify(self._heap)
                    self._in_flight += 1
                    return d
                self._lock.wait(self.config.poll_seconds)
        return None

    def _send_loop(self) -> None:
        while True:
            d = self._next()
            if d is None:
                return
            try:
                status = self._post(self.body(d.key, d.event_id))
            except (OSError, http.client.HTTPException):
                status = None
            with self._lock:
                self._in_flight -= 1
                self.counts["attempts"] += 1
                cfg = self.config
                if status is not None and 200 <= status < 300:
                    self.delivered[d.event_id] = self.delivered.get(d.event_id, 0) + 1
                elif status in cfg.non_retriable or (cfg.max_attempts and d.attempt + 1 >= cfg.max_attempts):
                    self.failed[d.event_id] = status or 0
                    self.counts["non_2xx" if status else "errors"] += 1
                else:
                    self.counts["non_2xx" if status else "errors"] += 1
                    self.counts["retries"] += 1
                    d.attempt += 1
                    d.not_before = time.monotonic() + min(cfg.retry_max_backoff,
                                                          cfg.retry_backoff * 2 ** (d.attempt - 1))
                    self._push(d)
                self._lock.notify_all()

    def _post(self, body: bytes) -> int:
        cfg = self.config
        conn = getattr(self._local, "conn", None)
        parts = urlsplit(cfg.url)
        if conn is not None and self._local.generation != self._generation:
            conn.close()
            conn = None
        if conn is None:
            cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
            conn = cls(parts.hostname, parts.port, timeout=cfg.timeout)
            self._local.conn, self._local.generation = conn, self._generation
        headers = {"Content-Type": "application/json", cfg.header: cfg.secret}
        try:
            conn.request("POST", parts.path or "/", body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            if resp.getheader("Connection", "").lower() == "close":
                conn.close()
            return resp.status
        except BaseException:
            conn.close()
            self._local.conn = None
            raise

    # ------------------------------------------------------------------ the events themselves
    def body(self, key: tuple, event_id: str) -> bytes:
        kind, ident = key
        if kind == TRANSFER:
            name, occurred, data = self.config.transfer_event, *self._transfer_data(ident)
        else:
            name, occurred, data = "customerAdded", *self._customer_data(ident)
        return orjson.dumps(self.envelope(name, event_id, occurred, data))

    def envelope(self, name: str, event_id: str, occurred: float, data: dict) -> dict:
        cfg = self.config
        created = int(occurred * 1000)
        ref = f"{cfg.org_id}_{hashlib.md5(event_id.encode()).hexdigest()[:10]}"
        request_id = hashlib.md5(f"req:{event_id}".encode()).hexdigest()
        shape = cfg.envelope
        if shape == "mixed":
            shape = "flat" if int(event_id[:2], 16) % 2 else "attributes"
        if shape == "flat":  # "Event schema (Payload)", first sample
            return {"eventName": name, "eventId": event_id, "orgId": cfg.org_id, "refId": ref,
                    "apiRequestId": request_id, "createdAt": created, "data": data, "loyaltyEventId": None}
        return {"eventId": event_id, "eventType": f"{cfg.org_id}_{name}", "consumerGroupId": None,
                "actionType": "START", "timeStamp": created + 13,
                "attributes": {"createdAt": created, "data": data, "eventName": name, "refId": ref,
                               "apiRequestId": request_id}}

    def _identifiers(self, index: int) -> dict:
        ids = self.gen.capillary_identifiers(index)
        return {"customerId": CAPILLARY_USER_BASE + index,
                "instore": {"mobile": ids["mobile"], "email": ids["email"], "externalId": ids["externalId"]}}

    def _party(self, party: tuple[str, int]) -> dict:
        kind, ident = party
        if kind == "CUSTOMER":
            return {"entityType": "CUSTOMER", "customerIdentifiers": self._identifiers(ident)}
        if kind == "OUTSIDE":
            return {"entityType": "CUSTOMER",
                    "customerIdentifiers": {"customerId": ident, "instore": {"externalId": f"EXT-OUT-{ident}"}}}
        return {"entityType": "USERGROUP2", "userGroupId": ident}

    def _transfer_data(self, transfer_id: int) -> tuple[float, dict]:
        group = (transfer_id - TRANSFER_ID_BASE) // (TRANSFERS_PER_GROUP_MAX + 1)
        t = next(t for t in self.gen.transfers_of_group(group) if t["transfer_id"] == transfer_id)
        sender, receiver = self._party(t["from"]), self._party(t["to"])
        data = {"transferId": transfer_id, "pointsTransferred": t["points"], "programName": PROGRAM_NAME,
                "notes": t["notes"], "transferredAt": int(t["ts"] * 1000),
                "transferredFrom": sender, "transferredTo": receiver}
        if "customerIdentifiers" in sender:  # the event's own customer: the sending one, as the API's actor
            data["customerIdentifiers"] = sender["customerIdentifiers"]
        return float(t["ts"]), data

    def _customer_data(self, index: int) -> tuple[float, dict]:
        occurred = self._registered[index]
        user = self.gen.capillary_user(index)
        data = {"loyaltyType": "LOYALTY", "source": "INSTORE", "firstName": user["firstName"],
                "lastName": user["lastName"], "enteredAt": int(occurred * 1000),
                "customerIdentifiers": self._identifiers(index)}
        return occurred, data

    # ------------------------------------------------------------------ ground truth for tests
    def customers_named(self, event_ids: set[str] | None = None) -> set[int]:
        """Capillary userIds of the listed customers named by the given (default: all generated) events."""
        out: set[int] = set()
        with self._lock:
            keys = [self.generated[e] for e in (event_ids if event_ids is not None else self.generated)]
        for kind, ident in keys:
            if kind == CUSTOMER:
                out.add(CAPILLARY_USER_BASE + ident)
                continue
            _, data = self._transfer_data(ident)
            for side in ("transferredFrom", "transferredTo"):
                ids = data[side].get("customerIdentifiers")
                if ids and ids["customerId"] < CAPILLARY_USER_BASE + self.gen.config.customers:
                    out.add(ids["customerId"])
        return out
