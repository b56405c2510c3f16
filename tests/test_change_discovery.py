"""Issue 17 against the sandbox's ground truth, over simulated nights, through the real CLI: `customers = "api"` and
`selection = "changed"` with a rolling sweep, while customers join, records arrive late and invisible corrections
happen, under 429/503/dropped connections.

- every change discovery can see (an earning, a purchase-linked record, an expiry of a known point record) lands the
  same night it becomes visible; a customer created since the last night is loaded that night;
- once the data stops changing and a sweep period has passed, the changed-mode warehouse holds exactly the rows an
  all-mode run loads (and the truth);
- a night whose discovery listings fail exits 2, says so, keeps the discovery window, and the next night catches up.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from pathlib import Path

from tests.helpers.cli import cli_env, query, run_cli

UTC = dt.timezone.utc
NIGHT0 = dt.datetime(2026, 11, 20, 1, 0, tzinfo=UTC)
SWEEP_DAYS = 2
LAG = dt.timedelta(minutes=10)
ROW = ("customer_id", "point_history_record_time", "point_operation_type", "point_amount", "extended_data")


def _night(k: int) -> dt.datetime:
    return NIGHT0 + dt.timedelta(days=k)


def _run(env: dict[str, str], sb, k: int, *args: str, expect: int = 0) -> str:
    sb.set_now(_night(k) + LAG)
    proc = run_cli(env, "run", "--source", "carecloud", "--no-models", "--until",
                   _night(k).strftime("%Y-%m-%dT%H:%M:%SZ"), *args)
    assert proc.returncode == expect, f"night {k}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _loaded(wh: Path) -> Counter:
    return Counter((c, t.strftime("%Y-%m-%d %H:%M:%S"), o, float(a), e) for c, t, o, a, e in query(
        wh, "SELECT customer_id, point_history_record_time, point_operation_type, point_amount, extended_data_raw "
            "FROM loyalty_raw.carecloud_point_history"))


def _truth(sb, k: int, traced_only: bool) -> Counter:
    """History rows recorded before night k's window end and visible at its run (of every customer created by
    then); `traced_only`: only those a discovery listing names."""
    rows = sb.listing_truth()["carecloud_point_history_trace"].to_pylist()
    until = _night(k)
    zone = sb.app.data.zone
    out = Counter()
    for r in rows:
        at = dt.datetime.strptime(r["point_history_record_time"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=zone)
        if at.astimezone(UTC) >= until or (traced_only and r["trace"] == "none"):
            continue
        out[tuple(r[f] if f != "point_amount" else float(r[f]) for f in ROW)] += 1
    return out


def _missing(truth: Counter, loaded: Counter) -> Counter:
    return truth - loaded


def _last_run(wh: Path) -> dict:
    (sources,) = query(wh, "SELECT sources FROM loyalty_raw.runs ORDER BY started_at DESC LIMIT 1")[0]
    return json.loads(sources)["carecloud"]


def test_changed_mode_over_nights_equals_all_mode(sandbox_factory, sandbox_env, tmp_path: Path) -> None:
    # a short data span: many customers change every night, some join, and the data stops after night 3
    sb = sandbox_factory(customers=90, now=_night(0) + LAG, data_start="2026-10-15", data_end="2026-11-23T02:00:00",
                         joining_share=0.35, late_share=0.1, late_max_seconds=86400, random_429_share=0.05,
                         error_503_share=0.03, drop_share=0.02, seed=11)
    changed_wh = tmp_path / "changed" / "loyalty_warehouse.duckdb"
    all_wh = tmp_path / "all" / "loyalty_warehouse.duckdb"
    # no worker processes: a few hundred records a night do not pay for forking them
    api = {"SOURCES__CARECLOUD__CUSTOMERS": "api", "LOYALTY__EXTRACT_PROCESSES": "0"}
    changed = cli_env(sandbox_env(sb, changed_wh), **api, SOURCES__CARECLOUD__SELECTION="changed",
                      SOURCES__CARECLOUD__SWEEP_DAYS=str(SWEEP_DAYS))
    everything = cli_env(sandbox_env(sb, all_wh), **api)

    kinds_seen: Counter = Counter()
    joined_during = []
    for k in range(0, 7):
        if k == 2:
            # the listings fail for good tonight: exit 2, said in the summary, the discovery window kept
            (before,) = query(changed_wh, "SELECT last_end FROM loyalty_raw._discovery_state")[0]
            sb.update_faults(error_503_share=1.0, random_429_share=0.0, drop_share=0.0,
                             endpoints="carecloud.points,carecloud.purchases")
            out = _run(changed, sb, k, expect=2)
            sb.update_faults(error_503_share=0.03, random_429_share=0.05, drop_share=0.02, endpoints="")
            assert "change discovery INCOMPLETE" in out and "503" in out
            assert query(changed_wh, "SELECT last_end FROM loyalty_raw._discovery_state")[0][0] == before
            report = _last_run(changed_wh)
            assert report["discovery_error"] and report["discovery_requests"] > 0
            (code,) = query(changed_wh, "SELECT exit_code FROM loyalty_raw.runs ORDER BY started_at DESC LIMIT 1")[0]
            assert code == 2
            continue
        _run(changed, sb, k)
        loaded = _loaded(changed_wh)
        # every discovery-visible change landed the same night (night 3 catches up what night 2 could not see)
        missing = _missing(_truth(sb, k, traced_only=True), loaded)
        assert not missing, f"night {k}: {sum(missing.values())} visible changes not loaded: {list(missing)[:3]}"
        # customers created since the last night are loaded tonight, all their rows
        if k:
            new = set(sb.joined_between(_night(k - 1) + LAG, _night(k) + LAG))
            joined_during += new
            new_rows = Counter({r: n for r, n in _truth(sb, k, traced_only=False).items() if r[0] in new})
            assert not _missing(new_rows, loaded), f"night {k}: a customer created yesterday is not loaded"
            report = _last_run(changed_wh)
            assert report["selection"] == "changed" and report["customers_new"] >= len(
                [c for c in new if any(r[0] == c for r in new_rows)])
            kinds_seen.update(by for by in ("customers_by_discovery", "customers_by_sweep") if report[by])
            assert report["customers_not_due"] > 0
        # nothing loaded that the vendor does not have
        assert not loaded - _truth(sb, k, traced_only=False)
    assert joined_during, "customers must join during the nights"
    assert kinds_seen["customers_by_discovery"] and kinds_seen["customers_by_sweep"]

    # the data stopped after night 3 and late records arrived by night 4: after a sweep period, changed == all
    _run(everything, sb, 6)
    changed_rows, all_rows = _loaded(changed_wh), _loaded(all_wh)
    assert changed_rows == all_rows == _truth(sb, 6, traced_only=False)
    invisible = _truth(sb, 6, traced_only=False) - _truth(sb, 6, traced_only=True)
    assert {r[2] for r in invisible} >= {"Manual correction"}
    # the roster in the warehouse is the vendor's
    roster = {r[0]: (r[1], r[2]) for r in query(changed_wh, "SELECT customer_id, state, last_change FROM "
                                                             "loyalty_raw.carecloud_customers")}
    truth_roster = sb.listing_truth()["carecloud_customers"].to_pylist()
    assert roster == {r["customer_id"]: (r["state"], r["last_change"]) for r in truth_roster}


def test_run_all_forces_a_full_pass(sandbox_factory, sandbox_env, tmp_path: Path) -> None:
    sb = sandbox_factory(customers=30, now=_night(0) + LAG)
    wh = tmp_path / "w" / "loyalty_warehouse.duckdb"
    env = cli_env(sandbox_env(sb, wh), SOURCES__CARECLOUD__SELECTION="changed")
    _run(env, sb, 0)
    first = _last_run(wh)
    assert first["customers_new"] == 30 and first["discovery_requests"] >= 2
    _run(env, sb, 1)
    assert _last_run(wh)["customers_not_due"] > 0
    out = _run(env, sb, 2, "--all")
    report = _last_run(wh)
    assert report["selection"] == "all (--all)" and report["customers_done"] == 30 and report["discovery_requests"] == 0
    assert "30/30 customers done" in out


def test_roster_that_cannot_be_read(sandbox_factory, sandbox_env, tmp_path: Path) -> None:
    """customers = "api": without a stored roster the run fails (exit 1); with one, it loads the stored customers,
    exits 2 and says the list was not read; the next night reads it (a customer created meanwhile included)."""
    sb = sandbox_factory(customers=60, now=_night(0) + LAG, joining_share=0.5, data_start="2026-11-01",
                         data_end="2026-11-30")
    wh = tmp_path / "w" / "loyalty_warehouse.duckdb"
    env = cli_env(sandbox_env(sb, wh), SOURCES__CARECLOUD__CUSTOMERS="api", SOURCES__CARECLOUD__MAX_ATTEMPTS="2",
                  LOYALTY__EXTRACT_PROCESSES="0")
    sb.update_faults(error_503_share=1.0, endpoints="carecloud.customers")
    out = _run(env, sb, 0, expect=1)
    assert "could not be read from the API and none is stored" in out
    sb.update_faults(error_503_share=0.0)
    _run(env, sb, 1)
    stored = query(wh, "SELECT count(*) FROM loyalty_raw.carecloud_customers")[0][0]
    sb.update_faults(error_503_share=1.0)
    out = _run(env, sb, 2, expect=2)
    assert "customer list INCOMPLETE" in out and f"{stored}/{stored} customers done" in out
    sb.update_faults(error_503_share=0.0)
    _run(env, sb, 3)
    joined = sb.joined_between(_night(1) + LAG, _night(3) + LAG)
    roster = {r[0] for r in query(wh, "SELECT customer_id FROM loyalty_raw.carecloud_customers")}
    assert joined and set(joined) <= roster
    assert len(roster) == sb.listing_truth()["carecloud_customers"].num_rows
