"""The pipeline end to end: the real CLI in a subprocess, real HTTP to the sandbox on loopback, a real DuckDB file,
compared row for row with the sandbox's ground truth."""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs

import pytest

from tests.chaos.compare import compare
from tests.helpers.cli import cli_env, query, run_cli

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 11, 20, tzinfo=UTC)


def _until(instant: dt.datetime) -> str:
    return instant.strftime("%Y-%m-%dT%H:%M:%SZ")


def _run(env: dict[str, str], until: dt.datetime, *args: str, expect: int = 0) -> str:
    proc = run_cli(env, "run", "--no-models", "--until", _until(until), *args)
    assert proc.returncode == expect, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    return proc.stdout


def _assert_truth(wh: Path, sb, until: dt.datetime, sources=("carecloud", "capillary")) -> None:
    """Every truth row before `until` (no lower bound), row for row, child tables and extended columns included;
    no key doubled."""
    cmp = compare(wh, sb.truth(), until=until, sources=sources, ledger=False)
    assert cmp.ok, str(cmp)


def _rows(wh: Path) -> dict[str, int]:
    return {t: query(wh, f"select count(*) from loyalty_raw.{t}")[0][0]
            for t in ("carecloud_point_history", "capillary_customer_transfers", "capillary_points_transfers",
                      "capillary_transfer_parties")}


def test_incremental_runs_match_truth(sandbox_factory, sandbox_env, tmp_path: Path) -> None:
    """First run = truth; second run with nothing new adds nothing; after the clock moves, exactly the new and the
    late rows arrive; identical records all kept; invalid extended_data kept raw and recorded."""
    # a short data span with many late records, so two days of clock movement surely bring new and late rows
    sb = sandbox_factory(customers=40, now=NOW, data_start="2026-09-01", data_end="2027-01-01",
                         records_per_customer=30, late_share=0.5)
    wh = tmp_path / "wh" / "loyalty_warehouse.duckdb"
    env = cli_env(sandbox_env(sb, wh))

    out = _run(env, NOW)
    assert "carecloud: 40/40 customers done" in out
    _assert_truth(wh, sb, NOW)
    truth = sb.truth().carecloud_point_history.to_pylist()
    loaded = [r for r in truth if r["recorded_at"] is None or r["recorded_at"] < NOW]
    # the sandbox's awkward cases are present, so the equality above covers them
    dups = [r for r in loaded if "duplicate" in r["anomaly"]]
    assert dups, "sandbox should contain identical records"
    invalid = [r for r in loaded if "invalid_json" in r["anomaly"]]
    assert invalid, "sandbox should contain invalid extended_data"
    issues = query(wh, "select count(*) from loyalty_raw.sync_issues where code = 'invalid_extended_data'")[0][0]
    assert issues == len(invalid)
    first = _rows(wh)
    assert first["carecloud_point_history"] == len(loaded)
    # dlt's staging tables lived in an in-memory database (pipelines/destination.py), not in the warehouse file
    assert query(wh, "select schema_name from information_schema.schemata where schema_name like '%staging%'") == []
    state = query(wh, "select count(*), min(last_success_end), max(last_success_end) "
                      "from loyalty_raw._customer_sync_state where source = 'carecloud'")[0]
    assert state[0] == 40 and state[1] == state[2] == NOW

    # nothing new: nothing added, the runs row says so
    _run(env, NOW)
    assert _rows(wh) == first
    _assert_truth(wh, sb, NOW)
    runs = query(wh, "select status, exit_code, customers_done from loyalty_raw.runs order by started_at")
    assert [r[:2] for r in runs] == [("ok", 0), ("ok", 0)] and runs[0][2] == 80

    # two days later: new records and late ones (timestamped before the last end, visible only now)
    later = NOW + dt.timedelta(days=2)
    sb.set_now(later)
    late = [r for r in sb.truth().carecloud_point_history.to_pylist()
            if r["recorded_at"] is not None and r["recorded_at"] < NOW < r["visible_from"]]
    assert late, "sandbox should have late records"
    _run(env, later)
    _assert_truth(wh, sb, later)
    assert _rows(wh)["carecloud_point_history"] > first["carecloud_point_history"]


