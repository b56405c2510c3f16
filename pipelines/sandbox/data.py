"""Deterministic test data for both vendor APIs, generated per customer on demand.

Everything is a pure function of (seed, customer index, SandboxConfig sizes), so a sandbox of a million customers
starts instantly and two processes with the same seed serve byte-identical data. Customer IDs encode their index,
so looking a customer up needs no table. The clock never changes the data; it only decides what is visible.
"""

from __future__ import annotations

import hashlib
import random
import threading
from bisect import bisect_right
from array import array
from collections import OrderedDict
from datetime import date, datetime, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo

import orjson

from pipelines.sandbox import variety
from pipelines.sandbox.config import SandboxConfig

def _hex(text: str, nbytes: int) -> str:
    return hashlib.blake2b(text.encode(), digest_size=nbytes).hexdigest()


def _pick(rng: random.Random, seq):
    # rng.choice/randint go through randrange (docs/decisions/design-figures.md); this is the generator's hot loop
    return seq[int(rng.random() * len(seq))]


def _randint(rng: random.Random, lo: int, hi: int) -> int:
    return lo + int(rng.random() * (hi - lo + 1))


# Operation type names exactly as the CareCloud tenant shows them; the dbt seed maps these strings.
PURCHASE = "Purchase"
PURCHASE_CS = "Nákup"
POINTS_ADDITION = "Points addition"
BONUS = "Bonus points"
WELCOME = "Welcome bonus"
VOUCHER = "Voucher purchase"
REDEMPTION = "Points redemption"
EXPIRATION = "Points expiration"
MANUAL = "Manual correction"
TRANSFER = "Points transfer"
OPERATION_TYPES = [PURCHASE, PURCHASE_CS, POINTS_ADDITION, BONUS, WELCOME, VOUCHER, REDEMPTION, EXPIRATION,
                   MANUAL, TRANSFER]
# Sign in `signed` mode: +1 earn, -1 spend, 0 either sign.
OPERATION_SIGN = {PURCHASE: 1, PURCHASE_CS: 1, POINTS_ADDITION: 1, BONUS: 1, WELCOME: 1, VOUCHER: -1,
                  REDEMPTION: -1, EXPIRATION: -1, MANUAL: 0, TRANSFER: 0}
_TYPE_WEIGHTS = [(PURCHASE, 38), (PURCHASE_CS, 12), (POINTS_ADDITION, 8), (BONUS, 7), (VOUCHER, 5),
                 (REDEMPTION, 12), (EXPIRATION, 6), (MANUAL, 6), (TRANSFER, 6)]
_TYPES, _WEIGHTS = zip(*_TYPE_WEIGHTS)
_CUM_WEIGHTS = [sum(_WEIGHTS[: k + 1]) for k in range(len(_WEIGHTS))]

CARECLOUD_FIELDS = ["customer_id", "point_amount", "point_operation_type", "point_operation_note", "point_type_id",
                    "partner_id", "store_id", "point_history_record_time", "extended_data"]
EXTRA_FIELDS = {"record_source": "pos", "loyalty_tier": "gold"}

_NOTES = {
    PURCHASE: ["Nákup v prodejně", "Online objednávka", "Body za nákup", "Purchase at store", "",
               "Žluťoučký kůň úpěl ďábelské ódy"],
    POINTS_ADDITION: ["Manual rewards points for the product purchase collection", "Body za recenzi", "Dotazník"],
    BONUS: ["Vánoční akce 🎄", "Double points weekend", "Narozeninový bonus 🎂", "Bonus za věrnost"],
    WELCOME: ["Bonus za registraci", "Welcome to the club"],
    VOUCHER: ["Voucher 200 Kč", "Free one day", "Sleva 10 %"],
    REDEMPTION: ["Uplatnění bodů", "Platba body", "Points used at checkout"],
    EXPIRATION: ["Expirace bodů", "Points expired"],
    MANUAL: ["Ruční oprava – reklamace", "Correction by support", "", "Storno nákupu č. 48/2025"],
    TRANSFER: ["Převod bodů 🎁", "Transfer to family member", ""],
}
_NOTES[PURCHASE_CS] = _NOTES[PURCHASE]
_ITEMS = [("Káva latte", 79.0), ("Croissant máslový", 39.9), ("Čaj zelený", 55.0), ("Voda 0,5 l", 24.9),
          ("Chléb žitný", 42.5), ("Sýr eidam 30 %", 89.9), ("Dárková karta", 500.0), ("Jablka 🍎", 34.9),
          ("Šampon", 129.0), ("Zubní pasta", 64.5), ("Tričko", 399.0), ("Ponožky 3×", 199.0)]
