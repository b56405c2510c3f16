"""CareCloud's cross-customer listings, derived from the same generator as `/point-history`.

- `GET /customers`: the roster. A customer appears when its account is created (`DataGenerator.joined_at`, moved by
  the sandbox clock), with `last_change` = its latest profile event (creation, profile edits, a state change) at or
  before "now" (`last_change_on_points` adds its visible point movements).
- `GET /points`: one point record (a lot) per earning in the history (`point_records_for`): `created_at` is the
  earning's time, `valid_to` the time its linked `Points expiration` record posts (each expiration expires the oldest
  earlier lot not yet expired) or, for a lot no expiration names, `date_of_points_expiration 23:59:59` from the
  earning's `extended_data`. A lot past `valid_to` shows per `expired_points`.
- `GET /purchases`: one purchase per purchase-linked record (`Purchase`/`Nákup` earnings and `Points redemption`),
  `payment_time` = the record's time.
- Corrections, vouchers and transfers leave nothing here.

A listed item becomes visible with its history record (`visible_from`), so a late record is late everywhere.
`trace` per history record says which listing names it (`point_record`, `purchase`, `expiry` or `none`): the ground
truth of what change discovery can see.
"""

from __future__ import annotations

import random
import threading
from array import array
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import orjson

from pipelines.sandbox.data import (
    _EPOCH, BONUS, EXPIRATION, FIRST_NAMES, LAST_NAMES, POINTS_ADDITION, PURCHASE, PURCHASE_CS, REDEMPTION, WELCOME,
    DataGenerator, _fmt, _hex, local_to_utc,
)

EARNINGS = (PURCHASE, PURCHASE_CS, POINTS_ADDITION, BONUS, WELCOME)
PURCHASE_EARNINGS = (PURCHASE, PURCHASE_CS)
PURCHASE_LINKED = (PURCHASE, PURCHASE_CS, REDEMPTION)

TRACE_POINT, TRACE_PURCHASE, TRACE_EXPIRY, TRACE_NONE = "point_record", "purchase", "expiry", "none"

POINT_FIELDS = ("point_id", "customer_id", "assigned_points", "available_points", "point_type_id", "partner_id",
                "valid_to", "state", "created_at", "note")
PURCHASE_FIELDS = ("purchase_id", "customer_id", "store_id", "external_purchase_id", "payment_time", "items_count",
                   "purchase_items", "type_id", "total_price", "currency_id", "card_number", "cashdesk_number",
                   "last_change", "property_records")
CUSTOMER_FIELDS = ("customer_id", "personal_information", "last_change", "state", "doi_email", "doi_phone")


def time_key(local: str) -> int:
    """`YYYY-MM-DD HH:MM:SS` (project local) as the integer YYYYMMDDHHMMSS: sorts like the string, 8 bytes."""
    return int(local[0:4] + local[5:7] + local[8:10] + local[11:13] + local[14:16] + local[17:19])