def test_dst_autumn_hour_complete_across_run_boundaries(sandbox_factory, sandbox_env, tmp_path: Path) -> None:
    """Runs whose window ends fall inside the repeated autumn hour (first and second 02:30 local) and the spring
    gap: every record is loaded exactly once."""
    sb = sandbox_factory(customers=30, now=NOW, dst_every=3)
    wh = tmp_path / "loyalty_warehouse.duckdb"
    env = cli_env(sandbox_env(sb, wh))
    repeated = [r for r in sb.truth().carecloud_point_history.to_pylist()
                if (r["point_history_record_time"] or "").startswith("2025-10-26 02:")]
    assert len(repeated) >= 3, "sandbox should have records in the repeated hour"
    for end in ("2025-03-30T01:00:00Z", "2025-10-26T00:30:00Z", "2025-10-26T01:30:00Z"):
        until = dt.datetime.fromisoformat(end.replace("Z", "+00:00"))
        _run(env, until, "--source", "carecloud")
        _assert_truth(wh, sb, until, ("carecloud",))
    keys = query(wh, "select count(*) from loyalty_raw.carecloud_point_history "
                     "where strftime(point_history_record_time, '%Y-%m-%d %H') = '2025-10-26 02'")[0][0]
    assert keys == len(repeated)


def test_unknown_blank_duplicate_customers_recorded_others_load(sandbox_factory, sandbox_env,
                                                                tmp_path: Path) -> None:
    sb = sandbox_factory(customers=30, now=NOW)
    wh = tmp_path / "loyalty_warehouse.duckdb"
    env = cli_env(sandbox_env(sb, wh, unknown=3, duplicates=2, blanks=2))
    out = _run(env, NOW, expect=2)
    assert "failed:" in out
    _assert_truth(wh, sb, NOW)
    unknown = {s: set(sb.unknown_customer_ids(s, 3)) for s in ("carecloud", "capillary")}
    for source in ("carecloud", "capillary"):
        rows = query(wh, "select customer_id from loyalty_raw.sync_issues where source = ? and code = 'not_found'",
                     [source])
        assert {r[0] for r in rows} == unknown[source]
        failing = query(wh, "select customer_id, consecutive_failures, last_success_end from "
                            "loyalty_raw._customer_sync_state where source = ? and last_error is not null", [source])
        assert {r[0] for r in failing} == unknown[source] and all(r[1] == 1 and r[2] is None for r in failing)
        codes = {r[0] for r in query(wh, "select code from loyalty_raw.sync_issues where source = ?", [source])}
        assert {"blank_customer_id", "duplicate_customer_id"} <= codes
    run = query(wh, "select status, exit_code, customers_failed, customers_skipped from loyalty_raw.runs")[0]
    assert run == ("partial", 2, 6, 8)


def test_faults_and_token_expiry_change_nothing(sandbox_factory, sandbox_env, tmp_path: Path) -> None:
    """429 bursts (half with Retry-After), 503s, dropped connections, truncated bodies and a token that expires
    every 15 requests: the result is the truth, and the run report counts the retries."""
    sb = sandbox_factory(customers=30, now=NOW, random_429_share=0.15, retry_after_share=0.5,
                         error_503_share=0.08, drop_share=0.02, truncate_share=0.02, token_max_requests=15)
    wh = tmp_path / "loyalty_warehouse.duckdb"
    # small rounds: several load packages and bookkeeping commits in one run
    env = cli_env(sandbox_env(sb, wh), SOURCES__CARECLOUD__MAX_ATTEMPTS=10, SOURCES__CAPILLARY__MAX_ATTEMPTS=10,
                  LOYALTY__CHUNK_CUSTOMERS=8)
    _run(env, NOW)
    _assert_truth(wh, sb, NOW)
    retries, x429 = query(wh, "select retries, http_429 from loyalty_raw.runs")[0]
    assert retries > 0 and x429 > 0
    stats = sb.stats()
    expired = stats["faults"].get("token_expired", 0)
    logins = sum(n for endpoint, by_status in stats["requests"].items() if endpoint.endswith("login")
                 for status, n in by_status.items() if status in ("200", "201"))
    # one login for all threads per expiry (8 customers in flight would otherwise log in up to 8 times each)
    assert expired >= 2 and logins == expired + 1, (expired, logins, stats["requests"])