_ITEMS = [(name, price, f"SKU-{_hex(name, 3).upper()}") for name, price in _ITEMS]
_REASONS = ["complaint", "reklamace – vrácení zboží", "migration fix", "goodwill 🙏"]
FIRST_NAMES = ["Jana", "Petr", "Žofie", "Łukasz", "Ørjan", "李", "Zoë", "", "Jiří", "Anna", "Müller", "O'Brien"]
LAST_NAMES = ["Nováková", "Dvořák", "Šťastný", "", "García", "Ünal", "王", "Smith", "Černá", "Křížek"]
GROUP_NAMES = ["Rodina Nováků", "Family 🏠", "Fleet Praha", "Skupina č. 7"]
TRANSFER_NOTES = ["", "", "gift", "Převod bodů 🎁", "family pool", "dárek k narozeninám"]
PROGRAM_NAME = "SandboxDefaultProgram"

CAPILLARY_USER_BASE = 564_000_000     # Capillary userId = base + customer index
OUTSIDE_USER_BASE = 990_000_000       # customers that exist at Capillary but are not in the customer list
GROUP_BASE = 7_000_000                # USERGROUP2 entity ids
TRANSFER_ID_BASE = 1_000_000
TRANSFERS_PER_GROUP_MAX = 511
IDENTIFIER_NAMES = ("mobile", "email", "externalId", "id")


_EPOCH = datetime(1970, 1, 1)


def _fmt(dt: datetime) -> str:
    return dt.isoformat(" ", "seconds")[:19]



