"""The sandbox's behaviour over real HTTP: paging, DST, clock, truth, tokens, faults, quirks, sockets, CLI."""

from __future__ import annotations

import hashlib
import http.client
import statistics
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import orjson
import pendulum
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import requests

from pipelines.sandbox import FaultConfig, Sandbox, SandboxConfig, ServerOptions
from pipelines.sandbox.data import CARECLOUD_FIELDS, OPERATION_TYPES

REPO = Path(__file__).resolve().parents[1]
NOW = datetime(2026, 11, 20, tzinfo=timezone.utc)
LOGIN = {"user_external_application_id": "sandbox-app", "login": "sandbox", "password": "sandbox-password"}
BASIC = ("sandbox.till", hashlib.md5(b"sandbox-password").hexdigest())


class Client:
    """A minimal CareCloud client for the tests: login, one page, all pages."""

    def __init__(self, sb: Sandbox) -> None:
        self.sb = sb
        self.s = requests.Session()
        self.token = self.login()

    def login(self) -> str:
        r = self.s.post(self.sb.carecloud_base_url + "/users/actions/login", json=LOGIN)
        r.raise_for_status()
        return r.json()["data"]["bearer_token"]

    def page(self, customer_id: str, **params) -> requests.Response:
        return self.s.get(self.sb.carecloud_base_url + "/point-history",
                          params={"customer_id": customer_id, **params},
                          headers={"Authorization": f"Bearer {self.token}"})

    def all(self, customer_id: str, count: int = 100, **params) -> list[dict]:
        out, offset = [], 0
        while True:
            r = self.page(customer_id, count=count, offset=offset, sort_field="point_history_record_time",
                          sort_direction="ASC", **params)
            assert r.status_code == 200, r.text
            data = r.json()["data"]
            out += data["point_history"]
            offset += count
            if offset >= data["total_items"]:
                assert len(out) == data["total_items"]
                return out


def _key(rec: dict) -> tuple:
    """Every API field; point_amount as a number (50 and 50.0 are the same amount)."""
    return tuple(orjson.dumps(float(rec[k]) if k == "point_amount" else rec.get(k)) for k in CARECLOUD_FIELDS)


def test_pagination_is_deterministic_and_complete(sandbox_factory):
    sb = sandbox_factory(customers=20)
    c = Client(sb)
    heavy = sb.customer_ids("carecloud")[7]
    big = c.all(heavy, count=1000)
    assert len(big) >= 2000, "index 7 is a heavy customer: several pages at count=1000"
    assert c.all(heavy, count=100) == big
    assert c.all(heavy, count=333) == big
    first = c.page(heavy, count=1000, offset=1000).json()
    assert c.page(heavy, count=1000, offset=1000).json() == first
    times = [r["point_history_record_time"] for r in big]
    assert times == sorted(times)
    desc = c.page(heavy, count=len(big), sort_field="point_history_record_time", sort_direction="DESC").json()
    assert desc["data"]["point_history"] == list(reversed(big))
    by_amount = c.page(heavy, count=len(big), sort_field="point_amount").json()["data"]["point_history"]
    assert [r["point_amount"] for r in by_amount] == sorted(r["point_amount"] for r in big)
    assert Counter(map(_key, by_amount)) == Counter(map(_key, big))
    # beyond the end: an empty page, same total
    tail = c.page(heavy, count=100, offset=len(big) + 5).json()["data"]
    assert tail == {"point_history": [], "total_items": len(big)}


