"""The Capillary side of the `change_driven` scenario (issue 18): a nightly run's `GET /v2/points/transfer` requests
with `selection = "changed"` (customers named by received events + the rolling sweep) vs `"all"`.

    python -m bench.change_driven_capillary --customers 3000   # merges change_driven.capillary into bench/results.json

The real receiver (`loyalty-etl events serve`) runs in a subprocess; the sandbox delivers its events live (duplicates,
reordering, late and a share lost). Night 0 loads everyone (changed mode: all new); the warehouse is copied; night 1
runs changed and all from identical copies; the changed warehouse then runs `sweep_days` more nights, after which
every Capillary row the all-mode night loaded must be there (`missed_after_sweep`). The nightly wall time at the
configured limit is requests / rate_limit (the vendor limit, not CPU, sets a production night's length).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from bench.change_driven import LAG, _night, run_night, source_report
from bench.harness import ROOT, save_scenario

CAPILLARY_RATE_LIMIT = 16.0       # [sources.capillary] rate_limit default (1,000 requests per minute)
SECRET = "bench-webhook-secret-0123"


def _serve(work: Path, store: Path) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOURCES__", "DESTINATION__", "LOYALTY__"))}
    env.update({"SOURCES__CAPILLARY__WEBHOOK__SECRET": SECRET, "SOURCES__CAPILLARY__WEBHOOK__STORE": str(store),
                "DESTINATION__DUCKDB__CREDENTIALS": str(work / "unused.duckdb")})
    out = work / "receiver.out"
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "events", "serve", "--port", "0"], cwd=ROOT,
                            env=env, stdout=out.open("wb"), stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = out.read_text()
        if "receiving" in text:
            port = int(text.split("127.0.0.1:", 1)[1].split("/", 1)[0])
            return proc, f"http://127.0.0.1:{port}/capillary/events"
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the receiver did not start")


def _rows(db: Path) -> Counter:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        return Counter(con.execute("SELECT customer_id, transfer_id, transfer_type, points_signed "
                                   "FROM loyalty_raw.capillary_customer_transfers").fetchall())
    finally:
        con.close()


def _report(db: Path) -> dict[str, Any]:
    return source_report(db, "capillary")


def _run(sb: Any, env: dict[str, str], k: int, log: Callable[[str], None], what: str) -> dict[str, Any]:
    by_endpoint, wall = run_night(sb, env, k, what, "capillary")
    requests = by_endpoint.get("capillary.transfers", 0)
    log(f"capillary {what} night {k}: {requests:,} requests in {wall:.1f} s")
    return {"requests": requests, "wall_s": round(wall, 2)}


def measure(customers: int, sweep_days: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    from pipelines.sandbox import Sandbox, SandboxConfig
    from pipelines.sandbox.events import EventDelivery, EventDeliveryConfig

    work = ROOT / "bench" / "out" / "change_driven_capillary"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    changed_db = work / "changed" / "loyalty_warehouse.duckdb"
    all_db = work / "all" / "loyalty_warehouse.duckdb"
    store = work / "capillary_events.sqlite3"
    sb = Sandbox(SandboxConfig(customers=customers, now=_night(0) + LAG)).start()
    receiver, url = _serve(work, store)
    try:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("SOURCES__", "DESTINATION__", "LOYALTY__"))}
        common = {"SOURCES__CAPILLARY__RATE_LIMIT": "1000000", "SOURCES__CAPILLARY__RETRY_BACKOFF": "0.05",
                  "SOURCES__CAPILLARY__WEBHOOK__STORE": str(store), "RUNTIME__LOG_LEVEL": "WARNING"}
        env_changed = {**base, **sb.env(changed_db), **common, "SOURCES__CAPILLARY__SELECTION": "changed",
                       "SOURCES__CAPILLARY__SWEEP_DAYS": str(sweep_days)}
        cfg = EventDeliveryConfig(url=url, secret=SECRET, duplicate_share=0.05, reorder_share=0.1, late_share=0.05,
                                  late_max_seconds=6 * 3600, lost_share=0.05)
        out: dict[str, Any] = {"customers": customers, "sweep_days": sweep_days,
                               "rate_limit_req_s": CAPILLARY_RATE_LIMIT}
        with EventDelivery(sb, cfg) as d:
            out["night0"] = _run(sb, env_changed, 0, log, "changed (first run, loads everyone)")
            shutil.copytree(changed_db.parent, all_db.parent)
            env_all = {**env_changed, "DESTINATION__DUCKDB__CREDENTIALS": str(all_db),
                       "SOURCES__CAPILLARY__SELECTION": "all"}
            before = _rows(changed_db)
            sb.set_now(_night(1) + LAG)
            d.wait_idle(300)
            events_night1 = d.stats()
            changed = _run(sb, env_changed, 1, log, "changed")
            report = _report(changed_db)
            everything = _run(sb, env_all, 1, log, "all")
            all_rows = _rows(all_db)
            active = {r[0] for r in (all_rows - before)}
            nights = []
            for k in range(2, 2 + sweep_days):
                sb.set_now(_night(k) + LAG)
                d.wait_idle(300)
                nights.append(_run(sb, env_changed, k, log, "changed")["requests"])
            missed = all_rows - _rows(changed_db)
            stats = d.stats()
        out.update({
            "active_customers_night1": len(active),
            "active_share": round(len(active) / customers, 4),
            "events_generated_night1": events_night1["generated"], "events_lost_total": stats["lost"],
            "requests_changed_mode": changed["requests"], "requests_all_mode": everything["requests"],
            "discovery_requests": report["discovery_requests"],
            "discovery_customers": report["customers_by_discovery"], "sweep_customers": report["customers_by_sweep"],
            "ratio_changed_to_all": round(changed["requests"] / max(1, everything["requests"]), 4),
            "nightly_hours_at_limit_changed": round(changed["requests"] / CAPILLARY_RATE_LIMIT / 3600, 3),
            "nightly_hours_at_limit_all": round(everything["requests"] / CAPILLARY_RATE_LIMIT / 3600, 3),
            "sweep_nights": nights,
            "missed_after_sweep": len({r[0] for r in missed}),
            "missed_after_sweep_rows": sum(missed.values()),
            "night1_wall_s_changed": changed["wall_s"], "night1_wall_s_all": everything["wall_s"],
        })
        return out
    finally:
        receiver.terminate()
        receiver.wait(30)
        sb.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.change_driven_capillary", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--sweep-days", type=int, default=7)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    result = measure(args.customers, args.sweep_days)
    result["seconds"] = round(time.perf_counter() - started, 1)
    save_scenario(args.out, ("change_driven", "capillary"), result)   # additively: CareCloud's keys stay
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}, indent=1))
    return 0 if result["missed_after_sweep"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