def local_to_utc(text: str, zone: ZoneInfo) -> datetime | None:
    """The documented convention for a project-local time string: in the repeated autumn hour take the EARLIER
    instant (fold=0). Returns None for an unparseable string."""
    if not isinstance(text, str):
        return None
    try:
        naive = datetime.strptime(text.replace("T", " "), "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None
    return naive.replace(tzinfo=zone, fold=0).astimezone(timezone.utc)


class CareCloudHistory:
    """One customer's records, sorted by (local time string, generation order) so paging is stable.

    Held as one encoded blob plus offsets (~0.6 KB per record) rather than dicts plus per-record bytes (~6 KB:
    orjson over-allocates each small output), so a benchmark's 20,000 customers stay cached in a few hundred MB;
    a page of consecutive records is a single slice of the blob."""

    __slots__ = ("times", "visible", "instants", "anomalies", "blob", "starts", "ends", "_view")

    def __init__(self, times: list[str], visible: list[float], instants: list[float], records: list[dict],
                 anomalies: list[str]) -> None:
        self.times = times            # internal local time (filters/sort use it even when the sent value is broken)
        self.visible = visible        # epoch seconds when each record appears in the API
        self.instants = array("d", instants)  # epoch seconds of the real event
        self.anomalies = anomalies    # "" or a comma list: invalid_json, type_drift, bad_time, huge_note, ...
        encoded = [orjson.dumps(r) for r in records]
        self.blob = b",".join(encoded)
        self.starts, self.ends = array("q"), array("q")
        pos = 0
        for e in encoded:
            self.starts.append(pos)
            pos += len(e)
            self.ends.append(pos)
            pos += 1
        self._view: tuple | None = None  # (valid from, valid until, visible indices, their times)

    def __len__(self) -> int:
        return len(self.times)

    @property
    def records(self) -> list[dict]:
        """The records exactly as sent (decoded on demand: filters, sorts on other fields, the truth)."""
        return orjson.loads(b"[" + self.blob + b"]") if self.blob else []

    def page_json(self, indices: list[int]) -> bytes:
        """The records at `indices`, comma-joined, ready to sit between `[` and `]`."""
        if not indices:
            return b""
        first, last = indices[0], indices[-1]
        if last - first + 1 == len(indices):  # consecutive and ascending: one slice
            return self.blob[self.starts[first]:self.ends[last]]
        starts, ends, blob = self.starts, self.ends, self.blob
        return b",".join([blob[starts[j]:ends[j]] for j in indices])

    def visible_at(self, now: float) -> tuple[list[int], list[str]]:
        """Indices (in time order) of the records visible at `now`, and their times for bisecting time bounds.
        Cached until `now` crosses the next visibility change, so paging a heavy customer is not O(n) per page
        (the frozen test clock and the slowly moving wall clock both hit the cache)."""
        view = self._view
        if view is not None and view[0] <= now < view[1]:
            return view[2], view[3]
        idx = [j for j, v in enumerate(self.visible) if v <= now]
        later = [v for v in self.visible if v > now]
        valid_from = max((self.visible[j] for j in idx), default=float("-inf"))
        self._view = (valid_from, min(later, default=float("inf")), idx, [self.times[j] for j in idx])
        return self._view[2], self._view[3]


class DataGenerator:
    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.zone = ZoneInfo(config.timezone)
        self.cap_zone = ZoneInfo(config.capillary_timezone)
        self.start_ts = datetime.fromisoformat(config.data_start).replace(tzinfo=self.zone).timestamp()
        self.end_ts = datetime.fromisoformat(config.data_end).replace(tzinfo=self.zone).timestamp()
        seed = config.seed
        self.stores = [_hex(f"store:{seed}:{n}", 13) for n in range(max(1, config.stores))]
        self.partners = [_hex(f"partner:{seed}:{n}", 13) for n in range(max(1, config.partners))]
        self.point_types = [_hex(f"point-type:{seed}:{n}", 13) for n in range(3)]
        self.transitions = self._dst_transitions()
        # UTC offset (seconds) before the first transition and after each one
        self.offsets = [datetime.fromtimestamp(t, self.zone).utcoffset().total_seconds()
                        for t in [self.start_ts] + self.transitions]
        self._lock = threading.Lock()
        self._cc_cache: OrderedDict[int, CareCloudHistory] = OrderedDict()
        self._cap_cache: OrderedDict[int, list[dict]] = OrderedDict()
        self._view_cache: OrderedDict[tuple[int, bool], list[tuple[float, dict]]] = OrderedDict()
        self._cache_size = max(16, config.cache_customers)

    # ------------------------------------------------------------------ identities
    def carecloud_id(self, index: int) -> str:
        # 16 hex of hash + 10 hex of the index = the vendor's 26-character id shape
        return _hex(f"cust:{self.config.seed}:{index}", 8) + f"{index:010x}"

    def carecloud_index(self, customer_id: str) -> int | None:
        if not isinstance(customer_id, str) or len(customer_id) != 26:
            return None
        try:
            index = int(customer_id[16:], 16)
        except ValueError:
            return None
        if index >= self.config.customers or self.carecloud_id(index) != customer_id:
            return None
        return index

    def capillary_identifiers(self, index: int) -> dict[str, str]:
        return {
            "id": str(CAPILLARY_USER_BASE + index),
            "mobile": f"4207{index:08d}",
            "email": f"member{index:08d}@sandbox.example",
            "externalId": f"EXT-{self.config.seed}-{index:08d}",
        }

    def capillary_index(self, name: str, value: str) -> int | None:
        try:
            if name == "id":
                index = int(value) - CAPILLARY_USER_BASE
            elif name == "mobile":
                index = int(value[4:]) if value.startswith("4207") and len(value) == 12 else -1
            elif name == "email":
                index = (int(value[6:14]) if value.startswith("member") and value.endswith("@sandbox.example")
                         and len(value) == 30 else -1)
            elif name == "externalId":
                prefix = f"EXT-{self.config.seed}-"
                index = int(value[len(prefix):]) if value.startswith(prefix) else -1
            else:
                return None
        except (ValueError, TypeError):
            return None
        if not 0 <= index < self.config.customers:
            return None
        return index if self.capillary_identifiers(index)[name] == value else None

    def capillary_user(self, index: int) -> dict:
        rng = random.Random(f"capuser:{self.config.seed}:{index}")
        return {"userId": CAPILLARY_USER_BASE + index, "firstName": _pick(rng, FIRST_NAMES),
                "lastName": _pick(rng, LAST_NAMES), "externalId": self.capillary_identifiers(index)["externalId"]}

    # ------------------------------------------------------------------ time helpers
    def _dst_transitions(self) -> list[float]:
        """UTC instants where the project zone's offset changes inside the data span."""
        out = []
        t = int(self.start_ts)
        prev = datetime.fromtimestamp(t, self.zone).utcoffset()
        while t < self.end_ts:
            t += 3600
            off = datetime.fromtimestamp(t, self.zone).utcoffset()
            if off != prev:
                # refine to the exact second the offset changed
                lo, hi = t - 3600, t
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    if datetime.fromtimestamp(mid, self.zone).utcoffset() == prev:
                        lo = mid
                    else:
                        hi = mid
                out.append(float(hi))
                prev = off
        return out

    def local(self, ts: float) -> str:
        return _fmt(datetime.fromtimestamp(ts, self.zone))

    def joined_at(self, index: int) -> float:
        """Epoch seconds the customer account was created. `joining_share` of the customers join inside the data
        span (uniformly), the others were members before it starts. Customers that carry a guaranteed awkward case
        (DST records, forced duplicate, heavy) are never joiners, so those cases stay in every sandbox."""
        c = self.config
        d = hashlib.blake2b(f"join:{c.seed}:{index}".encode(), digest_size=8).digest()
        u1, u2 = int.from_bytes(d[:4], "big") / 2**32, int.from_bytes(d[4:], "big") / 2**32
        awkward = ((c.dst_every and index % c.dst_every == 2) or index % 11 == 4
                   or (c.heavy_every and index % c.heavy_every == 7))
        if u1 < c.joining_share and not awkward:
            return float(int(self.start_ts + u2 * (self.end_ts - self.start_ts)))
        return float(int(self.start_ts - 86400 - u2 * 8 * 365 * 86400))

    # ------------------------------------------------------------------ CareCloud
    def _cached(self, cache: OrderedDict, key: object, make):
        """LRU lookup; generation runs outside the lock (two threads may both generate: same result)."""
        with self._lock:
            hit = cache.get(key)
            if hit is not None:
                cache.move_to_end(key)
                return hit
        value = make()
        with self._lock:
            cache[key] = value
            if len(cache) > self._cache_size:
                cache.popitem(last=False)
        return value

    def carecloud(self, index: int) -> CareCloudHistory:
        return self._cached(self._cc_cache, index, lambda: self._generate_carecloud(index))

    def record_count(self, index: int, rng: random.Random) -> int:
        c = self.config
        if c.empty_every and index % c.empty_every == 5:
            return 0
        if c.heavy_every and index % c.heavy_every == 7:
            return c.heavy_records
        mean = c.records_per_customer
        if mean <= 0:
            return 0
        # uniform on [1, 2*mean-1] keeps the mean exact for integer means and never makes accidental empties
        hi = max(1, int(round(2 * mean - 1)))
        return _randint(rng, 1, hi)

    def _generate_carecloud(self, index: int) -> CareCloudHistory:
        c = self.config
        seed = c.seed
        rng = random.Random(f"cc:{seed}:{index}")
        cid = self.carecloud_id(index)
        n = self.record_count(index, rng)
        if n == 0:
            return CareCloudHistory([], [], [], [], [])
        # a customer who joins inside the data span has records only from the join on (the roster shows the join)
        first = max(self.start_ts, self.joined_at(index))
        span = self.end_ts - first
        instants = [first + rng.random() * span for _ in range(n)]
        # awkward cases guaranteed on a fixed share of customers so even a 30-customer sandbox has them
        if c.dst_every and index % c.dst_every == 2 and self.transitions:
            for _ in range(_randint(rng, 2, 4)):
                t = _pick(rng, self.transitions)
                instants.append(t + rng.uniform(-5400, 5400))
        instants = sorted(int(t) for t in instants)
        home_store = int(rng.random() * len(self.stores))
        home_partner = int(rng.random() * len(self.partners))
        # its own stream, so switching variety on changes extended_data and nothing else
        vary_rng = random.Random(f"ccvar:{seed}:{index}") if c.extended_data_variety else None

        raw: list[tuple[str, int, float, dict, str]] = []
        for k, ts in enumerate(instants):
            op = (WELCOME if k == 0 and rng.random() < 0.6
                  else _TYPES[bisect_right(_CUM_WEIGHTS, rng.random() * _CUM_WEIGHTS[-1])])
            # naive local time via the zone's offsets between transitions: an aware datetime's
            # isoformat/date go through zoneinfo on every call, the generator's biggest single cost
            local_dt = _EPOCH + timedelta(seconds=ts + self.offsets[bisect_right(self.transitions, ts)])
            amount, ext = self._amount_and_ext(rng, op, ts, local_dt.date())
            anomalies = []
            if ext and rng.random() < 0.002:
                ext = ext[: max(1, len(ext) // 2)]  # a rare invalid JSON string, as seen in real exports
                anomalies.append("invalid_json")
            elif vary_rng is not None and vary_rng.random() < c.extended_data_variety:
                ext, kind = variety.vary(vary_rng, ext)
                anomalies.append(kind)
            store = home_store if rng.random() < 0.7 else int(rng.random() * len(self.stores))
            partner = home_partner if rng.random() < 0.8 else int(rng.random() * len(self.partners))
            rec = {
                "customer_id": cid,
                "point_amount": amount,
                "point_operation_type": op,
                "point_operation_note": _pick(rng, _NOTES[op]),
                "point_type_id": self.point_types[0 if rng.random() < 0.85 else int(rng.random() * 3)],
                "partner_id": self.partners[partner],
                "store_id": self.stores[store],
                "point_history_record_time": _fmt(local_dt),
                "extended_data": ext,
            }
            visible = float(ts)
            if rng.random() < c.late_share:
                visible += rng.uniform(600, c.late_max_seconds)
                anomalies.append("late")
            if c.type_drift and rng.random() < 0.05:
                rec["point_amount"] = str(rec["point_amount"])
                anomalies.append("type_drift")
            if c.huge_notes and rng.random() < 0.01:
                rec["point_operation_note"] = ("Dlouhá poznámka – " * 6000)[:100_000]
                anomalies.append("huge_note")
            internal_time = rec["point_history_record_time"]
            if c.bad_times and rng.random() < 0.01:
                rec["point_history_record_time"] = _pick(rng, [None, "0000-00-00 00:00:00", "2025-13-45 25:61:00",
                                                               "not a time"])
                anomalies.append("bad_time")
            if c.extra_fields:
                rec.update(EXTRA_FIELDS)
                rec["record_source"] = _pick(rng, ["pos", "eshop", "app"])
            raw.append((internal_time, ts, visible, rec, ",".join(anomalies)))
            dup = (index % 11 == 4 and k == 0) or rng.random() < c.duplicate_share
            if dup:  # two identical purchases in the same second are two real records
                raw.append((internal_time, ts, visible, dict(rec), ",".join(anomalies + ["duplicate"])))
        # stable order: local time string, then generation order (ties between identical records are harmless)
        order = sorted(range(len(raw)), key=lambda j: (raw[j][0], j))
        raw = [raw[j] for j in order]
        return CareCloudHistory(
            times=[r[0] for r in raw],
            instants=[float(r[1]) for r in raw],
            visible=[r[2] for r in raw],
            records=[r[3] for r in raw],
            anomalies=[r[4] for r in raw],
        )

    def _amount_and_ext(self, rng: random.Random, op: str, ts: float, day: date) -> tuple[float | int, str | None]:
        signed = self.config.point_amount_sign == "signed"

        def expiry() -> str | None:
            return None if rng.random() < 0.3 else (day + timedelta(days=365)).isoformat()

        ext: object
        if op in (PURCHASE, PURCHASE_CS):
            items = []
            for _ in range(_randint(rng, 1, 5)):
                name, price, sku = _pick(rng, _ITEMS)
                items.append({"sku": sku, "name": name, "quantity": _randint(rng, 1, 4), "unit_price": price})
            value = round(sum(i["quantity"] * i["unit_price"] for i in items), 2)
            amount: float | int = int(value // 10) if rng.random() < 0.8 else round(value / 10, 1)
            ext = {"purchase_value": value, "external_purchase_id": f"{rng.getrandbits(64):016X}",
                   "date_of_points_expiration": expiry(), "purchase_items": items}
        elif op in (POINTS_ADDITION, BONUS, WELCOME):
            amount = 100 if op == WELCOME else _pick(rng, [10, 20, 25, 50, 100, 150, 200, 500])
            ext = {"date_of_points_expiration": expiry(), "campaign_id": f"CMP-{day.year}-{_randint(rng, 1, 60):03d}"}
        elif op == VOUCHER:
            value = _pick(rng, [100.0, 200.0, 250.0, 500.0])
            amount = int(value)
            ext = {"voucher_id": f"{rng.getrandbits(104):026x}", "voucher_value": value}
        elif op == REDEMPTION:
            amount = _pick(rng, [50, 100, 120, 200, 300, 12.5])
            ext = {"purchase_value": round(rng.uniform(100, 3000), 2),
                   "external_purchase_id": f"{rng.getrandbits(64):016X}"}
        elif op == EXPIRATION:
            amount = _pick(rng, [5, 10, 40, 75, 130, 210])
            ext = {"date_of_points_expiration": day.isoformat(), "expired_batch_id": f"EXP-{day:%Y%m}-{_randint(rng, 1, 999):03d}"}
        elif op == MANUAL:
            amount = _pick(rng, [5, 10, 50, 100, 250])
            roll = rng.random()
            if roll < 0.3 and self.config.null_extended_data:
                return self._sign(amount, op, rng, signed), None
            ext = "" if roll < 0.6 else {"reason": _pick(rng, _REASONS)}
        else:  # TRANSFER
            amount = _pick(rng, [10, 20, 50, 100, 500])
            ext = {"transfer_id": str(TRANSFER_ID_BASE + rng.randrange(10**6))}
        text = ext if isinstance(ext, str) else orjson.dumps(ext).decode()  # compact, and far cheaper than stdlib json here
        return self._sign(amount, op, rng, signed), text

    @staticmethod
    def _sign(amount: float | int, op: str, rng: random.Random, signed: bool) -> float | int:
        if not signed:
            return amount
        sign = OPERATION_SIGN[op] or (1 if rng.random() < 0.5 else -1)
        return amount * sign

    # ------------------------------------------------------------------ Capillary
    def transfers_of_group(self, group: int) -> list[dict]:
        """Every transfer touching the customers of one group of consecutive indices, as neutral records with
        both parties, so both sides of an internal transfer see the same transferId, amount and time."""
        return self._cached(self._cap_cache, group, lambda: self._generate_group(group))

    def _generate_group(self, group: int) -> list[dict]:
        c = self.config
        size = c.transfer_group_size
        members = [i for i in range(group * size, min(c.customers, (group + 1) * size))]
        if not members or c.transfers_per_customer <= 0:
            return []
        rng = random.Random(f"cap:{c.seed}:{group}")
        # each transfer is seen by ~1.5 listed customers on average
        hi = int(round(2 * c.transfers_per_customer * len(members) / 1.5))
        n = min(TRANSFERS_PER_GROUP_MAX, _randint(rng, 0, max(0, hi)))
        span = self.end_ts - self.start_ts
        out = []
        for j in range(n):
            roll = rng.random()
            a = _pick(rng, members)
            if roll < 0.5 and len(members) >= 2:
                b = _pick(rng, [m for m in members if m != a])
                frm, to = ("CUSTOMER", a), ("CUSTOMER", b)
            elif roll < 0.75:
                g = ("USERGROUP2", GROUP_BASE + group)
                frm, to = (g, ("CUSTOMER", a)) if rng.random() < 0.5 else (("CUSTOMER", a), g)
            else:
                other = ("OUTSIDE", OUTSIDE_USER_BASE + group * 8 + rng.randrange(8))
                frm, to = (other, ("CUSTOMER", a)) if rng.random() < 0.5 else (("CUSTOMER", a), other)
            ts = int(self.start_ts + rng.random() * span)
            visible = float(ts) + (rng.uniform(600, c.late_max_seconds) if rng.random() < c.late_share else 0.0)
            out.append({
                "transfer_id": TRANSFER_ID_BASE + group * (TRANSFERS_PER_GROUP_MAX + 1) + j,
                "from": frm, "to": to, "ts": ts, "visible": visible,
                "points": _pick(rng, [2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 12.5, 250.0]),
                "notes": _pick(rng, TRANSFER_NOTES),
            })
        return out

    def _party(self, party: tuple[str, int], group: int) -> tuple[str, int, str, dict]:
        """(entityType, entityId, object key suffix, party object)."""
        kind, ident = party
        if kind == "CUSTOMER":
            user = self.capillary_user(ident)
            return "CUSTOMER", user["userId"], "", user
        if kind == "OUTSIDE":
            rng = random.Random(f"outside:{self.config.seed}:{ident}")
            user = {"userId": ident, "firstName": _pick(rng, FIRST_NAMES), "lastName": _pick(rng, LAST_NAMES),
                    "externalId": f"EXT-OUT-{ident}"}
            return "CUSTOMER", ident, "", user
        # legacy group shape (api-notes 2.3): transferredFromUserGroup2 instead of transferredFrom
        grp = {"id": ident, "groupStatus": "ACTIVE", "fleetGroupUsers": [],
               "createdBy": 75155000, "createdOn": "2023-05-02 10:00:00",
               "lifeTimePurchases": 0.0, "name": GROUP_NAMES[group % len(GROUP_NAMES)]}
        return "USERGROUP2", ident, "UserGroup2", grp

    def capillary_view(self, index: int, summary: bool = False) -> list[tuple[float, dict]]:
        """(visible_from, record) for every transfer customer `index` takes part in, oldest first."""
        return self._cached(self._view_cache, (index, summary), lambda: self._capillary_view(index, summary))

    def _capillary_view(self, index: int, summary: bool) -> list[tuple[float, dict]]:
        group = index // self.config.transfer_group_size
        out = []
        for t in self.transfers_of_group(group):
            frm, to = t["from"], t["to"]
            if frm == ("CUSTOMER", index):
                ttype = "DEDUCTION"
            elif to == ("CUSTOMER", index):
                ttype = "ADDITION"
            else:
                continue
            ftype, fid, fkey, fobj = self._party(frm, group)
            ttype_, tid, tkey, tobj = self._party(to, group)
            dt = datetime.fromtimestamp(t["ts"], self.cap_zone)
            iso = dt.isoformat(timespec="seconds")
            if iso.endswith("+00:00"):
                iso = iso[:-6] + "Z"
            if summary:
                fobj = {k: v for k, v in fobj.items() if k != "externalId"}
                tobj = {k: v for k, v in tobj.items() if k != "externalId"}
            rec = {
                "toEntityId": tid, "toEntityType": ttype_,
                "fromEntityId": fid, "fromEntityType": ftype,
                "pointsTransferDate": _fmt(dt), "pointsTransferDateISO": iso,
                "pointsTransferred": t["points"], "transferId": t["transfer_id"], "transferType": ttype,
                "transferredFrom" + fkey: fobj, "transferredTo" + tkey: tobj,
                "notes": t["notes"], "programName": PROGRAM_NAME,
            }
            out.append((t["visible"], t["ts"], rec))
        out.sort(key=lambda x: (x[1], x[2]["transferId"]))
        return [(v, r) for v, _, r in out]


@lru_cache(maxsize=4096)  # every customer of a run sends the same bounds: strptime once, not per request
def parse_local_param(text: str) -> str | None:
    """A `time_from`/`time_to` value in either documented format, normalised to `YYYY-MM-DD HH:MM:SS`."""
    if not isinstance(text, str) or len(text) != 19 or text[10] not in " T":
        return None
    try:
        datetime.strptime(text[:10] + " " + text[11:], "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None
    return text[:10] + " " + text[11:]