def test_filters_and_time_bounds(sandbox_factory):
    sb = sandbox_factory(customers=10)
    c = Client(sb)
    cid = sb.customer_ids("carecloud")[7]
    every = c.all(cid, count=1000)
    t0 = every[100]["point_history_record_time"]
    t1 = every[200]["point_history_record_time"]
    inside = c.all(cid, count=1000, time_from=t0, time_to=t1.replace(" ", "T"))
    assert inside == [r for r in every if t0 <= r["point_history_record_time"] <= t1]
    exclusive = sandbox_factory(customers=10, time_from_inclusive=False, time_to_inclusive=False)
    ce = Client(exclusive)
    assert ce.all(cid, count=1000, time_from=t0, time_to=t1) == [
        r for r in every if t0 < r["point_history_record_time"] < t1]
    store = every[0]["store_id"]
    assert c.all(cid, count=1000, store_id=store) == [r for r in every if r["store_id"] == store]
    assert c.all(cid, count=1000, point_operation_type="purchase") == [
        r for r in every if "purchase" in r["point_operation_type"].lower()]
    assert c.all(cid, count=1000, point_operation_note="bod") == [
        r for r in every if "bod" in r["point_operation_note"].lower()]
    capped = sandbox_factory(customers=10, max_count=500)
    assert Client(capped).page(cid, count=501).status_code == 400
    empty = sandbox_factory(customers=10, unknown_customer="empty")
    r = Client(empty).page(empty.unknown_customer_ids("carecloud", 1)[0])
    assert r.status_code == 200 and r.json() == {"data": {"point_history": [], "total_items": 0}}


def test_data_has_every_awkward_case(sandbox_factory):
    sb = sandbox_factory(customers=60)
    t = sb.truth(now=datetime(2027, 7, 1, tzinfo=timezone.utc)).carecloud_point_history.to_pylist()
    types = Counter(r["point_operation_type"] for r in t)
    assert set(types) == set(OPERATION_TYPES)
    # autumn DST: the same local hour twice (records whose real instants are an hour apart share the local time)
    autumn = [r for r in t if r["point_history_record_time"][:13] in ("2024-10-27 02", "2025-10-26 02",
                                                                      "2026-10-25 02")]
    assert autumn, "records in the repeated autumn hour"
    spring = [r for r in t if r["point_history_record_time"][:10] in ("2024-03-31", "2025-03-30", "2026-03-29")]
    assert spring and not [r for r in spring if r["point_history_record_time"][11:13] == "02"]
    # recorded_at follows the documented convention: pendulum in the project zone, earlier instant (fold=0)
    for r in autumn + spring[:5]:
        local = pendulum.parse(r["point_history_record_time"], tz="Europe/Prague", exact=False)
        expected = pendulum.datetime(local.year, local.month, local.day, local.hour, local.minute, local.second,
                                     tz="Europe/Prague", fold=0).in_timezone("UTC")
        assert r["recorded_at"] == expected
    # identical records (same second, every field)
    assert any(n > 1 for n in Counter(_key(r) for r in t).values())
    # customers with no history, unicode and empty notes, extended_data kinds
    assert len({r["customer_id"] for r in t}) < 60
    assert any("🎄" in (r["point_operation_note"] or "") or "ř" in (r["point_operation_note"] or "") for r in t)
    assert any(r["point_operation_note"] == "" for r in t)
    assert len({r["store_id"] for r in t}) > 50
    amounts = {r["point_operation_type"]: r["point_amount"] for r in t}
    assert amounts["Points redemption"] < 0 and amounts["Points expiration"] < 0
    ext = [orjson.loads(r["extended_data"]) for r in t if r["point_operation_type"] == "Purchase"
           and "invalid_json" not in r["anomaly"]]
    assert all({"purchase_value", "external_purchase_id", "date_of_points_expiration", "purchase_items"} == set(e)
               for e in ext)
    unsigned = sandbox_factory(customers=60, point_amount_sign="unsigned")
    assert min(unsigned.truth(now="2027-07-01T00:00:00Z").carecloud_point_history["point_amount"].to_pylist()) >= 0


