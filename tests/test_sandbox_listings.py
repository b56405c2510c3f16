"""The sandbox's CareCloud listings (GET /customers, /points, /purchases) agree with its point-history truth: a
point record per earning, a purchase per purchase-linked record, an expiring lot per expiration it can name, nothing
for corrections; the roster grows as customers join on the sandbox clock. Real HTTP against a real sandbox."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone

import requests

from pipelines.sandbox.data import EXPIRATION, MANUAL, REDEMPTION, TRANSFER, VOUCHER
from pipelines.sandbox.listing import EARNINGS, PURCHASE_EARNINGS

LOGIN = {"user_external_application_id": "sandbox-app", "login": "sandbox", "password": "sandbox-password"}


class Client:
    def __init__(self, sb) -> None:
        self.sb, self.s = sb, requests.Session()
        token = self.s.post(sb.carecloud_base_url + "/users/actions/login", json=LOGIN).json()["data"]["bearer_token"]
        self.headers = {"Authorization": f"Bearer {token}"}

    def get(self, path: str, **params) -> requests.Response:
        return self.s.get(self.sb.carecloud_base_url + path, params=params, headers=self.headers)

    def all(self, path: str, count: int = 37, **params) -> list[dict]:
        """Every item, paged with a small odd page size so page boundaries fall everywhere."""
        out, offset, key = [], 0, path.strip("/")
        while True:
            data = self.get(path, count=count, offset=offset, **params).json()["data"]
            out += data[key]
            offset += count
            if offset >= data["total_items"]:
                assert len(out) == data["total_items"]
                return out


def test_point_records_and_purchases_follow_the_history(sandbox_factory):
    sb = sandbox_factory(customers=80)
    c = Client(sb)
    trace = sb.listing_truth()["carecloud_point_history_trace"].to_pylist()
    points, purchases = c.all("/points"), c.all("/purchases")
    # one point record per earning, one purchase per purchase-linked record, keyed by customer and time
    earn = Counter((r["customer_id"], r["point_history_record_time"]) for r in trace
                   if r["point_operation_type"] in EARNINGS)
    assert Counter((p["customer_id"], p["created_at"]) for p in points) == earn
    linked = Counter((r["customer_id"], r["point_history_record_time"]) for r in trace
                     if r["point_operation_type"] in (*PURCHASE_EARNINGS, REDEMPTION))
    assert Counter((p["customer_id"], p["payment_time"]) for p in purchases) == linked
    assert sorted(p["assigned_points"] for p in points) == sorted(
        abs(r["point_amount"]) for r in trace if r["point_operation_type"] in EARNINGS)
    # corrections, vouchers and transfers leave no trace; every earning and purchase-linked record does
    by_type = {}
    for r in trace:
        by_type.setdefault(r["point_operation_type"], set()).add(r["trace"])
    for op in (MANUAL, VOUCHER, TRANSFER):
        assert by_type[op] == {"none"}, op
    assert by_type[REDEMPTION] == {"purchase"}
    for op in EARNINGS:
        assert by_type[op] == {"point_record"}, op
    # an expiration names the lot it expires: a lot whose valid_to is the expiration's time
    expiries = [r for r in trace if r["trace"] == "expiry"]
    assert expiries and by_type[EXPIRATION] <= {"expiry", "none"}
    valid_to = Counter((p["customer_id"], p.get("valid_to")) for p in points)
    for r in expiries:
        assert valid_to[(r["customer_id"], r["point_history_record_time"])] >= 1, r
    # the pages equal the truth tables
    truth = sb.listing_truth()
    assert sorted(p["point_id"] for p in points) == sorted(truth["carecloud_points"]["point_id"].to_pylist())
    assert len({p["purchase_id"] for p in purchases}) == truth["carecloud_purchases"].num_rows == len(purchases)


def test_windows_filter_by_local_creation_and_payment_time(sandbox_factory):
    sb = sandbox_factory(customers=120)
    c = Client(sb)
    lo, hi = "2026-10-25 00:00:00", "2026-11-05 12:00:00"
    points = c.all("/points")
    window = c.all("/points", create_point_time_from=lo, create_point_time_to=hi.replace(" ", "T"))
    assert window and window == [p for p in points if lo <= p["created_at"] <= hi]
    assert [p["created_at"] for p in points] == sorted(p["created_at"] for p in points)
    purchases = c.all("/purchases")
    window = c.all("/purchases", payment_time_from=lo, payment_time_to=hi)
    assert window and window == [p for p in purchases if lo <= p["payment_time"] <= hi]
    # one customer, and DESC is the exact reverse
    cid = points[0]["customer_id"]
    assert c.all("/points", customer_id=cid) == [p for p in points if p["customer_id"] == cid]
    assert c.all("/points", sort_field="created_at", sort_direction="DESC") == points[::-1]
    assert c.get("/points", customer_id="0" * 26).json()["data"] == {"points": [], "total_items": 0}
    # exclusive bounds and a UTC reading of the filters are switches
    strict = Client(sandbox_factory(customers=120, time_from_inclusive=False, time_to_inclusive=False))
    at = points[len(points) // 2]["created_at"]
    assert at not in {p["created_at"] for p in strict.all("/points", create_point_time_from=at,
                                                            create_point_time_to=at)}
    assert at in {p["created_at"] for p in c.all("/points", create_point_time_from=at, create_point_time_to=at)}
    utc = Client(sandbox_factory(customers=120, listing_filter_zone="utc"))
    # 2026-11-01 12:00 UTC is 13:00 in Prague (CET): a local-time filter from 12:30 includes 12:30..13:00 local
    shifted = utc.all("/points", create_point_time_from="2026-11-01 12:00:00")
    assert shifted == [p for p in points if p["created_at"] >= "2026-11-01 13:00:00"]


def test_records_arriving_late_appear_late_in_every_listing(sandbox_factory):
    sb = sandbox_factory(customers=200)
    trace = sb.listing_truth(now="2027-07-01T00:00:00Z")["carecloud_point_history_trace"].to_pylist()
    local = sb.app.data.zone
    late = [r for r in trace if r["trace"] in ("point_record", "purchase") and r["visible_from"] > datetime.strptime(
        r["point_history_record_time"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=local) + timedelta(hours=1)]
    assert late
    c = Client(sb)
    for r in late[:4]:
        path, field = ("/points", "created_at") if r["trace"] == "point_record" else ("/purchases", "payment_time")
        for offset, expected in ((-1, False), (1, True)):  # visible_from has sub-second precision
            sb.set_now(r["visible_from"] + timedelta(seconds=offset))
            items = c.all(path, customer_id=r["customer_id"])
            assert any(i[field] == r["point_history_record_time"] for i in items) is expected, (r, offset)


def test_expired_points_and_record_kind_switches(sandbox_factory):
    views = {}
    for mode in ("inactive", "zero", "unchanged"):
        views[mode] = Client(sandbox_factory(customers=60, expired_points=mode)).all("/points")
    expired = [p for p in views["inactive"] if p.get("valid_to") and p["valid_to"] < "2026-11-20 01:00:00"]
    assert expired
    assert {(p["state"], p["available_points"]) for p in expired} == {(2, 0.0)}
    zero = {p["point_id"]: p for p in views["zero"]}
    unchanged = {p["point_id"]: p for p in views["unchanged"]}
    for p in expired:
        assert (zero[p["point_id"]]["state"], zero[p["point_id"]]["available_points"]) == (1, 0.0)
        assert unchanged[p["point_id"]]["available_points"] == p["assigned_points"] > 0
    # only purchase earnings leave a point record: bonuses become invisible to discovery
    sb = sandbox_factory(customers=60, point_records_for="purchases")
    trace = sb.listing_truth()["carecloud_point_history_trace"].to_pylist()
    assert {r["trace"] for r in trace if r["point_operation_type"] in ("Bonus points", "Welcome bonus")} == {"none"}
    assert len(Client(sb).all("/points")) == sum(r["point_operation_type"] in PURCHASE_EARNINGS for r in trace)


def test_roster_grows_as_customers_join(sandbox_factory):
    sb = sandbox_factory(customers=400, joining_share=0.5, now="2026-11-20T00:00:00Z")
    c = Client(sb)
    roster = c.all("/customers")
    truth = sb.listing_truth()["carecloud_customers"]
    assert sorted(r["customer_id"] for r in roster) == sorted(truth["customer_id"].to_pylist())
    assert len(roster) < 400
    joiners = sb.joined_between("2026-11-20T00:00:00Z", "2026-12-20T00:00:00Z")
    assert joiners and not set(joiners) & {r["customer_id"] for r in roster}
    first = joiners[0]
    created = datetime.fromtimestamp(sb.app.data.joined_at(sb.app.data.carecloud_index(first)), timezone.utc)
    sb.set_now(created + timedelta(hours=1))
    newest = c.get("/customers", sort_field="last_change", sort_direction="DESC", count=5).json()["data"]
    assert first in [r["customer_id"] for r in newest["customers"]]
    assert newest["total_items"] == len(roster) + 1 + sum(
        1 for j in joiners[1:] if sb.app.data.joined_at(sb.app.data.carecloud_index(j)) <= created.timestamp())
    # last_change DESC paging is ordered and complete; the new customer's history starts at its creation
    desc = c.all("/customers", sort_field="last_change", sort_direction="DESC")
    assert [r["last_change"] for r in desc] == sorted((r["last_change"] for r in desc), reverse=True)
    assert len(desc) == newest["total_items"]
    history = sb.truth(now="2027-07-01T00:00:00Z").carecloud_point_history.to_pylist()
    mine = [r["recorded_at"] for r in history if r["customer_id"] == first]
    assert all(t >= created for t in mine)
    # every customer has the documented shape; states 0/1/2 all occur over the span
    late = sandbox_factory(customers=400, now="2027-06-30T00:00:00Z")
    states = Counter(r["state"] for r in Client(late).all("/customers", count=500))
    assert set(states) == {0, 1, 2} and states[1] > 0.9 * sum(states.values())
    hidden = sandbox_factory(customers=400, now="2027-06-30T00:00:00Z", list_deleted_customers=False)
    assert 0 not in {r["state"] for r in Client(hidden).all("/customers", count=500)}


def test_roster_filters(sandbox_factory):
    sb = sandbox_factory(customers=50)
    c = Client(sb)
    ids = sb.customer_ids("carecloud")
    got = c.get("/customers", **{"customer_ids[]": [ids[3], ids[9]]}).json()["data"]
    assert sorted(r["customer_id"] for r in got["customers"]) == sorted([ids[3], ids[9]])
    assert c.get("/customers", email="member00000009@sandbox.example").json()["data"]["customers"][0][
        "customer_id"] == ids[9]
    person = c.get("/customers", **{"customer_ids[]": ids[9]}).json()["data"]["customers"][0]["personal_information"]
    y, m, d = person["birthdate"].split("-")
    assert ids[9] in {r["customer_id"] for r in c.all("/customers", birthdate=f"{d}.{m}.{y}")}
    assert c.get("/customers", **{"customer_ids[]": [f"x{i}" for i in range(1001)]}).status_code == 400


def test_last_change_on_points_switch(sandbox_factory):
    plain = Client(sandbox_factory(customers=40)).all("/customers")
    moved = Client(sandbox_factory(customers=40, last_change_on_points=True)).all("/customers")
    a = {r["customer_id"]: r["last_change"] for r in plain}
    b = {r["customer_id"]: r["last_change"] for r in moved}
    assert a.keys() == b.keys() and all(b[k] >= a[k] for k in a) and any(b[k] > a[k] for k in a)


def test_cross_customer_index_lists_what_each_customer_derives():
    """The index is built from the history's operation types alone (`Listings.positions`), not from `_derive`: every
    (time key, visible_from, customer, position) it holds is the derived lot or purchase at that position, and
    nothing derived is missing, for both `point_records_for` settings (late records included)."""
    from pipelines.sandbox.config import SandboxConfig
    from pipelines.sandbox.data import DataGenerator
    from pipelines.sandbox.listing import Listings

    for point_records_for in ("earnings", "purchases"):
        listings = Listings(DataGenerator(SandboxConfig(customers=120, point_records_for=point_records_for,
                                                        late_share=0.2)))
        for kind in ("points", "purchases"):
            expected = []
            for i in range(120):
                cl = listings.customer(i)
                keys, vis = (cl.lot_keys, cl.lot_visible) if kind == "points" else (cl.purchase_keys,
                                                                                   cl.purchase_visible)
                expected += [(key, i, j, vis[j]) for j, key in enumerate(keys)]
            expected.sort()
            keys, vis, cust, pos = listings.index(kind)
            assert list(zip(keys, cust, pos, vis)) == expected
            assert expected and len({(c, p) for _, c, p, _ in expected}) == len(expected)
