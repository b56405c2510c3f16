"""The dashboard on a real warehouse: the sandbox serves both vendor APIs, `loyalty-etl run` loads them and builds the
marts (once per module), and Streamlit's AppTest opens every page. The figures a page shows are checked against the
ledger computed here independently (pandas over `fct_points_ledger`, not the page's SQL), row for row where the page
shows a table. A second process holding the file as DuckDB's single writer makes pages say a load is running."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from pipelines.sandbox import FaultConfig, Sandbox, SandboxConfig

from dashboard import ui
from dashboard.db import BUSY_MESSAGE, TIMEZONE_ENV, WAREHOUSE_ENV
from pipelines.commands.dashboard import app_path

ROOT = Path(__file__).resolve().parents[1]
APP = app_path()
NOW = "2026-11-20T00:00:00+00:00"
TZ = "America/New_York"   # not the default, so a page that ignored the setting would fail
PAGES = ["overview", "trends", "stores", "transfers", "expirations", "customer", "health"]


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small warehouse loaded from the sandbox by the real CLI, marts built (shared by the module's tests)."""
    path = tmp_path_factory.mktemp("dashboard") / "loyalty_warehouse.duckdb"
    sb = Sandbox(SandboxConfig(customers=30, seed=7, now=NOW), FaultConfig())
    sb.start("127.0.0.1", 0)
    try:
        env = {**os.environ, **sb.env(path),
               "SOURCES__CARECLOUD__RATE_LIMIT": "1000", "SOURCES__CAPILLARY__RATE_LIMIT": "1000"}
        run = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "--until", NOW], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
    finally:
        sb.stop()
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "models: ok" in run.stdout
    return path


@pytest.fixture(scope="module")
def ledger(warehouse: Path) -> pd.DataFrame:
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        con.execute("SET TimeZone = 'UTC'")
        frame = con.execute("select * from loyalty.fct_points_ledger").df()
    finally:
        con.close()
    frame["occurred_on"] = pd.to_datetime(frame["occurred_on"]).dt.date
    assert set(frame["source_system"]) == {"carecloud", "capillary"}
    return frame


def mart(warehouse: Path, sql: str) -> pd.DataFrame:
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        return con.execute(sql).df()
    finally:
        con.close()


def open_page(page: str, path: Path, monkeypatch: pytest.MonkeyPatch, at: AppTest | None = None) -> AppTest:
    """Run one page on `path`. Pass `at` to go on in the same browser session: a new AppTest scans every
    installed package for Streamlit components (seconds), so loops over pages reuse one."""
    monkeypatch.setenv(WAREHOUSE_ENV, str(path))
    monkeypatch.setenv(TIMEZONE_ENV, TZ)
    # the timeout only catches a hung script: a page's run is waited for to its end, however loaded the machine
    # (at 60 s, a first run importing pandas/altair on a busy 2-core box could time out)
    at = at or AppTest.from_file(str(APP), default_timeout=600)
    at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def metrics(at: AppTest) -> dict[str, tuple[str, str | None]]:
    return {m.label: (m.value, m.delta) for m in at.metric}


def between(frame: pd.DataFrame, start: dt.date, end: dt.date) -> pd.DataFrame:
    return frame[(frame["occurred_on"] >= start) & (frame["occurred_on"] <= end)]


def signed_sum(frame: pd.DataFrame, movement: str) -> float:
    return float(frame.loc[frame["movement_type"] == movement, "points"].sum())