def test_clock_reveals_new_and_late_records(sandbox_factory):
    # a dense quarter around NOW so a 3-day step surely holds new and late records
    sb = sandbox_factory(customers=40, late_share=0.3, now=NOW, data_start="2026-10-01", data_end="2027-01-01",
                         records_per_customer=50, heavy_every=0)
    c = Client(sb)
    cids = sb.customer_ids("carecloud")
    before = {cid: c.all(cid) for cid in cids}
    assert sb.truth().carecloud_point_history.num_rows == sum(map(len, before.values()))
    r = c.s.post(sb.url + "/_sandbox/clock", json={"advance_seconds": 3 * 86400})
    assert r.status_code == 200 and r.json()["now"].startswith("2026-11-23T00:00:00")
    after = {cid: c.all(cid) for cid in cids}
    seen = {cid: Counter(map(_key, recs)) for cid, recs in before.items()}
    new = [rec for cid in cids for rec in after[cid] if _key(rec) not in seen[cid]]
    assert all(not (seen[cid] - Counter(map(_key, after[cid]))) for cid in cids), "records never disappear"
    assert new, "moving the clock must reveal records"
    cutoff = "2026-11-20 01:00:00"  # NOW in Prague local time
    late = [rec for rec in new if rec["point_history_record_time"] < cutoff]
    assert late, "late records: timestamps older than the previous run's end"
    assert all(rec["point_history_record_time"] >= "2026-11-17" for rec in late), "late by at most ~2 days"
    sb.set_now(NOW)
    assert {cid: c.all(cid) for cid in cids} == before


def test_truth_matches_everything_the_api_returns(sandbox_factory, tmp_path):
    sb = sandbox_factory(customers=30)
    c = Client(sb)
    api = [rec for cid in sb.customer_ids("carecloud") for rec in c.all(cid, count=250)]
    truth = sb.truth()
    cc = truth.carecloud_point_history.to_pylist()
    assert Counter(map(_key, api)) == Counter(map(_key, cc))
    cap_api = []
    for cid in sb.customer_ids("capillary"):
        for rec in c.s.get(sb.url + "/v2/points/transfer", auth=BASIC,
                           params={"source": "INSTORE", "identifierName": "id", "identifierValue": cid}).json()["data"]:
            cap_api.append((cid, rec["transferId"], rec["transferType"], rec["pointsTransferred"],
                            rec["pointsTransferDate"], rec["notes"]))
    cap = truth.capillary_customer_transfers.to_pylist()
    assert Counter(cap_api) == Counter((r["customer_id"], r["transfer_id"], r["transfer_type"],
                                        r["points_transferred"], r["points_transfer_date"], r["notes"]) for r in cap)
    paths = sb.write_truth(tmp_path)
    assert pq.read_table(paths["carecloud_point_history"]).num_rows == len(cc)
    assert pq.read_table(paths["capillary_customer_transfers"]).num_rows == len(cap)


def test_token_expiry_gives_401_then_login_again_works(sandbox_factory):
    sb = sandbox_factory(customers=5, token_ttl_seconds=0.5)
    c = Client(sb)
    cid = sb.customer_ids("carecloud")[1]
    assert c.page(cid).status_code == 200
    time.sleep(0.7)
    assert c.page(cid).status_code == 401
    c.token = c.login()
    assert c.page(cid).status_code == 200
    counted = sandbox_factory(customers=5, token_max_requests=3)
    c2 = Client(counted)
    assert [c2.page(cid).status_code for _ in range(4)] == [200, 200, 200, 401]
    assert counted.stats()["faults"]["token_expired"] == 1


