"""`make bench` scenario `reader_availability` (issue 19): can an analyst read the warehouse while a run loads it?

    python -m bench.reader_availability            # merges the key `reader_availability` into bench/results.json
    python -m bench.reader_availability --quick    # a smoke run (tests/test_bench.py): bench/out/ only

Night 0 loads the sandbox's customers without a rate limit and builds the marts, so `loyalty.fct_points_ledger`
exists. Then the sandbox's clock moves a day (new records) and the sandbox limits each credential to R requests/s,
as a vendor does; the measured night is `loyalty-etl run` (marts included) with its limiter at R, so it lasts about
customers / R seconds (at least a minute in the full run), nearly all of it waiting on the APIs as a production
night does. Beside it a reader PROCESS (bench/reader.py, plain DuckDB) opens the file read-only every 0.5 s and
queries the ledger. `share_ok` = tries that got an answer / tries started while the run was running; a failed
try is DuckDB's lock error while the run held the file (loading a round, committing, building the marts).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from bench.harness import PYTHON, ROOT, SandboxProcess, save_scenario
from bench.variants import loyalty_etl, measure as measure_child, pipeline_env, sandbox_env, warehouse_counts

NOW = "2026-11-20T00:00:00+00:00"
DAY = 86400
TARGET_SHARE = 0.90        # issue 19: at least 90 % of the reader's tries succeed over the run
MIN_RUN_S = 60.0           # issue 19: the rate limit makes the run last at least a minute
EVERY_S = 0.5


def _until(sb: SandboxProcess) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(sb.call("now"), dt.timezone.utc).isoformat()


def _writer_figures(log: str) -> dict[str, Any]:
    """The run's own account of its holds on the file (the runner's last JSON log line about it)."""
    for line in reversed(log.splitlines()):
        if "warehouse writer released" in line:
            try:
                rec = json.loads(line[line.index("{"):])
            except ValueError:
                return {}
            return {"writer_holds": rec.get("holds"), "writer_held_s": rec.get("held_s")}
    return {}


def _refusals(tries: list[dict[str, Any]]) -> list[float]:
    """Lengths (s) of the stretches of consecutive failed tries: how long an analyst was locked out at a time."""
    out, start = [], None
    for r in tries:
        if not r["ok"] and start is None:
            start = r["t"]
        elif r["ok"] and start is not None:
            out.append(r["t"] - start)
            start = None
    if start is not None:
        out.append(tries[-1]["t"] + EVERY_S - start)
    return out


def measure(quick: bool, customers: int | None = None, rate: float | None = None, seed: int = 7,
            workdir: Path | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    customers = customers or (100 if quick else 1200)
    rate = rate or 15.0
    out = workdir or ROOT / "bench" / "out" / ("quick" if quick else "full") / "reader_availability"
    out.mkdir(parents=True, exist_ok=True)
    with SandboxProcess({"customers": customers, "seed": seed, "now": NOW}, log_file=out / "sandbox.log") as sb:
        wd = out / "run"
        env = sandbox_env(sb, wd, "pipeline.duckdb")
        db = wd / "pipeline.duckdb"
        log(f"reader_availability: night 0, {customers:,} customers, no rate limit, with the marts")
        night0, _ = measure_child(sb, "night0", [loyalty_etl(), "--log-format", "json", "run", "--until",
                                                 _until(sb)], wd, env=pipeline_env(env, 1e6, None))
        if "models: ok" not in night0.log:
            raise RuntimeError(f"night 0 did not build the marts; log {wd / 'night0.log'}:\n{night0.log[-3000:]}")
        before = warehouse_counts(db)
        sb.call("advance", seconds=DAY)
        sb.call("faults", changes={"rate_limit_rps": rate})
        reads, stop = out / "reads.jsonl", out / "stop"
        reads.unlink(missing_ok=True)
        stop.unlink(missing_ok=True)
        reader = subprocess.Popen([PYTHON, "-m", "bench.reader", str(db), str(reads), str(stop), "--every",
                                   str(EVERY_S)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while not (reads.exists() and reads.stat().st_size) and time.monotonic() < deadline:
                time.sleep(0.05)
            log(f"reader_availability: night 1 at {rate:g} req/s per credential, a reader every {EVERY_S:g} s")
            t0 = time.time()
            run, fig = measure_child(sb, "night1", [loyalty_etl(), "--log-format", "json", "run", "--until",
                                                    _until(sb)], wd, env=pipeline_env(env, rate, None))
            t1 = time.time()
            time.sleep(2 * EVERY_S)
        finally:
            stop.touch()
            try:
                reader.wait(60)
            except subprocess.TimeoutExpired:
                reader.kill()
                reader.wait()
    records = [json.loads(line) for line in reads.read_text().splitlines() if line.strip()]
    tries = [r for r in records if t0 <= r["t"] <= t1]
    ok = sum(1 for r in tries if r["ok"])
    busy = sum(1 for r in tries if not r["ok"] and r["busy"])
    other = [r["error"] for r in tries if not r["ok"] and not r["busy"]]
    refusals = _refusals(tries)
    after = warehouse_counts(db)
    share = round(ok / len(tries), 4) if tries else None
    result: dict[str, Any] = {
        "customers": customers, "rate_limit_rps_per_credential": rate, "reader_every_s": EVERY_S,
        "wall_s": fig["wall_s"], "tries": len(tries), "ok": ok, "busy": busy, "other_errors": len(other),
        "other_error_examples": other[:3], "share_ok": share,
        "longest_refusal_s": round(max(refusals), 2) if refusals else 0.0, "refusals": len(refusals),
        "records_loaded": {k: after[k] - before[k] for k in after},
        "requests": fig["requests"]["data_requests"], "http_429": fig["requests"]["data_429"],
        "loadavg": fig["loadavg"], **_writer_figures(run.log),
    }
    result["target"] = {"share_ok_at_least": TARGET_SHARE, "run_at_least_s": MIN_RUN_S,
                        "met": bool(share is not None and share >= TARGET_SHARE and fig["wall_s"] >= MIN_RUN_S
                                    and not other)}
    return result


def summary(r: dict[str, Any]) -> str:
    return (f"reader_availability: {r['ok']}/{r['tries']} reads ok (share {r['share_ok']}, target >= "
            f"{TARGET_SHARE}) during a {r['wall_s']:.1f} s run of {r['customers']:,} customers at "
            f"{r['rate_limit_rps_per_credential']:g} req/s; longest refusal {r['longest_refusal_s']} s; writer held "
            f"{r.get('writer_held_s')} s in {r.get('writer_holds')} holds; other errors {r['other_errors']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.reader_availability", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="100 customers (a night of a few seconds): a smoke run")
    ap.add_argument("--customers", type=int, help="customers (default 1,200; quick 100)")
    ap.add_argument("--rate-limit", type=float, help="R, requests/s per credential (default 15)")
    ap.add_argument("--out", type=Path, help="results file to merge into (default bench/results.json; quick: "
                                             "bench/out/results-reader-availability-quick.json)")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    result = measure(args.quick, args.customers, args.rate_limit)
    result["seconds"] = round(time.perf_counter() - started, 1)
    path = args.out or (ROOT / "bench" / "out" / "results-reader-availability-quick.json" if args.quick
                        else ROOT / "bench" / "results.json")
    save_scenario(path, ("reader_availability",), result)
    print(summary(result))
    print(f"results: {path}")
    return 0 if args.quick or result["target"]["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