def test_overview_matches_ledger_for_two_periods(warehouse, ledger, monkeypatch) -> None:
    at = open_page("overview", warehouse, monkeypatch)
    last = max(ledger["occurred_on"])
    for preset, days in (("Last 30 days", 30), ("Last 365 days", 365)):
        if preset != "Last 30 days":
            at.selectbox(key="overview_preset").set_value(preset).run()
            assert not at.exception
        start = last - dt.timedelta(days=days - 1)
        prev_start, prev_end = start - dt.timedelta(days=days), start - dt.timedelta(days=1)
        cur, prev = between(ledger, start, last), between(ledger, prev_start, prev_end)
        want = {
            "Points issued": (signed_sum(cur, "earn"), signed_sum(prev, "earn")),
            "Points redeemed": (-signed_sum(cur, "redeem"), -signed_sum(prev, "redeem")),
            "Points expired": (-signed_sum(cur, "expire"), -signed_sum(prev, "expire")),
            "Points transferred": (signed_sum(cur, "transfer_in"), signed_sum(prev, "transfer_in")),
        }
        shown = metrics(at)
        for label, (now_v, before_v) in want.items():
            assert shown[label] == (ui.points(now_v), ui.delta(now_v, before_v)), label
        # the small chart under "Points issued": one bar per day of the period, quiet days zero
        bars = list(next(m for m in at.metric if m.label == "Points issued").proto.chart_data)
        per_day = cur[cur["movement_type"] == "earn"].groupby("occurred_on")["points"].sum()
        assert bars == pytest.approx([per_day.get(start + dt.timedelta(days=i), 0.0) for i in range(days)])
        active, active_before = cur["customer_key"].nunique(), prev["customer_key"].nunique()
        assert active > 0
        assert shown["Active customers"] == (ui.count(active), ui.delta(active, active_before))

        table = at.dataframe[0].value.set_index("system")
        for system, rows in cur.groupby("source_system"):
            assert table.loc[system, "issued"] == pytest.approx(signed_sum(rows, "earn"))
            assert table.loc[system, "redeemed"] == pytest.approx(-signed_sum(rows, "redeem"))
            assert table.loc[system, "net"] == pytest.approx(rows["points"].sum())
            assert table.loc[system, "active_customers"] == rows["customer_key"].nunique()
    # a custom range
    start, end = last - dt.timedelta(days=44), last - dt.timedelta(days=10)
    at.selectbox(key="overview_preset").set_value("Custom").run()
    at.date_input(key="overview_range").set_value((start, end)).run()
    assert not at.exception
    assert metrics(at)["Points issued"][0] == ui.points(signed_sum(between(ledger, start, end), "earn"))
    # people read numbers with thousands separators
    assert any("," in v for v, _ in metrics(at).values()), metrics(at)


def test_trends_monthly_table_matches_ledger(warehouse, ledger, monkeypatch) -> None:
    at = open_page("trends", warehouse, monkeypatch)
    daily = at.dataframe[0].value
    last = max(ledger["occurred_on"])
    assert daily["period"].iloc[0] == last.isoformat()           # newest first, default last 30 days
    assert len(at.get("vega_lite_chart")) == 1

    at.selectbox(key="trends_preset").set_value("Last 365 days").run()
    at.radio(key="trends_grain").set_value("month").run()
    assert not at.exception
    shown = at.dataframe[0].value.set_index("period")
    cur = between(ledger, last - dt.timedelta(days=364), last).copy()
    cur["month"] = [d.strftime("%Y-%m") for d in cur["occurred_on"]]
    want = cur.pivot_table(index="month", columns="movement_type", values="points", aggfunc="sum", fill_value=0)
    assert sorted(shown.index) == sorted(want.index)
    for column in want.columns:
        assert shown.loc[want.index, column].tolist() == pytest.approx(want[column].tolist()), column


def test_stores_and_partners_match_ledger(warehouse, ledger, monkeypatch) -> None:
    at = open_page("stores", warehouse, monkeypatch)
    care = ledger[ledger["source_system"] == "carecloud"].copy()
    care["month"] = [d.replace(day=1) for d in care["occurred_on"]]
    months = sorted(set(care["month"]))
    chosen = care[care["month"] >= months[max(0, len(months) - 12)]]   # the default: the last 12 months

    def by(column: str, blank: str) -> pd.DataFrame:
        keyed = chosen.assign(k=chosen[column].fillna(blank))
        return pd.DataFrame({
            "earned": keyed[keyed["movement_type"] == "earn"].groupby("k")["points"].sum(),
            "redeemed": -keyed[keyed["movement_type"] == "redeem"].groupby("k")["points"].sum(),
            "movements": keyed.groupby("k").size(),
        }).fillna(0)

    stores, partners = at.dataframe[0].value.set_index("store"), at.dataframe[1].value.set_index("partner")
    for shown, want in ((stores, by("store_id", "(no store)")), (partners, by("partner_id", "(no partner)"))):
        assert sorted(shown.index) == sorted(want.index)
        for column in ("earned", "redeemed", "movements"):
            assert shown.loc[want.index, column].tolist() == pytest.approx(want[column].tolist()), column
    assert list(stores["earned"]) == sorted(stores["earned"], reverse=True)
    shown = metrics(at)
    assert shown["Stores with movements"][0] == ui.count(len(want_stores := by("store_id", "(no store)")))
    assert shown["Points earned in stores"][0] == ui.points(want_stores["earned"].sum())