def test_faults_rate_limit_drop_truncate_maintenance(sandbox_factory):
    sb = sandbox_factory(customers=5, rate_limit_rps=5, rate_limit_burst=5, retry_after_share=1.0)
    c = Client(sb)
    cid = sb.customer_ids("carecloud")[1]
    statuses = [c.page(cid) for _ in range(12)]
    limited = [r for r in statuses if r.status_code == 429]
    assert limited and all(int(r.headers["Retry-After"]) >= 1 for r in limited)
    assert statuses[0].status_code == 200
    time.sleep(1.1)
    assert c.page(cid).status_code == 200, "the bucket refills"
    assert sb.stats()["faults"]["429_rate_limit"] == len(limited)

    drops = sandbox_factory(customers=5, drop_share=1.0)
    with pytest.raises(requests.ConnectionError):
        Client(drops).page(cid)
    trunc = sandbox_factory(customers=10, truncate_share=1.0)
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.ConnectionError)):
        Client(trunc).page(trunc.customer_ids("carecloud")[7], count=1000)
    assert trunc.stats()["faults"]["truncated_body"] == 1
    assert trunc.stats()["requests"]["carecloud.point_history"] == {"truncated": 1}
    assert drops.stats()["requests"]["carecloud.point_history"] == {"dropped": 1}

    maint = sandbox_factory(customers=40, maintenance_share=0.5, maintenance_seconds=60)
    cm = Client(maint)
    codes = {cid: cm.page(cid).status_code for cid in maint.customer_ids("carecloud")}
    assert set(codes.values()) == {200, 503}
    again = {cid: cm.page(cid).status_code for cid in maint.customer_ids("carecloud")}
    assert again == codes, "the same customers stay in maintenance for the whole window"
    assert set(maint.customers_in_maintenance("carecloud")) == {c for c, code in codes.items() if code == 503}
    r = cm.s.post(maint.url + "/_sandbox/faults", json={"maintenance_seconds": 0})
    assert r.status_code == 200 and r.json()["maintenance_seconds"] == 0
    assert {cm.page(cid).status_code for cid in maint.customer_ids("carecloud")} == {200}
    assert maint.customers_in_maintenance("carecloud") == []
    assert cm.s.post(maint.url + "/_sandbox/faults", json={"nope": 1}).status_code == 400

    slow = sandbox_factory(customers=5, latency_ms=100)
    t = time.perf_counter()
    Client(slow).page(cid)
    assert time.perf_counter() - t >= 0.1


def test_quirks_are_served_and_in_the_truth(sandbox_factory):
    sb = sandbox_factory(customers=30, extra_fields=True, type_drift=True, bad_times=True, huge_notes=True)
    c = Client(sb)
    api = [rec for cid in sb.customer_ids("carecloud") for rec in c.all(cid, count=1000)]
    assert all({"record_source", "loyalty_tier"} <= set(r) for r in api)
    assert any(isinstance(r["point_amount"], str) for r in api)
    assert any(r["point_history_record_time"] is None for r in api) or any(
        r["point_history_record_time"] in ("0000-00-00 00:00:00", "2025-13-45 25:61:00", "not a time") for r in api)
    assert any(len(r["point_operation_note"]) >= 100_000 for r in api)
    truth = sb.truth().carecloud_point_history
    assert {"record_source", "loyalty_tier"} <= set(truth.column_names)
    anomalies = Counter(a for v in truth["anomaly"].to_pylist() for a in v.split(",") if a)
    assert {"type_drift", "bad_time", "huge_note", "late"} <= set(anomalies)
    assert truth.num_rows == len(api)


