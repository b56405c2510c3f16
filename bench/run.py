"""`make bench`: the side-by-side benchmark of issue 5, on sandbox data, no network.

    python -m bench.run            # full run (~20 min): writes bench/results.json and the table in docs/performance.md
    python -m bench.run --quick    # smoke test (~2 min): small sizes, writes bench/out/results-quick.json only

Scenarios (each sandbox lives in its own process; every variant is a measured child process):
1. throughput at --customers (default 20,000, about 280,000 point-history records):
   (c) fetch the pages once + DuckDB read_json/SQL, (b) `loyalty-etl run --no-models`, (a) dlt rest_api on a
   --naive-share subset (records/s is the comparable figure), (a'') the same rest_api source tuned per dlt's
   performance guide on a --tuned-share subset; (b), (a) and (a'') alternate; each checked against the sandbox truth;
   heterogeneous: (b) on a second sandbox of the same customers whose CareCloud `extended_data` is heterogeneous
   (--variety share of the records: colliding key spellings, type drift, nesting, unicode keys, null/"", invalid
   JSON; pipelines/sandbox/variety.py), run in the same rounds right after the uniform (b): client CPU per record
   of the two side by side;
2. nightly runs on (b)'s warehouse: nothing changed (same sandbox instant), then about 1 % of customers changed
   (sandbox clock +1 day); repeated at --big-customers;
3. memory: (b) at --big-customers (>= 1,000,000 records), RSS sampled over time, compared with the run in 1.;
4. rate-limit saturation: sandbox limiting each credential to R req/s with 50 ms latency, (b) with its limiter at R;
5. events: the Capillary webhook receiver's events/s and p99 latency to a durable 2xx (bench/events.py, key
   `event_receiver`; alone: `python -m bench.events`);
6. change_driven (issue 17): a nightly run's requests with `selection = "changed"` vs `"all"` at
   --change-customers (default 100,000; bench/change_driven.py, key `change_driven`; alone:
   `python -m bench.change_driven`); then Capillary's side, events + sweep, at the same size
   (bench/change_driven_capillary.py, key `change_driven.capillary`);
7. reader_availability (issue 19): a reader process opening the warehouse read-only every 0.5 s while a
   rate-limited run (at least a minute) loads it and builds the marts: the share of its tries that succeed
   (bench/reader_availability.py, key `reader_availability`; alone: `python -m bench.reader_availability`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import report
from bench.harness import ROOT, SandboxProcess, machine_facts
from bench.variants import DATA_ENDPOINTS, pipeline_available, run_limit, run_naive, run_pipeline, warehouse_shape

NOW = "2026-11-20T00:00:00+00:00"      # the sandbox's frozen clock: every run sees the same data
DAY = 86400
SCENARIOS = ["throughput", "heterogeneous", "nightly", "memory", "ratelimit", "events", "change_driven",
             "reader_availability"]


def _sandbox(out: Path, name: str, customers: int, seed: int, faults: dict | None = None,
             variety: float = 0.0) -> SandboxProcess:
    config: dict[str, Any] = {"customers": customers, "seed": seed, "now": NOW}
    if variety:
        config["extended_data_variety"] = variety
    return SandboxProcess(config, faults, log_file=out / f"{name}.log")


def _until(sb: SandboxProcess) -> str:
    return dt.datetime.fromtimestamp(sb.call("now"), dt.timezone.utc).isoformat()


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def nightly(sb: SandboxProcess, wd: Path, customers: int, with_truth: bool) -> dict[str, Any]:
    """Two nightly runs on a warehouse (b) already backfilled: no change, then the clock a day later."""
    out: dict[str, Any] = {"customers": customers}
    _log(f"nightly, no change, {customers:,} customers")
    out["no_change"] = _per_customer(run_pipeline(sb, wd, None, fresh=False, name="nightly-nochange",
                                                  until=_until(sb)), customers)
    before = _until(sb)
    sb.call("advance", seconds=DAY)
    changed = sb.call("changed_customers", before=before, after=_until(sb)) if with_truth else None
    truth = sb.call("truth_counts") if with_truth else None
    _log(f"nightly, clock +1 day ({changed or 'change not computed'}), {customers:,} customers")
    fig = run_pipeline(sb, wd, truth, fresh=False, name="nightly-1pct", until=_until(sb))
    if changed:
        fig["customers_changed"] = changed["customers_changed"]
        fig["changed_share"] = round(changed["customers_changed"] / customers, 4)
        fig["new_records_truth"] = changed["new_records"]
    out["changed_1pct"] = _per_customer(fig, customers)
    return out


def _per_customer(fig: dict[str, Any], customers: int) -> dict[str, Any]:
    fig["cpu_ms_per_customer"] = round(1000 * fig["cpu_s"] / customers, 3)
    fig["requests_per_customer"] = round(fig["requests"]["data_requests"] / customers, 3)
    return fig


def rate_limit_run(out: Path, customers: int, rps: float, seed: int) -> dict[str, Any]:
    faults = {"rate_limit_rps": rps, "latency_ms": 50.0}
    with _sandbox(out, "sandbox-ratelimit", customers, seed, faults) as sb:
        truth = sb.call("truth_counts")
        wd = out / "ratelimit"
        fig = run_pipeline(sb, wd, truth, name="ratelimit", rate_limit=rps, until=_until(sb), poll_s=0.5)
    # The pipeline loads the sources one after the other and each credential has its own bucket, so the rate
    # is measured per endpoint, in its steady state: between the samples where that endpoint had answered 10 %
    # and 90 % of its final count of 200s (the bucket's initial burst and the tail would flatter or understate it).
    per_endpoint = {}
    for endpoint in DATA_ENDPOINTS:
        series = [(t, eps.get(endpoint, {}).get("200", 0)) for t, eps in fig.get("timeline", [])]
        final = series[-1][1] if series else 0
        lo = next(((t, n) for t, n in series if n >= 0.1 * final), None)
        hi = next(((t, n) for t, n in series if n >= 0.9 * final), None)
        rate = (hi[1] - lo[1]) / (hi[0] - lo[0]) if lo and hi and hi[0] > lo[0] else None
        answered = fig["requests"]["by_endpoint"].get(endpoint, {})
        per_endpoint[endpoint] = {
            "achieved_rps": round(rate, 2) if rate else None,
            "achieved_share": round(rate / rps, 4) if rate else None,
            "requests": sum(answered.values()), "http_429": answered.get("429", 0),
        }
    shares = [e["achieved_share"] for e in per_endpoint.values() if e["achieved_share"]]
    req = fig["requests"]
    fig.pop("timeline", None)
    fig.update(rate_limit_rps_per_credential=rps, latency_ms=50, per_endpoint=per_endpoint,
               achieved_share=min(shares) if shares else None,
               share_429=round(req["data_429"] / max(1, req["data_requests"]), 4), customers=customers)
    return fig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, a smoke test of every scenario")
    ap.add_argument("--customers", type=int, help="throughput run size (default 20000; quick 1000)")
    ap.add_argument("--naive-share", type=float, help="share of the customers the naive run (a) loads "
                                                       "(default 0.1; quick 0.5); 1 = all")
    ap.add_argument("--big-customers", type=int, help="memory run size (default 100000 = ~1.4M records; "
                                                       "quick 3000); 0 skips")
    ap.add_argument("--rate-limit", type=float, default=50.0, help="R, requests/s per credential (default 50)")
    ap.add_argument("--rate-customers", type=int, help="customers in the rate-limit run (default 1500)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--verify-big", action="store_true", help="check the big run against the full sandbox truth "
                                                              "(minutes of extra sandbox CPU at 100k customers)")
    ap.add_argument("--variety", type=float, default=1.0, help="share of CareCloud records with heterogeneous "
                                                                 "extended_data in the heterogeneous scenario "
                                                                 "(default 1.0: every record)")
    ap.add_argument("--change-customers", type=int, help="customers in the change_driven scenario (default "
                                                          "100000; quick 300)")
    ap.add_argument("--only", nargs="*", choices=SCENARIOS,
                    help="run only these scenarios")
    ap.add_argument("--tuned-share", type=float, help="share of the customers (a'') loads (default 0.25; quick "
                                                       "0.5): a larger subset than (a)'s, so its fixed start-up cost "
                                                       "weighs less in its records/s; 1 = all")
    ap.add_argument("--variants", default="abcpt", help="which of a, b, c, p (= a with parquet loader files) and "
                                                          "t (= a'', dlt tuned per its performance guide) the "
                                                          "throughput run measures (default abcpt)")
    ap.add_argument("--repeats", type=int, help="how many times (a) and (b) run, alternating; the ratio is "
                                                "taken between their medians (default 3; quick 1)")
    ap.add_argument("--profile", action="store_true", help="record py-spy profiles of (b) in the throughput run")
    ap.add_argument("--out", type=Path, help="results file (default bench/results.json; quick: bench/out/)")
    ap.add_argument("--workdir", type=Path, help="where the runs' warehouses and logs go, emptied first (default "
                                                 "bench/out/full; quick: bench/out/quick)")
    args = ap.parse_args(argv)

    quick = args.quick
    customers = args.customers or (1000 if quick else 20000)
    naive_share = args.naive_share or (0.5 if quick else 0.1)
    tuned_share = args.tuned_share or (0.5 if quick else 0.25)
    big = args.big_customers if args.big_customers is not None else (3000 if quick else 100000)
    rate_customers = args.rate_customers or (200 if quick else 1500)
    repeats = max(1, args.repeats or (1 if quick else 3))
    change_customers = args.change_customers or (300 if quick else 100_000)
    scenarios = set(args.only or SCENARIOS)
    results_path = args.out or (ROOT / "bench" / "out" / "results-quick.json" if quick else ROOT / "bench" / "results.json")
    out = args.workdir or ROOT / "bench" / "out" / ("quick" if quick else "full")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)

    have_b = pipeline_available()
    command = "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:])
    results: dict[str, Any] = {
        "command": command.strip(),
        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                     text=True).stdout.strip(),
        "machine": machine_facts(),
        "quick": quick,
        "sandbox": {"seed": args.seed, "now": NOW, "process": "separate child process (its CPU is reported "
                    "apart; it shares the 2 cores with the variant under test)"},
        "notes": [],
    }
    if not have_b:
        results["notes"].append("variant (b) skipped: pipelines/runner.py or the run command is not there yet")
    t_start = time.perf_counter()

    if scenarios & {"throughput", "heterogeneous", "nightly"}:
        with _sandbox(out, "sandbox-main", customers, args.seed) as sb, contextlib.ExitStack() as varied:
            _log(f"sandbox: {customers:,} customers; computing the truth")
            truth = sb.call("truth_counts")
            thr: dict[str, Any] = {"customers": customers, "truth": truth, "variants": {}}
            results["throughput"] = thr
            if "throughput" in scenarios and "c" in args.variants:
                _log("(c) fetch pages once + DuckDB read_json")
                thr["variants"]["c"] = run_limit(sb, out / "c", truth)
            # (a) and (b) alternate, `repeats` times each, and the ratio is taken between their medians: a shared VM's
            # speed drifts within minutes (the CPU probe column), so one (a) and one (b) minutes apart
            # give a ratio that is partly the machine's drift; adjacent pairs also give a ratio each
            want_h = have_b and "heterogeneous" in scenarios
            want_b = have_b and ("b" in args.variants or "nightly" in scenarios or want_h)
            want_a = "throughput" in scenarios and "a" in args.variants
            want_t = "throughput" in scenarios and "t" in args.variants
            sb_h = truth_h = None
            if want_h:
                # same seed and customers: only extended_data differs (pipelines/sandbox/variety.py)
                sb_h = varied.enter_context(_sandbox(out, "sandbox-heterogeneous", customers, args.seed,
                                                     variety=args.variety))
                truth_h = sb_h.call("truth_counts")
            n_a = max(1, int(round(customers * naive_share)))
            n_t = max(1, int(round(customers * tuned_share)))
            truth_a = truth_t = None
            if want_a:
                truth_a = sb.call("truth_counts", limit=n_a) if n_a < customers else truth
            if want_t:
                truth_t = sb.call("truth_counts", limit=n_t) if n_t < customers else truth
            runs_b: list[dict[str, Any]] = []
            runs_a: list[dict[str, Any]] = []
            runs_t: list[dict[str, Any]] = []
            runs_h: list[dict[str, Any]] = []
            rounds = repeats if (want_a or want_t or want_h) and want_b else 1
            for i in range(rounds):
                last = i == rounds - 1
                if want_b:
                    _log(f"(b) loyalty-etl run --no-models [{i + 1}/{rounds}]")
                    # the last (b) lands in out/b: the nightly runs continue on its warehouse
                    runs_b.append(run_pipeline(sb, out / ("b" if last else f"b-{i + 1}"), truth, until=_until(sb)))
                if want_a:
                    _log(f"(a) dlt rest_api, {n_a:,} customers [{i + 1}/{rounds}]")
                    fig_a = run_naive(sb, out / ("a" if last else f"a-{i + 1}"), n_a if n_a < customers else None,
                                      truth_a)
                    fig_a["truth"] = truth_a
                    runs_a.append(fig_a)
                if want_t:
                    _log(f"(a'') dlt rest_api tuned per dlt's performance guide, {n_t:,} customers [{i + 1}/{rounds}]")
                    fig_t = run_naive(sb, out / ("a_tuned" if last else f"a_tuned-{i + 1}"),
                                      n_t if n_t < customers else None, truth_t, tuned=True)
                    fig_t["truth"] = truth_t
                    runs_t.append(fig_t)
                if want_h:
                    _log(f"(b) on heterogeneous extended_data (variety {args.variety:g}) [{i + 1}/{rounds}]")
                    runs_h.append(run_pipeline(sb_h, out / ("b_heterogeneous" if last else f"b_heterogeneous-{i + 1}"),
                                               truth_h, until=_until(sb_h)))
            if runs_b:
                thr["variants"]["b"] = report.median_run(runs_b)
            if runs_a:
                thr["variants"]["a"] = report.median_run(runs_a)
            if runs_t:
                thr["variants"]["a_tuned"] = report.median_run(runs_t)
            if runs_a and runs_b:
                thr["pair_ratios"] = report.pair_ratios(runs_b, runs_a)
            if runs_t and runs_b:
                thr["pair_ratios_tuned"] = report.pair_ratios(runs_b, runs_t)
            if runs_h and runs_b:
                results["heterogeneous"] = report.heterogeneous(runs_b, runs_h, customers, args.variety, truth_h)
                results["heterogeneous"]["warehouses"] = {
                    "uniform": warehouse_shape(out / "b" / "pipeline.duckdb"),
                    "heterogeneous": warehouse_shape(out / "b_heterogeneous" / "pipeline.duckdb")}
            if want_b and args.profile:
                # a separate run: py-spy's own CPU and memory would pollute the measured one
                _log("(b) again under py-spy")
                prof = run_pipeline(sb, out / "b-profile", truth, name="pipeline", until=_until(sb),
                                    profile="py-spy")
                from bench.profile import summarise

                speedscope = out / "b-profile" / "pipeline.speedscope.json"
                results["profile_b"] = {"file": _shown(speedscope), "wall_s": prof["wall_s"],
                                        **summarise(speedscope, 25)}
                if sb_h is not None:
                    _log("(b) on heterogeneous extended_data again under py-spy")
                    prof = run_pipeline(sb_h, out / "b_heterogeneous-profile", truth_h, name="pipeline",
                                        until=_until(sb_h), profile="py-spy")
                    speedscope = out / "b_heterogeneous-profile" / "pipeline.speedscope.json"
                    results["profile_b_heterogeneous"] = {"file": _shown(speedscope),
                                                          "wall_s": prof["wall_s"], **summarise(speedscope, 25)}
            if want_a and "p" in args.variants:
                _log(f"(a') dlt rest_api + parquet loader files, {n_a:,} customers")
                thr["variants"]["a_parquet"] = run_naive(sb, out / "a_parquet", n_a if n_a < customers else None,
                                                         truth_a, loader_file_format="parquet")
            if have_b and "nightly" in scenarios:
                results.setdefault("nightly", []).append(nightly(sb, out / "b", customers, with_truth=True))
            thr["ratios"] = report.ratios(thr["variants"])

    if big and have_b and ("memory" in scenarios or "nightly" in scenarios):
        with _sandbox(out, "sandbox-big", big, args.seed) as sb:
            _log(f"memory: (b) at {big:,} customers")
            # the full truth at 100k customers costs minutes of the sandbox's CPU; by default the big run is checked
            # against the records the sandbox served instead (the truth check is done at the throughput size)
            truth = sb.call("truth_counts") if args.verify_big else None
            fig = run_pipeline(sb, out / "big", truth, name="pipeline-big", until=_until(sb), sample_s=0.5)
            served = fig["requests"].get("records_served", {})
            fig["landed_vs_served"] = {"point_history": fig["point_history"] - served.get("carecloud", 0),
                                       "customer_transfers": fig["customer_transfers"] - served.get("capillary", 0)}
            results["memory"] = {"customers": big, "truth": truth, "big": fig}
            if "throughput" in results and "b" in results["throughput"]["variants"]:
                small = results["throughput"]["variants"]["b"]
                results["memory"]["small"] = {k: small[k] for k in ("records", "peak_rss_mb", "peak_tree_rss_mb",
                                                                      "rss_samples")}
            if "nightly" in scenarios:
                # the change count needs two truths (~2 min each at 100k): computed at the small size only
                results.setdefault("nightly", []).append(nightly(sb, out / "big", big, with_truth=quick))

    if "ratelimit" in scenarios and have_b:
        _log(f"rate limit: R={args.rate_limit:g} req/s per credential, 50 ms latency, {rate_customers:,} customers")
        results["rate_limit"] = rate_limit_run(out, rate_customers, args.rate_limit, args.seed)

    if "events" in scenarios:
        from bench.events import measure

        results["event_receiver"] = measure(quick, log=_log)

    if "change_driven" in scenarios and have_b:
        from bench.change_driven import measure as measure_change_driven

        _log(f"change_driven: {change_customers:,} customers, changed vs all selection")
        results["change_driven"] = measure_change_driven(quick, change_customers, log=_log)
        from bench.change_driven_capillary import measure as measure_capillary

        _log(f"change_driven (Capillary, events + sweep): {change_customers:,} customers")
        results["change_driven"]["capillary"] = measure_capillary(change_customers, 3 if quick else 7, log=_log)

    if "reader_availability" in scenarios and have_b:
        from bench.reader_availability import measure as measure_readers, summary as reader_summary

        results["reader_availability"] = measure_readers(quick, workdir=out / "reader_availability", log=_log)
        _log(reader_summary(results["reader_availability"]))

    results["total_seconds"] = round(time.perf_counter() - t_start, 1)
    results["targets"] = report.targets(results)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    table = report.render(results)
    if not quick and args.out is None:
        report.update_docs(ROOT / "docs" / "performance.md", table, results)
    print()
    print(table)
    print(f"\nresults: {_shown(results_path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