def test_transfers_flows_and_totals_match_ledger(warehouse, ledger, monkeypatch) -> None:
    at = open_page("transfers", warehouse, monkeypatch)
    incoming = ledger[ledger["movement_type"] == "transfer_in"]
    pairs = incoming.groupby(["counterparty_id", "customer_id"])["points"].agg(["sum", "size"])
    shown = metrics(at)
    assert shown["Points transferred"][0] == ui.points(incoming["points"].sum())
    assert shown["Transfers"][0] == ui.count(len(incoming))
    assert shown["Sender → receiver pairs"][0] == ui.count(len(pairs))

    flows = at.dataframe[0].value
    assert len(flows) == min(20, len(pairs))
    assert flows["points"].tolist() == pytest.approx(sorted(pairs["sum"], reverse=True)[: len(flows)])
    for row in flows.itertuples():
        assert pairs.loc[(str(row.sender_id), str(row.receiver_id)), "sum"] == pytest.approx(row.points)
        assert pairs.loc[(str(row.sender_id), str(row.receiver_id)), "size"] == row.transfers
    assert len(at.get("vega_lite_chart")) == 2


def test_expirations_match_ledger_and_mart(warehouse, ledger, monkeypatch) -> None:
    at = open_page("expirations", warehouse, monkeypatch)
    as_of = mart(warehouse, "select max(as_of_date) as d from loyalty.agg_points_expiring")["d"].iloc[0]
    as_of = pd.Timestamp(as_of).date()
    horizon = as_of + dt.timedelta(weeks=12)                    # the page's default
    earn = ledger[(ledger["movement_type"] == "earn") & ledger["expires_on"].notna()].copy()
    earn["expires_on"] = pd.to_datetime(earn["expires_on"]).dt.date
    coming = earn[(earn["expires_on"] >= as_of) & (earn["expires_on"] < horizon)]
    capped = mart(warehouse, f"""select sum(expiring_points_capped) as p from loyalty.agg_points_expiring
                                where expires_on < date '{horizon}'""")["p"].iloc[0]
    shown = metrics(at)
    assert shown["Gross points with those dates"][0] == ui.points(coming["points"].sum())
    assert shown["Points expiring in 12 weeks"][0] == ui.points(0 if pd.isna(capped) else capped)
    assert shown["Customers affected"][0] == ui.count(coming["customer_key"].nunique())
    if len(coming):
        table = at.dataframe[0].value
        assert set(table["customer_id"]) <= set(coming["customer_id"])
        assert len(table) == min(50, coming["customer_key"].nunique())


@pytest.mark.parametrize("system", ["carecloud", "capillary"])
def test_customer_lookup_ledger_and_running_balance(system, warehouse, ledger, monkeypatch) -> None:
    rows = ledger[ledger["source_system"] == system]
    # a customer with several movements, not the one the page shows by default
    counts = rows["customer_id"].value_counts()
    customer_id = str(counts[counts >= 2].index[-1])
    mine = rows[rows["customer_id"] == customer_id].sort_values(["occurred_at", "ledger_key"])

    at = open_page("customer", warehouse, monkeypatch)
    at.radio(key="customer_system").set_value(system).run()
    at.text_input(key="customer_id").input(customer_id).run()
    assert not at.exception, [e.value for e in at.exception]

    shown = at.dataframe[0].value.iloc[::-1]                     # the page lists newest first
    assert shown["ledger_key"].tolist() == mine["ledger_key"].tolist()
    assert shown["points"].tolist() == pytest.approx(mine["points"].tolist())
    assert shown["balance"].tolist() == pytest.approx(mine["points"].cumsum().tolist())
    # times are local wall-clock times in the configured zone
    want_local = mine["occurred_at"].dt.tz_convert(TZ).dt.tz_localize(None)
    assert shown["occurred_at"].tolist() == want_local.tolist()
    dim = mart(warehouse, f"""select current_balance from loyalty.dim_customers
                             where source_system = '{system}' and customer_id = '{customer_id}'""")
    assert metrics(at)["Current balance"][0] == ui.points(mine["points"].sum())
    assert dim["current_balance"].iloc[0] == pytest.approx(mine["points"].sum())

    at.text_input(key="customer_id").input("no-such-customer").run()
    assert not at.exception
    assert any("No " + system + " customer with id `no-such-customer`" in w.value for w in at.warning)


def test_capillary_lookup_by_external_id(warehouse, ledger, monkeypatch) -> None:
    known = mart(warehouse, """select customer_id, external_id from loyalty.dim_customers
                              where source_system = 'capillary' and external_id is not null
                                and external_id <> customer_id order by customer_id limit 1""")
    assert len(known), "the sandbox names Capillary parties with external ids"
    customer_id, external_id = known.iloc[0]
    at = open_page("customer", warehouse, monkeypatch)
    at.radio(key="customer_system").set_value("capillary").run()
    at.text_input(key="customer_id").input(external_id).run()
    assert not at.exception
    assert customer_id in at.subheader[0].value
    mine = ledger[(ledger["source_system"] == "capillary") & (ledger["customer_id"] == customer_id)]
    assert sorted(at.dataframe[0].value["ledger_key"]) == sorted(mine["ledger_key"])