def test_extended_data_variety_changes_only_extended_data(sandbox_factory):
    """The heterogeneous switch: served and in the truth, every other field as with the switch off, and each
    kind of variety present (colliding spellings across and within records, type changes, nesting, unicode
    keys, null/"", not an object, invalid JSON)."""
    from pipelines.columns import column_name

    varied = sandbox_factory(customers=40, extended_data_variety=0.5)
    plain = sandbox_factory(customers=40)
    api = [rec for cid in varied.customer_ids("carecloud") for rec in Client(varied).all(cid, count=1000)]
    base = [rec for cid in plain.customer_ids("carecloud") for rec in Client(plain).all(cid, count=1000)]
    assert len(api) == len(base)
    assert [{k: v for k, v in r.items() if k != "extended_data"} for r in api] == \
        [{k: v for k, v in r.items() if k != "extended_data"} for r in base]
    truth = varied.truth().carecloud_point_history
    assert sorted(truth["extended_data"].to_pylist(), key=str) == sorted((r["extended_data"] for r in api), key=str)
    tags = Counter(a for v in truth["anomaly"].to_pylist() for a in v.split(",") if a)
    kinds = {"ext_respelled", "ext_twin", "ext_conflict", "ext_type_change", "ext_nested", "ext_unicode",
             "ext_nulls", "ext_empty", "ext_not_object", "invalid_json"}
    assert kinds <= set(tags), tags
    changed = sum(a != b for a, b in zip(api, base))
    assert 0.3 * len(api) < changed < 0.7 * len(api)
    # within one record: two spellings of one column, with different values on the conflict records
    for row in truth.filter(pc.match_substring(truth["anomaly"], "ext_conflict")).to_pylist():
        obj = orjson.loads(row["extended_data"])
        flat = [(column_name(k) + (("__" + column_name(s)) if isinstance(v, dict) else ""),
                 (w if isinstance(v, dict) else v))
                for k, v in obj.items() for s, w in (v.items() if isinstance(v, dict) else [(None, v)])]
        names = Counter(n for n, _ in flat)
        twice = [n for n, c in names.items() if c == 2]
        assert len(twice) == 1 and len({orjson.dumps(v) for n, v in flat if n == twice[0]}) == 2, obj
    # across records: one column, several spellings
    spellings = {k for r in api if r["extended_data"] and r["extended_data"].startswith("{")
                 for k in _keys(r["extended_data"]) if column_name(k) == "purchase_value"}
    assert len(spellings) >= 3, spellings
    with pytest.raises(ValueError):
        SandboxConfig(extended_data_variety=1.5)


def _keys(text: str) -> list[str]:
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        return []
    return list(obj) if isinstance(obj, dict) else []


def test_customer_files(sandbox_factory, sandbox_env, tmp_path):
    sb = sandbox_factory(customers=25)
    paths = sb.write_customer_files(tmp_path, unknown=2, duplicates=3, blanks=1)
    lines = paths["carecloud"].read_text().splitlines()
    assert lines[0] == "customer_id"
    ids = [x.strip('"') for x in lines[1:]]
    assert len(ids) == 25 + 2 + 3 + 1 and ids.count("") == 1
    assert len(set(ids) - {""}) == 27
    c = Client(sb)
    unknown = [i for i in set(ids) - {""} if i not in set(sb.customer_ids("carecloud"))]
    assert len(unknown) == 2 and all(c.page(u).status_code == 400 for u in unknown)
    env = sandbox_env(sb, tmp_path / "wh" / "w.duckdb")
    assert env["DESTINATION__DUCKDB__CREDENTIALS"] == str(tmp_path / "wh" / "w.duckdb")
    assert Path(env["SOURCES__CARECLOUD__CUSTOMERS"]).parent == tmp_path / "wh"
    assert env["SOURCES__CARECLOUD__BASE_URL"] == sb.carecloud_base_url
    sb.write_customer_files(tmp_path, limit=10)
    assert len(set(sb.truth().carecloud_point_history["customer_id"].to_pylist())) <= 10


def test_a_million_customers_start_without_generating(sandbox_factory):
    sb = sandbox_factory(customers=1_000_000)
    c = Client(sb)
    last = sb.app.data.carecloud_id(999_999)
    assert c.page(last).status_code == 200
    assert len(sb.app.data._cc_cache) == 1


