"""`make bench` scenario `change_driven` (issue 17): what a nightly run costs in requests when it follows change
(`selection = "changed"`: CareCloud change discovery + rolling sweep) instead of asking every customer.

    python -m bench.change_driven                  # 100,000 customers; merges the key `change_driven` into bench/results.json
    python -m bench.change_driven --customers 20000
    python -m bench.change_driven --quick          # 3,000 customers, sweep 3 nights: a smoke run

On a warehouse the changed mode loaded from scratch (night 0: every customer new, /points read from initial_start),
the sandbox clock moves one day: about 1 % of the customers did something (some only invisible kinds: manual
corrections, vouchers, transfers). The same night is then run twice from identical copies of the warehouse:
`selection = "changed"` and `selection = "all"`, counting the requests the sandbox served per endpoint. Then the
changed warehouse runs `sweep_days` more nights, after which every row the all-mode night loaded must be there.

The nightly wall time at the configured vendor limit is computed from the request count (requests / rate_limit):
the rate limit, not CPU, sets a production night's length. The sandbox runs in this process (the figures here are
request counts, not CPU); the pipeline is the real CLI in a subprocess.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from bench.harness import ROOT, save_scenario

NIGHT0 = dt.datetime(2026, 11, 20, 1, 0, tzinfo=dt.timezone.utc)
LAG = dt.timedelta(minutes=10)
CARECLOUD_RATE_LIMIT = 50.0       # the configured default ([sources.carecloud] rate_limit, .dlt/config.toml)
TARGET_RATIO = 0.25               # issue 17: changed mode at most a quarter of all mode's requests
LISTING_ENDPOINTS = ("carecloud.points", "carecloud.purchases", "carecloud.customers")


def _night(k: int) -> dt.datetime:
    return NIGHT0 + dt.timedelta(days=k)


def _requests(before: dict, after: dict) -> dict[str, int]:
    out: Counter = Counter()
    for endpoint, statuses in after["requests"].items():
        for status, n in statuses.items():
            out[endpoint] += n - before["requests"].get(endpoint, {}).get(status, 0)
    return {k: v for k, v in out.items() if v and not k.startswith("admin")}


def _rows(db: Path) -> Counter:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        return Counter((c, t.strftime("%Y-%m-%d %H:%M:%S"), o, float(a), e) for c, t, o, a, e in con.execute(
            "SELECT customer_id, point_history_record_time, point_operation_type, point_amount, extended_data_raw "
            "FROM loyalty_raw.carecloud_point_history").fetchall())
    finally:
        con.close()


def source_report(db: Path, source: str) -> dict[str, Any]:
    """The source's part of the last run's report (the `runs.sources` JSON)."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        (sources,) = con.execute("SELECT sources FROM loyalty_raw.runs ORDER BY started_at DESC LIMIT 1").fetchone()
    finally:
        con.close()
    return json.loads(sources)[source]


def _report(db: Path) -> dict[str, Any]:
    return source_report(db, "carecloud")


def run_night(sb: Any, env: dict[str, str], k: int, what: str, source: str) -> tuple[dict[str, int], float]:
    """One nightly `loyalty-etl run --source SOURCE` at night k: the sandbox's requests by endpoint, wall seconds."""
    sb.set_now(_night(k) + LAG)
    before = sb.stats()
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "--source", source, "--no-models",
                           "--until", _night(k).strftime("%Y-%m-%dT%H:%M:%SZ")], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{what} night {k}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}")
    return _requests(before, sb.stats()), wall


def _run(sb: Any, env: dict[str, str], k: int, log: Callable[[str], None], what: str) -> dict[str, Any]:
    requests, wall = run_night(sb, env, k, what, "carecloud")
    total = sum(n for e, n in requests.items() if e != "carecloud.login")
    log(f"{what} night {k}: {total:,} requests in {wall:.1f} s")
    return {"requests": requests, "data_requests": total, "wall_s": round(wall, 2)}


