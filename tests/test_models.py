"""dbt models (sql/) on a small hand-made warehouse in the raw contract's shape (docs/architecture.md).

The data covers both CareCloud sign conventions, unmapped operation names, extended_data expirations in the
future and past, Capillary transfers between customers, and a late record landing in an earlier day. Expected
values are computed here in Python from the same rows, independently of the SQL. One warehouse is built per
module; tests that change data work on copies.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from datetime import date, datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import pytest

from tests.helpers.raw_warehouse import create_raw_tables
from pipelines.models import SQL_DIR, last_results, run_dbt
from pipelines.windows import LOCAL_TIMEZONE

ROOT = Path(__file__).resolve().parent.parent
PRAGUE = ZoneInfo(LOCAL_TIMEZONE)  # the sandbox tenant's zone and the marts' reporting zone
AS_OF = "2026-11-20"
VARS = ["--vars", json.dumps({"as_of_date": AS_OF})]

EXTENDED_KEYS = ("date_of_points_expiration", "purchase_value", "external_purchase_id")


# ---------------------------------------------------------------------------------------------- raw data
def cc(customer: str, amount: float, op: str, local: str, *, store: str = "S1", partner: str = "P1",
       expires: str | None = None, purchase: float | None = None, note: str = "") -> dict:
    """One CareCloud record as the pipeline stores it (record time project-local, recorded_at UTC)."""
    local_dt = datetime.fromisoformat(local)
    ext = {"date_of_points_expiration": expires, "purchase_value": purchase,
           "external_purchase_id": f"X-{customer}-{local}" if purchase else None}
    return {
        "record_key": f"{customer}|{local}|{op}|{amount}",
        "customer_id": customer,
        "point_amount": amount,
        "point_operation_type": op,
        "point_operation_note": note,
        "point_type_id": "PT1",
        "partner_id": partner,
        "store_id": store,
        "point_history_record_time": local_dt,
        "recorded_at": local_dt.replace(tzinfo=PRAGUE).astimezone(timezone.utc),
        "extended_data_raw": json.dumps(ext),
        **{f"extended_data__{k}": v for k, v in ext.items()},
    }


# Customer A: the tenant sends signed amounts; customer B: unsigned (every amount >= 0).
CARECLOUD = [
    cc("A", 100, "Purchase", "2026-10-01 10:00:00", expires="2027-01-31", purchase=50.0),
    cc("A", 40, "Nákup", "2026-10-01 18:30:00", store="S2", expires="2026-11-01", purchase=20.0),
    cc("A", -30, "Points redemption", "2026-10-05 12:00:00"),
    cc("A", -10, "Points expiration", "2026-11-02 00:05:00"),
    cc("A", -5, "Manual correction", "2026-11-03 09:00:00"),
    cc("A", 25, "Welcome bonus", "2026-09-30 23:30:00", partner="P2"),  # 21:30 UTC: local day differs from UTC
    cc("B", 200, "Points addition", "2026-10-02 08:00:00", expires="2026-12-24"),
    cc("B", 80, "Voucher purchase", "2026-10-20 08:00:00"),     # unsigned: a redemption sent positive
    cc("B", 15, "Points expiration", "2026-10-21 08:00:00"),
    cc("B", 7, "Mystery operation", "2026-10-22 08:00:00"),      # not in the seed: other, sign as sent
    cc("B", 60, "Bonus points", "2026-11-10 08:00:00", expires="2027-03-01", store="S2"),
]

# Capillary entities 101, 102, 103 (queried by id, so identifier = entity id).
TRANSFERS = [
    # transfer_id, from, to, points, transferred_at (UTC), program
    (9001, 101, 102, 50.0, "2026-10-03T10:00:00+00:00", "Gold"),
    (9002, 102, 103, 20.0, "2026-10-04T23:30:00+00:00", "Gold"),   # 00:30 next day in Prague
    (9003, 101, 103, 5.0, "2026-10-10T08:00:00+00:00", "Silver"),
]
PARTIES = [(101, "Ann", "Able", "E101"), (102, "Bob", "Baker", "E102"), (103, "", "", "E103")]

LATE_CARECLOUD = cc("A", 12, "Bonus points", "2026-10-02 11:00:00")   # lands before A's later days
NEW_TRANSFER = (9004, 103, 101, 3.0, "2026-11-15T12:00:00+00:00", "Gold")


def insert_carecloud(con: duckdb.DuckDBPyConnection, rows: list[dict], run_id: str) -> None:
    for r in rows:
        con.execute(
            "INSERT INTO loyalty_raw.carecloud_point_history VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [r["record_key"], r["customer_id"], r["point_amount"], r["point_operation_type"],
             r["point_operation_note"], r["point_type_id"], r["partner_id"], r["store_id"],
             r["point_history_record_time"], r["recorded_at"], r["extended_data_raw"],
             *(r[f"extended_data__{k}"] for k in EXTENDED_KEYS), run_id, run_id, r["record_key"][:14]],
        )


def insert_transfer(con: duckdb.DuckDBPyConnection, t: tuple) -> None:
    tid, src, dst, pts, at, program = t
    at_dt = datetime.fromisoformat(at)
    con.execute(
        "INSERT INTO loyalty_raw.capillary_points_transfers VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        [tid, src, "CUSTOMER", dst, "CUSTOMER", pts, at_dt.strftime("%Y-%m-%d %H:%M:%S"), at_dt, "", program,
         src, dst, "l1", f"t{tid}"],
    )
    # each party queried by its id sees the transfer from its side
    con.execute("INSERT INTO loyalty_raw.capillary_customer_transfers VALUES (?,?,?,?,?,?)",
                [str(src), tid, "DEDUCTION", -pts, "l1", f"d{tid}"])
    con.execute("INSERT INTO loyalty_raw.capillary_customer_transfers VALUES (?,?,?,?,?,?)",
                [str(dst), tid, "ADDITION", pts, "l1", f"a{tid}"])


def build_raw_warehouse(path: Path) -> None:
    con = duckdb.connect(str(path))
    try:
        create_raw_tables(con)
        insert_carecloud(con, CARECLOUD, "run-1")
        for t in TRANSFERS:
            insert_transfer(con, t)
        for p in PARTIES:
            con.execute("INSERT INTO loyalty_raw.capillary_transfer_parties VALUES (?,?,?,?,?,?)",
                        [*p, "l1", f"p{p[0]}"])
    finally:
        con.close()


# ---------------------------------------------------------------------------------------------- expected
def seed_mapping() -> dict[str, str]:
    with open(SQL_DIR / "seeds" / "carecloud_operation_types.csv", encoding="utf-8") as f:
        return {row["operation_type"].strip().lower(): row["movement_type"] for row in csv.DictReader(f)}


def expected_ledger(carecloud: list[dict], transfers: list[tuple]) -> dict[str, tuple]:
    """ledger_key -> (customer_key, occurred_on, points, movement_type), computed without SQL."""
    mapping = seed_mapping()
    out: dict[str, tuple] = {}
    for r in carecloud:
        mt = mapping.get(r["point_operation_type"].strip().lower(), "other")
        amount = r["point_amount"]
        points = abs(amount) if mt == "earn" else -abs(amount) if mt in ("redeem", "expire") else amount
        out[f"carecloud:{r['record_key']}"] = (
            f"carecloud:{r['customer_id']}", r["point_history_record_time"].date(), points, mt)
    for tid, src, dst, pts, at, _ in transfers:
        local_day = datetime.fromisoformat(at).astimezone(PRAGUE).date()
        out[f"capillary:{tid}:out"] = (f"capillary:{src}", local_day, -pts, "transfer_out")
        out[f"capillary:{tid}:in"] = (f"capillary:{dst}", local_day, pts, "transfer_in")
    return out


def expected_daily(ledger: dict[str, tuple]) -> dict[tuple, tuple]:
    """(customer_key, day) -> (net, running balance)."""
    per_day: dict[tuple, float] = defaultdict(float)
    for customer, day, points, _ in ledger.values():
        per_day[(customer, day)] += points
    out, balance = {}, defaultdict(float)
    for (customer, day) in sorted(per_day):
        balance[customer] += per_day[(customer, day)]
        out[(customer, day)] = (per_day[(customer, day)], balance[customer])
    return out


# ---------------------------------------------------------------------------------------------- fixtures
def build(warehouse: Path, target: Path, *extra: str) -> int:
    return run_dbt(warehouse, ["build", *VARS, *extra], target_dir=target)


def query(warehouse: Path, sql: str, params: list | None = None) -> list[tuple]:
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def failed_nodes() -> set[str]:
    return {n.unique_id.split(".")[2] for n in last_results() if n.status in ("fail", "error")}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("models")
    warehouse = d / "loyalty_warehouse.duckdb"
    build_raw_warehouse(warehouse)
    assert build(warehouse, d / "target") == 0, [n for n in last_results() if n.status != "success"]
    # dbt's unit tests run inside `dbt build`, before the model each one tests
    unit_tests = {n.unique_id.rsplit(".", 1)[-1]: n.status for n in last_results() if n.resource_type == "unit_test"}
    assert len(unit_tests) >= 4 and set(unit_tests.values()) == {"pass"}, unit_tests
    return warehouse


def copy_of(built: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "loyalty_warehouse.duckdb"
    shutil.copy(built, dst)
    return dst


# ---------------------------------------------------------------------------------------------- tests
def test_ledger_row_for_row(built: Path) -> None:
    rows = query(built, "SELECT ledger_key, customer_key, occurred_on, points, movement_type "
                        "FROM loyalty.fct_points_ledger")
    got = {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}
    assert got == expected_ledger(CARECLOUD, TRANSFERS)


def test_ledger_instants_and_extended_data(built: Path) -> None:
    rows = dict(query(built, "SELECT ledger_key, occurred_at FROM loyalty.fct_points_ledger"))
    for r in CARECLOUD:
        assert rows[f"carecloud:{r['record_key']}"] == r["recorded_at"]
    welcome = query(built, "SELECT occurred_on, timezone('UTC', occurred_at)::date, store_id, partner_id "
                           "FROM loyalty.fct_points_ledger WHERE operation_type = 'Welcome bonus'")
    assert welcome == [(date(2026, 9, 30), date(2026, 9, 30), "S1", "P2")]
    ext = query(built, "SELECT expires_on, purchase_value, external_purchase_id FROM loyalty.fct_points_ledger "
                       "WHERE operation_type = 'Purchase'")
    assert ext == [(date(2027, 1, 31), 50.0, "X-A-2026-10-01 10:00:00")]
    # a Capillary transfer at 23:30 UTC belongs to the next Prague day
    late = query(built, "SELECT DISTINCT occurred_on FROM loyalty.fct_points_ledger WHERE transfer_id = 9002")
    assert late == [(date(2026, 10, 5),)]


def test_dim_customers(built: Path) -> None:
    rows = query(built, "SELECT customer_key, lifetime_earned, lifetime_redeemed, lifetime_expired, "
                        "lifetime_transferred_in, lifetime_transferred_out, lifetime_adjusted, lifetime_other, "
                        "current_balance, movements, full_name, queried_identifiers FROM loyalty.dim_customers")
    got = {r[0]: r[1:] for r in rows}
    assert got == {
        "carecloud:A": (165.0, 30.0, 10.0, 0.0, 0.0, -5.0, 0.0, 120.0, 6, None, None),
        "carecloud:B": (260.0, 80.0, 15.0, 0.0, 0.0, 0.0, 7.0, 172.0, 5, None, None),
        "capillary:101": (0.0, 0.0, 0.0, 0.0, 55.0, 0.0, 0.0, -55.0, 2, "Ann Able", "101"),
        "capillary:102": (0.0, 0.0, 0.0, 50.0, 20.0, 0.0, 0.0, 30.0, 2, "Bob Baker", "102"),
        "capillary:103": (0.0, 0.0, 0.0, 25.0, 0.0, 0.0, 0.0, 25.0, 2, None, "103"),
    }
    # the independent computation agrees
    balances = defaultdict(float)
    for customer, _, points, _ in expected_ledger(CARECLOUD, TRANSFERS).values():
        balances[customer] += points
    assert {k: v[7] for k, v in got.items()} == dict(balances)


def test_daily_running_balance(built: Path) -> None:
    rows = query(built, "SELECT customer_key, activity_on, net_points, running_balance "
                        "FROM loyalty.agg_customer_points_daily")
    assert {(r[0], r[1]): (r[2], r[3]) for r in rows} == expected_daily(expected_ledger(CARECLOUD, TRANSFERS))


def test_points_expiring(built: Path) -> None:
    rows = query(built, "SELECT customer_key, expires_on, days_until_expiration, expiring_points, "
                        "expiring_points_capped, as_of_date FROM loyalty.agg_points_expiring ORDER BY 1, 2")
    as_of = date.fromisoformat(AS_OF)
    # A's 2026-11-01 expiration is before the as-of date, so it is not upcoming
    assert rows == [
        ("carecloud:A", date(2027, 1, 31), (date(2027, 1, 31) - as_of).days, 100.0, 100.0, as_of),
        ("carecloud:B", date(2026, 12, 24), (date(2026, 12, 24) - as_of).days, 200.0, 172.0, as_of),
        ("carecloud:B", date(2027, 3, 1), (date(2027, 3, 1) - as_of).days, 60.0, 0.0, as_of),
    ]


def test_transfer_network_and_stores(built: Path) -> None:
    edges = query(built, "SELECT edge_key, transfers, points_transferred, sender_name, receiver_name "
                         "FROM loyalty.agg_transfer_network ORDER BY 1")
    assert edges == [("101->102", 1, 50.0, "Ann Able", "Bob Baker"), ("101->103", 1, 5.0, "Ann Able", None),
                     ("102->103", 1, 20.0, "Bob Baker", None)]
    stores = query(built, "SELECT store_month_key, movements, customers, earned, redeemed, expired, adjusted, "
                          "net_points, purchase_value FROM loyalty.agg_store_points_monthly ORDER BY 1")
    assert stores == [
        ("S1:P1:2026-10", 6, 2, 300.0, 110.0, 15.0, 7.0, 182.0, 50.0),
        ("S1:P1:2026-11", 2, 1, 0.0, 0.0, 10.0, -5.0, -15.0, 0.0),
        ("S1:P2:2026-09", 1, 1, 25.0, 0.0, 0.0, 0.0, 25.0, 0.0),
        ("S2:P1:2026-10", 1, 1, 40.0, 0.0, 0.0, 0.0, 40.0, 20.0),
        ("S2:P1:2026-11", 1, 1, 60.0, 0.0, 0.0, 0.0, 60.0, 0.0),
    ]


def test_schemas_and_docs(built: Path) -> None:
    schemas = dict(query(built, "SELECT table_name, table_schema FROM information_schema.tables "
                                "WHERE table_schema LIKE 'loyalty%' AND table_schema <> 'loyalty_raw'"))
    assert schemas["fct_points_ledger"] == "loyalty"
    assert schemas["agg_points_expiring"] == "loyalty"
    assert schemas["stg_carecloud__point_history"] == "loyalty_staging"
    assert schemas["int_points_ledger_pivoted"] == "loyalty_intermediate"


def test_build_drops_marts_left_under_their_old_names(built: Path, tmp_path: Path) -> None:
    """A warehouse built before the agg_ prefix still has the old tables: any build drops them (on-run-start), so
    a reader still using an old name gets an error, not figures that stopped updating."""
    warehouse = copy_of(built, tmp_path)
    old_names = ["customer_points_daily", "store_points_monthly", "transfer_network", "points_expiring"]
    con = duckdb.connect(str(warehouse))
    try:
        for name in old_names:
            con.execute(f"CREATE TABLE loyalty.{name} AS SELECT 1 AS stale")
    finally:
        con.close()
    assert run_dbt(warehouse, ["run", "--select", "int_points_ledger_pivoted"], target_dir=tmp_path / "t") == 0
    left = query(warehouse, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'loyalty'")
    assert not {name for (name,) in left} & set(old_names)
    assert ("agg_customer_points_daily",) in left


def test_unit_tests_fail_when_the_logic_they_pin_breaks(built: Path, tmp_path: Path) -> None:
    """The dbt unit tests can fail: on a copy of the project with the redeem sign flipped and the expiry cap
    removed, exactly the two unit tests pinning them fail, and the others still pass."""
    project = tmp_path / "sql"
    shutil.copytree(SQL_DIR, project, ignore=shutil.ignore_patterns("target", "logs", "dbt_packages"))
    signed = project / "models" / "intermediate" / "int_carecloud__point_history_signed.sql"
    text = signed.read_text()
    assert "when 'redeem' then -abs(point_amount)" in text
    signed.write_text(text.replace("when 'redeem' then -abs(point_amount)", "when 'redeem' then abs(point_amount)"))
    expiring = project / "models" / "marts" / "agg_points_expiring.sql"
    text = expiring.read_text()
    assert "greatest(dim_customers.current_balance, 0)" in text
    expiring.write_text(text.replace("greatest(dim_customers.current_balance, 0)", "ranked.cumulative_expiring"))
    warehouse = copy_of(built, tmp_path)
    assert run_dbt(warehouse, ["test", "--select", "test_type:unit"], project_dir=project,
                   target_dir=tmp_path / "target") == 1
    status = {n.unique_id.split(".")[-1]: n.status for n in last_results() if n.resource_type == "unit_test"}
    assert status.pop("int_carecloud__point_history_signed_signs_by_movement_type") == "fail"
    assert status.pop("agg_points_expiring_caps_cumulative_expirations_at_the_balance") == "fail"
    assert status and set(status.values()) == {"pass"}, status


def test_docs_generate_and_every_column_described(built: Path, tmp_path: Path) -> None:
    """`dbt docs generate` works, and every column that exists in the warehouse for a model or seed has a
    description in the YAML (catalog = the real columns, manifest = the documentation)."""
    target = tmp_path / "target"
    assert run_dbt(built, ["docs", "generate", *VARS], target_dir=target) == 0
    manifest = json.loads((target / "manifest.json").read_text())
    catalog = json.loads((target / "catalog.json").read_text())
    undocumented = []
    for uid, node in catalog["nodes"].items():
        if not uid.startswith(("model.", "seed.")):
            continue
        doc = manifest["nodes"][uid]
        if not doc["description"].strip():
            undocumented.append(uid)
        described = {c.lower() for c, v in doc["columns"].items() if v["description"].strip()}
        undocumented += [f"{uid}.{c}" for c in node["columns"] if c.lower() not in described]
    assert len(catalog["nodes"]) >= 11
    assert not undocumented
    assert (target / "index.html").exists()


def test_second_build_touches_only_new_rows_while_connection_open(built: Path, tmp_path: Path) -> None:
    warehouse = copy_of(built, tmp_path)
    before = dict(query(warehouse, "SELECT ledger_key, _dbt_invocation_id FROM loyalty.fct_points_ledger"))
    daily_before = dict(query(warehouse, "SELECT customer_day_key, _dbt_invocation_id "
                                         "FROM loyalty.agg_customer_points_daily"))
    # the pipeline's runner keeps its own connection to the file open while dbt runs in the same process
    holder = duckdb.connect(str(warehouse))
    try:
        insert_carecloud(holder, [LATE_CARECLOUD], "run-2")
        insert_transfer(holder, NEW_TRANSFER)
        assert build(warehouse, tmp_path / "target") == 0, failed_nodes()
        after = dict(holder.execute("SELECT ledger_key, _dbt_invocation_id FROM loyalty.fct_points_ledger")
                     .fetchall())
        daily_after = holder.execute("SELECT customer_day_key, customer_key, activity_on, _dbt_invocation_id, "
                                     "net_points, running_balance FROM loyalty.agg_customer_points_daily").fetchall()
    finally:
        holder.close()

    new_keys = {f"carecloud:{LATE_CARECLOUD['record_key']}", "capillary:9004:out", "capillary:9004:in"}
    assert set(after) - set(before) == new_keys
    second_run = after[next(iter(new_keys))]
    assert {k for k, inv in after.items() if inv == second_run} == new_keys   # old rows untouched
    assert all(after[k] == inv for k, inv in before.items())

    # daily: exactly the affected customers from their earliest changed day were rewritten
    ledger = expected_ledger(CARECLOUD + [LATE_CARECLOUD], TRANSFERS + [NEW_TRANSFER])
    expected = expected_daily(ledger)
    changed_from = {"carecloud:A": date(2026, 10, 2), "capillary:103": date(2026, 11, 15),
                    "capillary:101": date(2026, 11, 15)}
    rewritten = {(c, d) for _, c, d, inv, _, _ in daily_after if inv == second_run}
    assert rewritten == {(c, d) for (c, d) in expected if c in changed_from and d >= changed_from[c]}
    assert {(c, d): (n, b) for _, c, d, _, n, b in daily_after} == expected
    assert all(inv == daily_before[k] for k, c, d, inv, _, _ in daily_after if (c, d) not in rewritten)


def test_seed_edit_rewrites_only_affected_rows(built: Path, tmp_path: Path) -> None:
    """An analyst maps a new operation name in the seed: the next incremental build rewrites just those ledger
    rows and that customer's days from the first affected day on."""
    warehouse = copy_of(built, tmp_path)
    project = tmp_path / "sql"
    shutil.copytree(SQL_DIR, project, ignore=shutil.ignore_patterns("target", "logs", "dbt_packages"))
    with open(project / "seeds" / "carecloud_operation_types.csv", "a", encoding="utf-8") as f:
        f.write("Mystery operation,earn,Newly mapped by an analyst\n")
    assert run_dbt(warehouse, ["build", *VARS], target_dir=tmp_path / "target", project_dir=project) == 0
    rows = query(warehouse, "SELECT ledger_key, movement_type, points, _dbt_invocation_id "
                            "FROM loyalty.fct_points_ledger")
    first_run = query(built, "SELECT DISTINCT _dbt_invocation_id FROM loyalty.fct_points_ledger")[0][0]
    rewritten = [(k, mt, p) for k, mt, p, inv in rows if inv != first_run]
    assert rewritten == [(f"carecloud:{CARECLOUD[9]['record_key']}", "earn", 7.0)]
    days = query(warehouse, "SELECT customer_key, activity_on FROM loyalty.agg_customer_points_daily "
                            "WHERE _dbt_invocation_id <> ? ORDER BY 2", [first_run])
    assert days == [("carecloud:B", date(2026, 10, 22)), ("carecloud:B", date(2026, 11, 10))]
    assert query(warehouse, "SELECT lifetime_earned, lifetime_other, current_balance FROM loyalty.dim_customers "
                            "WHERE customer_key = 'carecloud:B'") == [(267.0, 0.0, 172.0)]