def test_health_shows_run_freshness_and_failing_customers(warehouse, ledger, monkeypatch, tmp_path) -> None:
    at = open_page("health", warehouse, monkeypatch)
    runs = at.dataframe[0].value
    assert runs["status"].tolist() == ["ok"] and runs["command"].tolist() == ["run"]
    assert metrics(at)["Last run"][0] == "OK"
    fresh = at.dataframe[1].value.set_index("source")
    for source, rows in ledger.groupby("source_system"):
        newest = rows["occurred_at"].max().tz_convert(TZ).tz_localize(None)
        assert fresh.loc[source, "newest_movement"] == newest
        assert fresh.loc[source, "customers"] == rows["customer_key"].nunique()
    assert any("No customer is failing" in s.value for s in at.success)
    issues = mart(warehouse, "select source, code, count(*) as n from loyalty_raw.sync_issues group by all")
    if issues.empty:
        assert any("No issues recorded" in s.value for s in at.success)
    else:
        kinds = at.dataframe[2].value
        assert sorted(zip(kinds["source"], kinds["code"], kinds["issues"])) == sorted(
            zip(issues["source"], issues["code"], issues["n"]))

    # a customer that keeps failing shows up with its error
    broken = tmp_path / "loyalty_warehouse.duckdb"
    shutil.copy(warehouse, broken)
    con = duckdb.connect(str(broken))
    victim = con.execute("select source, customer_id from loyalty_raw._customer_sync_state order by all limit 1").fetchone()
    con.execute("""update loyalty_raw._customer_sync_state set consecutive_failures = 3, last_error = 'HTTP 500 x3'
                   where source = ? and customer_id = ?""", victim)
    con.close()
    at = open_page("health", broken, monkeypatch)
    failing = at.dataframe[2].value
    assert failing[["source", "customer_id", "consecutive_failures", "last_error"]].values.tolist() == [
        [victim[0], victim[1], 3, "HTTP 500 x3"]]


def hold_writer(path: Path) -> subprocess.Popen:
    """Another process opens the file as DuckDB's single writer (what a nightly load does) and keeps it open."""
    code = ("import duckdb, sys; con = duckdb.connect(sys.argv[1]); con.execute('select 1'); "
            "print('locked', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_busy_message_while_a_writer_holds_the_file(warehouse, monkeypatch, tmp_path) -> None:
    seen, unseen = tmp_path / "seen" / "w.duckdb", tmp_path / "unseen" / "w.duckdb"
    for copy in (seen, unseen):
        copy.parent.mkdir()
        shutil.copy(warehouse, copy)
    before = metrics(open_page("overview", seen, monkeypatch))

    holders = [hold_writer(seen), hold_writer(unseen)]
    at = None
    try:
        for page in PAGES:                                  # never read before: nothing to show but the message
            at = open_page(page, unseen, monkeypatch, at)
            assert [w.value for w in at.warning] == [BUSY_MESSAGE], page
            assert not at.metric and not at.dataframe, page
        at = open_page("overview", seen, monkeypatch)       # read a moment ago: the last good figures, labelled
        assert [w.value for w in at.warning] == [BUSY_MESSAGE]
        assert metrics(at) == before
    finally:
        for h in holders:
            h.stdin.close()
            h.wait(timeout=30)
            h.stdout.close()

    # the dashboard holds nothing between requests: a writer gets the file at once after pages were read
    for page in PAGES:
        at = open_page(page, unseen, monkeypatch, at)
        assert not at.warning, page
    writer = subprocess.run([sys.executable, "-c", "import duckdb, sys; duckdb.connect(sys.argv[1]).close()",
                             str(unseen)], capture_output=True, text=True, timeout=30)
    assert writer.returncode == 0, writer.stderr


def test_pages_explain_a_missing_or_empty_warehouse(monkeypatch, tmp_path) -> None:
    empty = tmp_path / "empty.duckdb"
    duckdb.connect(str(empty)).close()
    for path, text in ((tmp_path / "nothing-here.duckdb", "No warehouse at"), (empty, "not built yet")):
        at = None
        for page in PAGES:
            at = open_page(page, path, monkeypatch, at)
            assert any(text in i.value for i in at.info), (page, [i.value for i in at.info])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serves_the_app_on_the_configured_warehouse(warehouse) -> None:
    port = free_port()
    env = {**os.environ, "DESTINATION__DUCKDB__CREDENTIALS": str(warehouse)}
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "dashboard", "--port", str(port)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}" in first and str(warehouse) in first, first
        deadline, health = time.monotonic() + 60, ""
        while time.monotonic() < deadline and health != "ok":
            try:
                health = urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read().decode()
            except OSError:
                time.sleep(0.3)
        assert health == "ok"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stdout.close()