def _truth_rows(sb: Any, k: int) -> tuple[Counter, Counter]:
    """(every history row recorded before night k's end, the traced ones) visible at sandbox now."""
    zone = sb.app.data.zone
    until = _night(k)
    every, traced = Counter(), Counter()
    for r in sb.listing_truth()["carecloud_point_history_trace"].to_pylist():
        at = dt.datetime.strptime(r["point_history_record_time"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=zone)
        if at >= until:
            continue
        key = (r["customer_id"], r["point_history_record_time"], r["point_operation_type"], float(r["point_amount"]),
               r["extended_data"])
        every[key] += 1
        if r["trace"] != "none":
            traced[key] += 1
    return every, traced


def measure(quick: bool, customers: int | None = None, sweep_days: int | None = None,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    from pipelines.sandbox import Sandbox, SandboxConfig

    customers = customers or (3_000 if quick else 100_000)
    sweep_days = sweep_days or (3 if quick else 7)
    work = ROOT / "bench" / "out" / "change_driven"
    shutil.rmtree(work, ignore_errors=True)
    changed_db = work / "changed" / "loyalty_warehouse.duckdb"
    all_db = work / "all" / "loyalty_warehouse.duckdb"
    # every customer's history stays cached: the listing index, the first run and the all-mode night each touch all
    sb = Sandbox(SandboxConfig(customers=customers, now=_night(0) + LAG,
                               cache_customers=max(25_000, customers))).start()
    try:
        started = time.perf_counter()
        sb.warm_listings()
        log(f"sandbox listings indexed for {customers:,} customers in {time.perf_counter() - started:.0f} s")
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("SOURCES__", "DESTINATION__", "LOYALTY__"))}
        common = {"SOURCES__CARECLOUD__RATE_LIMIT": "1000000", "SOURCES__CARECLOUD__INITIAL_START": "2023-01-01T00:00:00Z",
                  "SOURCES__CARECLOUD__RETRY_BACKOFF": "0.05", "RUNTIME__LOG_LEVEL": "WARNING"}
        env_changed = {**base, **sb.env(changed_db), **common, "SOURCES__CARECLOUD__SELECTION": "changed",
                       "SOURCES__CARECLOUD__SWEEP_DAYS": str(sweep_days)}
        out: dict[str, Any] = {"customers": customers, "sweep_days": sweep_days,
                               "rate_limit_req_s": CARECLOUD_RATE_LIMIT}
        out["night0"] = _run(sb, env_changed, 0, log, "changed (first run, loads everyone)")
        shutil.copytree(changed_db.parent, all_db.parent)
        env_all = {**env_changed, "DESTINATION__DUCKDB__CREDENTIALS": str(all_db), "SOURCES__CARECLOUD__SELECTION": "all"}

        before_every, _ = _truth_rows(sb, 0)
        sb.set_now(_night(1) + LAG)
        every, traced = _truth_rows(sb, 1)
        new_rows = every - before_every
        changed_customers = {r[0] for r in new_rows}
        traced_customers = {r[0] for r in new_rows if traced[r]}
        changed = _run(sb, env_changed, 1, log, "changed")
        report = _report(changed_db)
        everything = _run(sb, env_all, 1, log, "all")
        changed_rows, all_rows = _rows(changed_db), _rows(all_db)
        missed_visible = {r[0] for r in (traced - changed_rows)}
        discovery = sum(changed["requests"].get(e, 0) for e in LISTING_ENDPOINTS)
        out.update({
            "changed_customers": len(changed_customers),
            "changed_share": round(len(changed_customers) / customers, 4),
            "invisible_only_customers": len(changed_customers - traced_customers),
            "requests_changed_mode": changed["data_requests"],
            "requests_all_mode": everything["data_requests"],
            "discovery_requests": discovery,
            "discovery_customers": report["customers_by_discovery"],
            "retried_customers": report["customers_retried"],
            "sweep_customers": report["customers_by_sweep"],
            "new_customers": report["customers_new"],
            "point_history_requests_changed_mode": changed["requests"].get("carecloud.point_history", 0),
            "ratio_changed_to_all": round(changed["data_requests"] / max(1, everything["data_requests"]), 4),
            "nightly_hours_at_limit_changed": round(changed["data_requests"] / CARECLOUD_RATE_LIMIT / 3600, 3),
            "nightly_hours_at_limit_all": round(everything["data_requests"] / CARECLOUD_RATE_LIMIT / 3600, 3),
            "missed_same_night_visible": len(missed_visible),
            "all_mode_rows_equal_truth": all_rows == every,
            "night1_changed": changed, "night1_all": everything,
        })
        nights = []
        for k in range(2, 2 + sweep_days):
            nights.append(_run(sb, env_changed, k, log, "changed"))
        missed_after = all_rows - _rows(changed_db)
        out["sweep_nights"] = [n["data_requests"] for n in nights]
        out["missed_after_sweep"] = len({r[0] for r in missed_after})
        out["missed_after_sweep_rows"] = sum(missed_after.values())
        out["target"] = {"ratio_at_most": TARGET_RATIO, "met": out["ratio_changed_to_all"] <= TARGET_RATIO
                         and out["missed_same_night_visible"] == 0 and out["missed_after_sweep"] == 0}
        return out
    finally:
        sb.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.change_driven", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3,000 customers, sweep 3 nights (a smoke run)")
    ap.add_argument("--customers", type=int, help="customers (default 100,000; quick 3,000)")
    ap.add_argument("--out", type=Path, help="results file to merge into (default bench/results.json; "
                                             "quick: bench/out/results-change-driven-quick.json)")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    result = measure(args.quick, args.customers)
    result["seconds"] = round(time.perf_counter() - started, 1)
    path = args.out or (ROOT / "bench" / "out" / "results-change-driven-quick.json" if args.quick
                        else ROOT / "bench" / "results.json")
    save_scenario(path, ("change_driven",), result)
    print(f"{result['customers']:,} customers, {result['changed_customers']:,} changed "
          f"({result['invisible_only_customers']:,} by invisible kinds only): changed mode "
          f"{result['requests_changed_mode']:,} requests (discovery {result['discovery_requests']:,}, "
          f"{result['discovery_customers']:,} customers named, {result['sweep_customers']:,} swept) vs all "
          f"mode {result['requests_all_mode']:,}: ratio {result['ratio_changed_to_all']} (target <= {TARGET_RATIO}); "
          f"at {CARECLOUD_RATE_LIMIT:g} req/s {result['nightly_hours_at_limit_changed']} h vs "
          f"{result['nightly_hours_at_limit_all']} h; missed same night {result['missed_same_night_visible']}, "
          f"after the sweep {result['missed_after_sweep']}")
    print(f"results: {path}")
    return 0 if result["target"]["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