def _median_ms(sb: Sandbox, n: int = 25) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", sb.port)
    conn.request("POST", "/webservice/rest-api/enterprise-interface/v1.0/users/actions/login",
                 body=orjson.dumps(LOGIN), headers={"Content-Type": "application/json"})
    token = orjson.loads(conn.getresponse().read())["data"]["bearer_token"]
    cid = sb.customer_ids("carecloud")[1]
    times = []
    for _ in range(n):
        t = time.perf_counter()
        conn.request("GET", f"/webservice/rest-api/enterprise-interface/v1.0/point-history?customer_id={cid}",
                     headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
        times.append(time.perf_counter() - t)
    conn.close()
    return statistics.median(times) * 1000


def test_keep_alive_has_no_delayed_ack_stall():
    """Headers and body in one send with TCP_NODELAY: no 40 ms stall on a keep-alive connection. The control
    (two sends with Nagle on) shows the stall exists on this machine, so the first figure means something."""
    cfg = SandboxConfig(customers=5, now=NOW)
    with Sandbox(cfg, FaultConfig()) as good:
        fast = _median_ms(good)
    with Sandbox(cfg, FaultConfig(), ServerOptions(nodelay=False, single_send=False)) as bad:
        stalled = _median_ms(bad)
    assert fast < 15, f"median {fast:.1f} ms per request on loopback"
    assert stalled > 30, f"control without the fix: median {stalled:.1f} ms (expected the ~40 ms delayed-ACK stall)"


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_cli_truth_customers_and_serve(tmp_path):
    r = _cli("sandbox", "truth", "--out", str(tmp_path / "t"), "--customers", "20", "--now", "2026-11-20T00:00:00Z")
    assert r.returncode == 0, r.stderr
    cli_truth = pq.read_table(tmp_path / "t" / "carecloud_point_history.parquet")
    same = Sandbox(SandboxConfig(customers=20, now=NOW)).truth().carecloud_point_history
    assert cli_truth.equals(same)
    r = _cli("sandbox", "customers", "--out", str(tmp_path / "c"), "--customers", "20")
    assert r.returncode == 0 and (tmp_path / "c" / "capillary.csv").read_text().count("\n") == 21
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "sandbox", "--port", "0", "--customers", "20"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "serving" in line, line + proc.stderr.read()
        url = line.split(" on ")[1].strip()
        assert url.startswith("http://127.0.0.1:")
        assert requests.get(url + "/_sandbox/health", timeout=5).json() == {"status": "ok"}
    finally:
        proc.terminate()
        proc.wait(10)


def test_cli_help_names_flags_and_credentials(capsys):
    from pipelines.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["sandbox", "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "--rate-limit-rps" in out and "--maintenance-seconds" in out and "sandbox-password" in out


def test_stats_count_requests_by_endpoint_and_status(sandbox_factory):
    sb = sandbox_factory(customers=5)
    c = Client(sb)
    c.page(sb.customer_ids("carecloud")[1])
    c.page("nope")
    stats = c.s.get(sb.url + "/_sandbox/stats").json()
    assert stats["requests"]["carecloud.point_history"] == {"200": 1, "400": 1}
    assert stats["requests"]["carecloud.login"] == {"200": 1}
    assert stats == {**sb.stats(), "requests": stats["requests"], "requests_total": stats["requests_total"]}


def test_capillary_faults_use_the_capillary_error_shape(sandbox_factory):
    sb = sandbox_factory(customers=5, faults=FaultConfig(random_429_share=0.5, error_503_share=0.5,
                                                         retry_after_share=1.0, seed=2))
    s = requests.Session()
    seen = set()
    for _ in range(20):
        r = s.get(sb.url + "/v2/points/transfer", auth=BASIC,
                  params={"source": "INSTORE", "identifierName": "id", "identifierValue": "564000001"})
        body = r.json()
        assert r.status_code in (429, 503)
        assert body["warnings"] == [] and body["errors"][0]["status"] is False
        assert body["errors"][0]["code"] == r.status_code
        if r.status_code == 429:
            assert r.headers["Retry-After"] == "1"
        seen.add(r.status_code)
    assert seen == {429, 503}
    limited = sandbox_factory(customers=5, rate_limit_rps=2, rate_limit_burst=2)  # default: no Retry-After
    codes = [s.get(limited.url + "/v2/customers/564000001/pointsTransfers", auth=BASIC) for _ in range(5)]
    assert [r.status_code for r in codes][:2] == [200, 200] and codes[-1].status_code == 429
    assert "Retry-After" not in codes[-1].headers


def test_capillary_truth_follows_the_identifier_in_the_customer_file(sandbox_factory, tmp_path):
    sb = sandbox_factory(customers=12)
    paths = sb.write_customer_files(tmp_path, capillary_identifier="mobile")
    mobiles = paths["capillary"].read_text().split()[1:]
    assert mobiles == [sb.app.data.capillary_identifiers(i)["mobile"] for i in range(12)]
    s = requests.Session()
    api = Counter()
    for m in mobiles:
        for rec in s.get(sb.url + "/v2/points/transfer", auth=BASIC,
                         params={"source": "INSTORE", "identifierName": "mobile", "identifierValue": m}).json()["data"]:
            api[(m, rec["transferId"], rec["transferType"])] += 1
    truth = sb.truth().capillary_customer_transfers.to_pylist()
    assert api and api == Counter((r["customer_id"], r["transfer_id"], r["transfer_type"]) for r in truth)


def test_repeated_autumn_hour_holds_both_real_hours(sandbox_factory):
    """In the repeated hour, local 02:xx stands for two real hours; a time_from/time_to query on the local hour
    returns records of both (the server compares project-local strings, as the vendor documents)."""
    sb = sandbox_factory(customers=300, now="2027-07-01T00:00:00Z")
    gen = sb.app.data
    c = Client(sb)
    both = 0
    for i in range(2, 300, 7):  # the DST customers
        h = gen.carecloud(i)
        for day in ("2024-10-27", "2025-10-26", "2026-10-25"):
            hour = [j for j, t in enumerate(h.times) if t.startswith(day + " 02:")]
            if not hour:
                continue
            offsets = {round((h.instants[j] - local_to_epoch_naive(h.times[j])) / 3600) for j in hour}
            got = c.all(gen.carecloud_id(i), time_from=f"{day} 02:00:00", time_to=f"{day}T02:59:59")
            assert [r["point_history_record_time"] for r in got] == [h.times[j] for j in hour]
            both += offsets == {-2, -1}  # CEST (UTC+2) and CET (UTC+1) records under the same local hour
    assert both, "some customer has records from both real hours behind one local hour"


def local_to_epoch_naive(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp()


def test_query_parsing_fast_path_agrees_with_parse_qs() -> None:
    """The sandbox splits queries without `%` itself (cheaper than parse_qs); both readings must agree, first value
    of a repeated parameter and `+` as a space included."""
    from urllib.parse import parse_qs

    from pipelines.sandbox.api import parse_query

    queries = ["customer_id=c1&count=1000&time_from=2024-01-01+00:00:00&time_to=2024-02-01T00:00:00",
               "a=1&b=2&a=3", "a=&b", "x=1&&y=2", "a=b=c", "t=2024-01-01+10%3A00&u=%2B1", "c+d=e+f", "k", "", "a;b=1"]
    for q in queries:
        assert parse_query(q) == {k: v[0] for k, v in parse_qs(q, keep_blank_values=True).items()}, q


def test_sandbox_event_loop_is_uvloop_when_installed() -> None:
    """The bench extra installs uvloop and the sandbox then serves on it (less CPU taken from the pipeline under
    test); without it, asyncio's own loop."""
    import importlib.util

    from pipelines.sandbox.service import new_event_loop

    loop = new_event_loop()
    try:
        expected = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
        assert type(loop).__module__.split(".")[0] == expected
    finally:
        loop.close()


def test_scripted_faults_come_first_then_the_dice():
    from pipelines.sandbox.config import FaultConfig
    from pipelines.sandbox.faults import Faults

    faults = Faults(FaultConfig(scripted="dropped_connection, truncated_body,503_random"))
    got = [faults.decide("cred", f"c{i}")[0] for i in range(5)]
    assert got == ["dropped_connection", "truncated_body", "503_random", "pass", "pass"]
    assert faults.counts["dropped_connection"] == 1 and faults.counts["truncated_body"] == 1
    with pytest.raises(ValueError, match="unknown scripted fault kind.*dropped"):
        Faults(FaultConfig(scripted="dropped"))