def test_holder_with_other_duckdb_config_is_refused_clearly(built: Path, tmp_path: Path) -> None:
    """The documented limit of running dbt beside an open connection: a holder opened with any config option
    makes DuckDB refuse dbt's connection; run_dbt reports "could not run" (2), it does not raise."""
    warehouse = copy_of(built, tmp_path)
    holder = duckdb.connect(str(warehouse), config={"threads": 1})
    try:
        assert run_dbt(warehouse, ["run", "--select", "dim_customers"], target_dir=tmp_path / "target") == 2
    finally:
        holder.close()


def test_reconciliation_fails_when_raw_rows_dropped_or_doubled(built: Path, tmp_path: Path) -> None:
    """Break the raw data after a build, on purpose, in one rebuild: drop one of A's records and double one of
    B's; drop transfer 9003 (101 -> 103) and double transfer 9001 (101 -> 102). Each damage touches a customer no
    other damage touches (A, B; 103, 102), so the reconciliation tests' failing rows show each one is caught."""
    warehouse = copy_of(built, tmp_path)
    con = duckdb.connect(str(warehouse))
    try:
        con.execute("DELETE FROM loyalty_raw.carecloud_point_history WHERE record_key = ?", [CARECLOUD[2]["record_key"]])
        con.execute("INSERT INTO loyalty_raw.carecloud_point_history SELECT * FROM "
                    "loyalty_raw.carecloud_point_history WHERE record_key = ?", [CARECLOUD[7]["record_key"]])
        con.execute("DELETE FROM loyalty_raw.capillary_points_transfers WHERE transfer_id = 9003")
        con.execute("INSERT INTO loyalty_raw.capillary_points_transfers SELECT * FROM "
                    "loyalty_raw.capillary_points_transfers WHERE transfer_id = 9001")
    finally:
        con.close()
    assert build(warehouse, tmp_path / "target") == 1
    failures = {n.unique_id.split(".")[2]: n.failures for n in last_results() if n.status == "fail"}
    assert failures["assert_ledger_reconciles_with_carecloud_raw"] == 2
    assert failures["assert_ledger_reconciles_with_capillary_raw"] == 3
    # the failing rows are kept for whoever investigates (store_failures on the reconciliation tests)
    flagged = query(warehouse, "SELECT customer_id FROM loyalty_audit.assert_ledger_reconciles_with_carecloud_raw "
                               "ORDER BY 1")
    assert flagged == [("A",), ("B",)]
    flagged = query(warehouse, "SELECT customer_id FROM loyalty_audit.assert_ledger_reconciles_with_capillary_raw "
                               "ORDER BY 1")
    assert flagged == [("101",), ("102",), ("103",)]


def test_cli_models_refuses_missing_warehouse(tmp_path: Path) -> None:
    """`loyalty-etl models` on a warehouse that was never loaded: a clear message, no traceback, no new file.
    (The successful CLI path is exercised end to end in tests/test_models_sandbox.py.)"""
    missing = tmp_path / "missing" / "loyalty_warehouse.duckdb"
    env = {**os.environ, "DESTINATION__DUCKDB__CREDENTIALS": str(missing)}
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "models"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "does not exist yet" in proc.stderr and "Traceback" not in proc.stderr
    assert not missing.exists()