def test_capillary_oauth(sandbox_factory, sandbox_env, tmp_path: Path) -> None:
    sb = sandbox_factory(customers=20, now=NOW, capillary_oauth_ttl_seconds=1)
    wh = tmp_path / "loyalty_warehouse.duckdb"
    env = cli_env(sandbox_env(sb, wh), SOURCES__CAPILLARY__CREDENTIALS__TILL_ID="",
                  SOURCES__CAPILLARY__CREDENTIALS__PASSWORD="", SOURCES__CAPILLARY__CREDENTIALS__KEY="sandbox-key",
                  SOURCES__CAPILLARY__CREDENTIALS__SECRET="sandbox-secret", SOURCES__CAPILLARY__RATE_LIMIT="20")
    _run(env, NOW, "--source", "capillary")
    _assert_truth(wh, sb, NOW, ("capillary",))
    logins = sum(n for endpoint, by_status in sb.stats()["requests"].items() if "oauth" in endpoint
                 for status, n in by_status.items() if status == "200")
    assert logins >= 2  # the 1 s token was renewed before it expired, and nothing failed


def test_bad_input_kept_and_recorded(sandbox_factory, sandbox_env, tmp_path: Path) -> None:
    """New fields, a number sent as a string, null/malformed record times and huge notes: every record loads,
    each oddity is recorded."""
    sb = sandbox_factory(customers=30, now=NOW, extra_fields=True, type_drift=True, bad_times=True, huge_notes=True)
    wh = tmp_path / "loyalty_warehouse.duckdb"
    # many small batches and record-bounded rounds: column types must hold across batches and loads
    env = cli_env(sandbox_env(sb, wh), LOYALTY__BATCH_ROWS=150, LOYALTY__ROUND_RECORDS=100,
                  SOURCES__CARECLOUD__CONCURRENCY=2)
    _run(env, NOW, "--source", "carecloud")
    _assert_truth(wh, sb, NOW, ("carecloud",))
    codes = {r[0]: r[1] for r in query(wh, "select code, count(*) from loyalty_raw.sync_issues group by code")}
    assert {"unknown_field", "type_coerced", "bad_record_time"} <= set(codes)
    cols = {r[0]: r[1] for r in query(wh, "select column_name, data_type from information_schema.columns "
                                          "where table_name = 'carecloud_point_history'")}
    assert cols["point_amount"] == "DOUBLE" and cols["recorded_at"] == "TIMESTAMP WITH TIME ZONE"
    assert cols["point_history_record_time"] == "TIMESTAMP" and "record_source" in cols
    rounds = query(wh, "select count(*) from loyalty_raw._dlt_loads")[0][0]
    assert rounds >= 2


def test_second_run_refused_while_first_holds_lock(tmp_path: Path) -> None:
    from pipelines.lock import RunLock, RunLocked

    wh = tmp_path / "loyalty_warehouse.duckdb"
    with RunLock(wh):
        with pytest.raises(RunLocked, match="another run is using this warehouse"):
            RunLock(wh).acquire()
    RunLock(wh).acquire().release()


def test_customers_override_file(sandbox_factory, sandbox_env, tmp_path: Path) -> None:
    sb = sandbox_factory(customers=20, now=NOW)
    wh = tmp_path / "loyalty_warehouse.duckdb"
    env = cli_env(sandbox_env(sb, wh))
    chosen = sb.customer_ids("carecloud")[:5]
    path = tmp_path / "some.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["customer_id"])
        w.writerows([[c] for c in chosen])
    _run(env, NOW, "--source", "carecloud", "--customers", str(path))
    got = {r[0] for r in query(wh, "select distinct customer_id from loyalty_raw.carecloud_point_history")}
    assert got <= set(chosen) and got