def _amount(value: object) -> float:
    try:
        return abs(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0


def _ext(text: object) -> dict:
    if not isinstance(text, str) or not text:
        return {}
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {}
    return obj if isinstance(obj, dict) else {}


@dataclass(slots=True)
class CustomerListing:
    """One customer's point records and purchases (the parts that do not depend on "now"), and the trace of each
    history record."""
    lots: list[dict] = field(default_factory=list)
    lot_keys: list[int] = field(default_factory=list)
    lot_visible: list[float] = field(default_factory=list)
    lot_expires: list[float | None] = field(default_factory=list)   # epoch of valid_to
    purchases: list[dict] = field(default_factory=list)
    purchase_keys: list[int] = field(default_factory=list)
    purchase_visible: list[float] = field(default_factory=list)
    traces: list[str] = field(default_factory=list)


class Listings:
    """The three listings over every customer the sandbox knows (not only the listed ones: the vendor lists all)."""

    def __init__(self, gen: DataGenerator) -> None:
        self.gen = gen
        self.config = gen.config
        self.zone: ZoneInfo = gen.zone
        self._lock = threading.Lock()
        self._cache: OrderedDict[int, CustomerListing] = OrderedDict()
        self._index: dict[str, tuple] = {}
        self._selections: OrderedDict[tuple, tuple[float, float, list]] = OrderedDict()
        self._roster: tuple | None = None
        self._roster_view: tuple | None = None
        seed = self.config.seed
        self.currency_id = _hex(f"currency:{seed}:CZK", 13)
        self.purchase_type_id = _hex(f"purchase-type:{seed}:sale", 13)
        self.redemption_type_id = _hex(f"purchase-type:{seed}:points", 13)
        self.item_type_id = _hex(f"purchase-item-type:{seed}:product", 13)
        self.customer_source_id = _hex(f"customer-source:{seed}:pos", 13)

    # ------------------------------------------------------------------ per customer
    def customer(self, index: int) -> CustomerListing:
        return self.gen._cached(self._cache, index, lambda: self._derive(index))

    def _derive(self, index: int) -> CustomerListing:
        gen, c = self.gen, self.config
        h = gen.carecloud(index)
        records = h.records
        out = CustomerListing(traces=[TRACE_NONE] * len(records))
        lot_types = EARNINGS if c.point_records_for == "earnings" else PURCHASE_EARNINGS
        cid = gen.carecloud_id(index)
        open_lots: list[int] = []       # lots not yet expired, oldest first
        for k, rec in enumerate(records):
            op, time = rec["point_operation_type"], h.times[k]
            ext = _ext(rec["extended_data"])
            if op in lot_types:
                expiry = ext.get("date_of_points_expiration")
                valid_to = f"{expiry} 23:59:59" if isinstance(expiry, str) and len(expiry) == 10 else None
                lot = {"point_id": _hex(f"point:{c.seed}:{index}:{k}", 8) + f"{index:010x}", "customer_id": cid,
                       "assigned_points": _amount(rec["point_amount"]), "available_points": 0.0,
                       "point_type_id": rec["point_type_id"], "partner_id": rec["partner_id"],
                       "valid_to": valid_to, "state": 1, "created_at": time, "note": rec["point_operation_note"]}
                out.lots.append(lot)
                out.lot_keys.append(time_key(time))
                out.lot_visible.append(h.visible[k])
                out.lot_expires.append(None)
                open_lots.append(len(out.lots) - 1)
                out.traces[k] = TRACE_POINT
            elif op == EXPIRATION and open_lots:
                # the oldest lot still open expires at this record's time (its visibility follows the record's)
                j = open_lots.pop(0)
                out.lots[j]["valid_to"] = time
                out.traces[k] = TRACE_EXPIRY
            if op in PURCHASE_LINKED:
                visible = h.visible[k]
                items = ext.get("purchase_items") if isinstance(ext.get("purchase_items"), list) else []
                value = ext.get("purchase_value")
                out.purchases.append({
                    "purchase_id": _hex(f"purchase:{c.seed}:{index}:{k}", 8) + f"{index:010x}",
                    "customer_id": cid, "store_id": rec["store_id"],
                    "external_purchase_id": str(ext.get("external_purchase_id")
                                                or _hex(f"ext-purchase:{c.seed}:{index}:{k}", 8).upper()),
                    "payment_time": time, "items_count": len(items),
                    "purchase_items": self._items(items, index, k),
                    "type_id": self.redemption_type_id if op == REDEMPTION else self.purchase_type_id,
                    "total_price": float(value) if isinstance(value, (int, float)) else 0.0,
                    "currency_id": self.currency_id, "card_number": f"{1000000000000 + index}",
                    "cashdesk_number": str(1 + index % 9),
                    # a purchase recorded late was last changed when it arrived
                    "last_change": time if visible <= h.instants[k] else gen.local(visible),
                    "property_records": [],
                })
                out.purchase_keys.append(time_key(time))
                out.purchase_visible.append(visible)
                if out.traces[k] == TRACE_NONE:
                    out.traces[k] = TRACE_PURCHASE
        for j, lot in enumerate(out.lots):
            if lot["valid_to"] is not None:
                at = local_to_utc(lot["valid_to"], self.zone)
                out.lot_expires[j] = at.timestamp() if at is not None else None
        return out

    def _items(self, items: list, index: int, k: int) -> list[dict]:
        out = []
        for n, it in enumerate(items):
            if not isinstance(it, dict):
                continue
            qty = it.get("quantity") if isinstance(it.get("quantity"), (int, float)) else 1
            price = it.get("unit_price") if isinstance(it.get("unit_price"), (int, float)) else 0.0
            out.append({"purchase_item_id": _hex(f"item:{self.config.seed}:{index}:{k}:{n}", 13),
                        "product_id": _hex(f"product:{it.get('sku')}", 13), "product_name": str(it.get("name", "")),
                        "external_id": str(it.get("sku", "")), "purchase_item_type_id": self.item_type_id,
                        "price": round(float(price) * qty, 2), "amount": float(qty), "vat_rate": 21.0})
        return out

    def lot_as_sent(self, lot: dict, expires: float | None, now: float) -> dict:
        out = dict(lot)
        expired = expires is not None and expires <= now
        mode = self.config.expired_points
        out["available_points"] = 0.0 if expired and mode != "unchanged" else lot["assigned_points"]
        out["state"] = 2 if expired and mode == "inactive" else 1
        if out["valid_to"] is None and self.config.missing_valid_to == "omit":
            del out["valid_to"]
        return out

    def purchase_as_sent(self, purchase: dict, items: bool) -> dict:
        return purchase if items else {**purchase, "purchase_items": []}

    def stored(self, kind: str, index: int, pos: int) -> dict:
        cl = self.customer(index)
        return cl.lots[pos] if kind == "points" else cl.purchases[pos]

    def as_sent(self, kind: str, index: int, pos: int, now: float, items: bool = False) -> dict:
        """A point record or purchase as the API sends it at `now` (`items`: with purchase_items)."""
        cl = self.customer(index)
        if kind == "points":
            return self.lot_as_sent(cl.lots[pos], cl.lot_expires[pos], now)
        return self.purchase_as_sent(cl.purchases[pos], items)

    # ------------------------------------------------------------------ cross-customer index
    def positions(self, index: int) -> tuple[list[int], list[float], list[int], list[float]]:
        """(lot time keys, lot visible_from, purchase time keys, purchase visible_from) of one customer, in position
        order: what `_derive` lists, read off the history's operation types alone. The cross-customer index needs
        only these, and skipping `_derive`'s dicts, ids and item lists for every customer roughly halves its build."""
        h = self.gen.carecloud(index)
        if not len(h):
            return [], [], [], []
        lot_types = EARNINGS if self.config.point_records_for == "earnings" else PURCHASE_EARNINGS
        lot_keys, lot_vis, pur_keys, pur_vis = [], [], [], []
        for k, rec in enumerate(h.records):
            op = rec["point_operation_type"]
            if op in lot_types:
                lot_keys.append(time_key(h.times[k]))
                lot_vis.append(h.visible[k])
            if op in PURCHASE_LINKED:
                pur_keys.append(time_key(h.times[k]))
                pur_vis.append(h.visible[k])
        return lot_keys, lot_vis, pur_keys, pur_vis

    def index(self, kind: str) -> tuple[array, array, array, array]:
        """(time keys, visible_from, customer index, position) of every point record or purchase, in time order
        (ties by customer, then position). Built on first use over all customers, both kinds in one pass (the
        generator's cost; each customer's history is generated once for both)."""
        with self._lock:
            built = self._index.get(kind)
        if built is not None:
            return built
        rows: dict[str, list] = {"points": [], "purchases": []}
        for i in range(self.config.customers):
            lot_keys, lot_vis, pur_keys, pur_vis = self.positions(i)
            rows["points"].extend((key, i, j, lot_vis[j]) for j, key in enumerate(lot_keys))
            rows["purchases"].extend((key, i, j, pur_vis[j]) for j, key in enumerate(pur_keys))
        for name, part in rows.items():
            part.sort()
            done = (array("q", [r[0] for r in part]), array("d", [r[3] for r in part]),
                    array("l", [r[1] for r in part]), array("l", [r[2] for r in part]))
            with self._lock:
                self._index.setdefault(name, done)
        with self._lock:
            return self._index[kind]

    def select(self, kind: str, lo_key: int | None, hi_key: int | None, now: float,
               customer: int | None) -> list[tuple[int, int]]:
        """(customer index, position) of the visible items with lo_key <= key <= hi_key (bounds already adjusted
        for inclusiveness), in time order. Cached until "now" crosses the next visibility change in the range."""
        fi, ti = lo_key if lo_key is not None else -1, hi_key if hi_key is not None else 10**15
        if customer is not None:
            cl = self.customer(customer)
            keys, vis = (cl.lot_keys, cl.lot_visible) if kind == "points" else (cl.purchase_keys, cl.purchase_visible)
            return [(customer, j) for j, key in enumerate(keys) if fi <= key <= ti and vis[j] <= now]
        cache_key = (kind, fi, ti)
        with self._lock:
            hit = self._selections.get(cache_key)
            if hit is not None and hit[0] <= now < hit[1]:
                self._selections.move_to_end(cache_key)
                return hit[2]
        keys, vis, cust, pos = self.index(kind)
        lo, hi = bisect_left(keys, fi), bisect_right(keys, ti)
        sel, valid_from, valid_until = [], float("-inf"), float("inf")
        for p in range(lo, hi):
            v = vis[p]
            if v <= now:
                sel.append((cust[p], pos[p]))
                if v > valid_from:
                    valid_from = v
            elif v < valid_until:
                valid_until = v
        with self._lock:
            self._selections[cache_key] = (valid_from, valid_until, sel)
            if len(self._selections) > 64:
                self._selections.popitem(last=False)
        return sel

    def param_key(self, text: str) -> int:
        """A normalised `YYYY-MM-DD HH:MM:SS` filter value as a local time key (`listing_filter_zone`)."""
        if self.config.listing_filter_zone == "utc":
            naive = datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
            text = _fmt(naive.astimezone(self.zone))
        return time_key(text)

    # ------------------------------------------------------------------ roster
    def _roster_base(self) -> tuple:
        """Per customer: creation instant, profile edit instants, final state and when it was set. Pure hashes, no
        history generated (a million customers in seconds); cached."""
        if self._roster is not None:
            return self._roster
        gen, c = self.gen, self.config
        joins = array("d")
        edits: list[tuple[float, ...]] = []
        final_state = array("b")
        for i in range(c.customers):
            join = gen.joined_at(i)
            joins.append(join)
            rng = random.Random(f"profile:{c.seed}:{i}")
            first = max(join, gen.start_ts)
            n = int(rng.random() * (2 * c.profile_changes + 1)) if c.profile_changes > 0 else 0
            edits.append(tuple(sorted(int(first + rng.random() * (gen.end_ts - first)) for _ in range(n))))
            roll = rng.random()
            final_state.append(0 if n and roll < c.deleted_share
                               else 2 if n and roll < c.deleted_share + c.inactive_share else 1)
        self._roster = (joins, edits, final_state)
        return self._roster

    def roster_view(self, now: float) -> tuple[list[int], dict[int, float], dict[int, int]]:
        """(customer indices in creation order, last_change epoch by index, state by index) at `now`. Cached until
        the next profile event (or point movement with `last_change_on_points`)."""
        view = self._roster_view
        if view is not None and view[0] <= now < view[1]:
            return view[2], view[3], view[4]
        joins, edits, final_state = self._roster_base()
        c = self.config
        members, last, states = [], {}, {}
        valid_from, valid_until = float("-inf"), float("inf")
        for i in range(c.customers):
            join = joins[i]
            if join > now:
                valid_until = min(valid_until, join)
                continue
            lc, n_done = join, 0
            for e in edits[i]:
                if e <= now:
                    lc, n_done = e, n_done + 1
                else:
                    valid_until = min(valid_until, e)
                    break
            state = final_state[i] if edits[i] and n_done == len(edits[i]) else 1
            if c.last_change_on_points:
                h = self.gen.carecloud(i)
                seen = [v for v in h.visible if v <= now]
                later = [v for v in h.visible if v > now]
                if seen:
                    lc = max(lc, max(seen))
                if later:
                    valid_until = min(valid_until, min(later))
            if state == 0 and not c.list_deleted_customers:
                continue
            valid_from = max(valid_from, lc)
            members.append(i)
            last[i] = lc
            states[i] = state
        members.sort(key=lambda i: (joins[i], i))
        self._roster_view = (valid_from, valid_until, members, last, states)
        return members, last, states

    def local_key(self, epoch: float) -> int:
        """Project-local wall time of an instant as seconds since 1970 read naively (sorts like the local string)."""
        gen = self.gen
        return int(epoch + gen.offsets[bisect_right(gen.transitions, epoch)])

    def local_text(self, epoch: float) -> str:
        return _fmt(_EPOCH + timedelta(seconds=self.local_key(epoch)))

    def person(self, index: int) -> dict:
        rng = random.Random(f"person:{self.config.seed}:{index}")
        first, last = FIRST_NAMES[int(rng.random() * len(FIRST_NAMES))], LAST_NAMES[int(rng.random() * len(LAST_NAMES))]
        birth = datetime(1950, 1, 1) + timedelta(days=int(rng.random() * 365 * 55))
        return {"first_name": first, "last_name": last, "gender": 1 + int(rng.random() * 2),
                "birthdate": birth.strftime("%Y-%m-%d"), "email": f"member{index:08d}@sandbox.example",
                "phone": f"4207{index:08d}", "language_id": "cs",
                "store_id": self.gen.stores[int(rng.random() * len(self.gen.stores))]}

    def customer_as_sent(self, index: int, last_change: float, state: int) -> dict:
        return {"customer_id": self.gen.carecloud_id(index), "personal_information": self.person(index),
                "last_change": self.local_text(last_change), "state": state}