def _paging_api(sb, calls: list[int], advance_on_page: Callable[[list[int]], bool]):
    """A CareCloud client on `sb` (500-record pages) that moves the sandbox clock three days on after each page for
    which `advance_on_page(offsets fetched so far)` holds: late records of the window become visible mid-fetch."""
    from pipelines.carecloud.helpers import CareCloudApi
    from pipelines.carecloud.config import CareCloudConfiguration, CareCloudCredentials
    from pipelines.http import HttpStats
    from pipelines.sandbox.config import CARECLOUD_APP_ID, CARECLOUD_LOGIN, CARECLOUD_PASSWORD

    settings = CareCloudConfiguration(
        name="carecloud", base_url=sb.carecloud_base_url, rate_limit=0, concurrency=1, max_attempts=3,
        retry_backoff=0.01, page_size=500, credentials=CareCloudCredentials(
            login=CARECLOUD_LOGIN, password=CARECLOUD_PASSWORD, external_app_id=CARECLOUD_APP_ID))
    api = CareCloudApi(settings, HttpStats())
    page = api._page

    def page_then_time_passes(query):  # a page is a generator of request steps (pipelines/http.py)
        result = yield from page(query)
        calls.append(int(parse_qs(query)["offset"][0]))
        if advance_on_page(calls):
            sb.advance(3 * 86400)
        return result

    api._page = page_then_time_passes  # type: ignore[method-assign]
    return api


def test_records_arriving_while_paging_are_neither_skipped_nor_doubled(sandbox_factory) -> None:
    """Late records become visible between page 1 and page 2 of a heavy customer (the sandbox clock moves during
    the fetch): `total_items` changes, the customer-window is fetched again, and the result is the truth."""
    sb = sandbox_factory(customers=10, now=NOW, late_share=0.3, data_start="2026-10-01", data_end="2027-01-01")
    heavy = sb.customer_ids("carecloud")[7]  # index % heavy_every == 7: thousands of records, several pages
    calls: list[int] = []
    api = _paging_api(sb, calls, lambda calls: len(calls) == 1)
    records, attempts = api.fetch(heavy, "2024-01-01 00:00:00", "2026-11-20 01:00:00")
    assert attempts == 2 and calls.count(0) == 2
    truth = [r for r in sb.truth().carecloud_point_history.to_pylist()
             if r["customer_id"] == heavy and r["point_history_record_time"] and
             "2024-01-01 00:00:00" <= r["point_history_record_time"] <= "2026-11-20 01:00:00"]
    key = lambda r: (float(r["point_amount"]), *(str(r.get(f)) for f in (  # noqa: E731
        "point_history_record_time", "extended_data", "point_operation_note", "store_id")))
    assert sorted(map(key, records)) == sorted(map(key, truth))
    assert len(truth) > 1000


def test_paging_that_never_settles_fails_the_customer_after_max_paging_attempts(sandbox_factory) -> None:
    """Records keep arriving after every first page: the customer-window is fetched MAX_PAGING_ATTEMPTS times, then
    the customer fails for this run with `unstable_paging` (retried next run) instead of loading a shifted result."""
    from pipelines.carecloud.settings import MAX_PAGING_ATTEMPTS
    from pipelines.errors import CustomerFailed

    sb = sandbox_factory(customers=10, now=NOW, late_share=0.3, data_start="2026-10-01", data_end="2027-01-01")
    heavy = sb.customer_ids("carecloud")[7]
    calls: list[int] = []
    api = _paging_api(sb, calls, lambda calls: calls[-1] == 0)
    with pytest.raises(CustomerFailed) as failed:
        api.fetch(heavy, "2024-01-01 00:00:00", "2026-12-31 01:00:00")
    assert failed.value.code == "unstable_paging", failed.value
    assert f"fetched {MAX_PAGING_ATTEMPTS} times" in str(failed.value) and "totals seen [" in failed.value.detail
    assert calls.count(0) == MAX_PAGING_ATTEMPTS


def test_refused_login_fails_the_run_clearly_and_the_other_source_loads(sandbox_factory, sandbox_env,
                                                                       tmp_path: Path) -> None:
    sb = sandbox_factory(customers=10, now=NOW)
    wh = tmp_path / "loyalty_warehouse.duckdb"
    env = cli_env(sandbox_env(sb, wh), SOURCES__CARECLOUD__CREDENTIALS__PASSWORD="wrong-password-123")
    out = _run(env, NOW, expect=1)
    assert "CareCloud login failed" in out and "wrong-password-123" not in out
    _assert_truth(wh, sb, NOW, ("capillary",))
    status, error = query(wh, "select status, error from loyalty_raw.runs")[0]
    assert status == "failed" and "login failed" in error
    assert query(wh, "select count(*) from loyalty_raw._customer_sync_state where source = 'carecloud'")[0][0] == 0
