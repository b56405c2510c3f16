"""The three variants as measured child processes against one sandbox process, plus their bookkeeping.

Every variant reports the same figures: records landed (CareCloud point-history rows + Capillary per-customer
transfer rows), records lost against the sandbox truth, wall seconds, client CPU seconds, peak RSS, the requests
the sandbox answered (by status) and the sandbox's own CPU seconds while the variant ran.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from bench.harness import PYTHON, ROOT, ChildRun, SandboxProcess, run_child, speed_probe

DATA_ENDPOINTS = ("carecloud.point_history", "capillary.transfers")


def _request_diff(before: dict, after: dict) -> dict[str, Any]:
    out: dict[str, dict[str, int]] = {}
    for endpoint, statuses in after["requests"].items():
        prev = before["requests"].get(endpoint, {})
        d = {s: n - prev.get(s, 0) for s, n in statuses.items() if n - prev.get(s, 0)}
        if d:
            out[endpoint] = d
    data = [out.get(e, {}) for e in DATA_ENDPOINTS]
    total = sum(sum(d.values()) for d in data)
    served = {k: n - before.get("records_served", {}).get(k, 0) for k, n in after.get("records_served", {}).items()}
    return {
        "by_endpoint": out,
        "records_served": served,
        "data_requests": total,
        "data_200": sum(d.get("200", 0) for d in data),
        "data_429": sum(d.get("429", 0) for d in data),
    }


def measure(sb: SandboxProcess, name: str, argv: list[str], workdir: Path, env: dict[str, str] | None = None,
            result_file: Path | None = None, sample_s: float = 0.2,
            poll_s: float | None = None) -> tuple[ChildRun, dict[str, Any]]:
    """Run one child against the sandbox and return (child run, figures common to every variant).
    poll_s: also sample the sandbox's request counters over time (for the achieved request rate)."""
    load0 = os.getloadavg()[0]
    probe = speed_probe()
    before, cpu0 = sb.call("stats"), sb.cpu_s()
    timeline: list[tuple[float, dict[str, dict[str, int]]]] = []
    stop = threading.Event()

    def poll() -> None:
        t0 = time.perf_counter()
        while not stop.wait(poll_s):
            r = _request_diff(before, sb.call("stats"))
            timeline.append((round(time.perf_counter() - t0, 3), r["by_endpoint"]))

    poller = threading.Thread(target=poll, daemon=True) if poll_s else None
    if poller:
        poller.start()
    try:
        run = run_child(argv, env=env, result_file=result_file, log_file=workdir / f"{name}.log", sample_s=sample_s)
    finally:
        stop.set()
        if poller:
            poller.join()
    after, cpu1 = sb.call("stats"), sb.cpu_s()
    if run.returncode != 0:
        raise RuntimeError(f"variant {name} exited {run.returncode}; log {workdir / f'{name}.log'}:\n{run.log[-3000:]}")
    req = _request_diff(before, after)
    figures = {
        "wall_s": round(run.wall_s, 3),
        "cpu_s": round(run.cpu_s, 3),
        "cpu_sys_s": round(run.cpu_sys_s, 3),   # kernel time: loopback TCP, futexes, page faults
        "peak_rss_mb": round(run.peak_rss_mb, 1),
        "peak_tree_rss_mb": round(run.peak_tree_rss_mb, 1),
        "sandbox_cpu_s": round(cpu1 - cpu0, 3),
        "requests": req,
        "requests_per_s": round(req["data_requests"] / run.wall_s, 1) if run.wall_s else None,
        "rss_samples": run.summary()["rss_samples"],
        # other processes on the machine compete for the 2 cores: 1-minute load average before and after
        "loadavg": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "speed_probe_ms": probe,
    }
    if poll_s:
        figures["timeline"] = timeline
    return run, figures


def with_records(figures: dict[str, Any], point_history: int, transfers: int,
                 truth: dict[str, int] | None) -> dict[str, Any]:
    records = point_history + transfers
    figures.update(point_history=point_history, customer_transfers=transfers, records=records,
                   records_per_s=round(records / figures["wall_s"], 1),
                   # load-robust companion figure: other processes on a shared 2-core machine stretch wall time
                   # but not the CPU a variant itself needs
                   records_per_cpu_s=round(records / figures["cpu_s"], 1) if figures["cpu_s"] else None)
    if truth:
        figures["lost"] = {
            "point_history": truth["carecloud_point_history"] - point_history,
            "customer_transfers": truth["capillary_customer_transfers"] - transfers,
        }
    return figures


def sandbox_env(sb: SandboxProcess, workdir: Path, db_name: str, limit: int | None = None) -> dict[str, str]:
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    env = sb.call("env", warehouse=str(workdir / db_name), limit=limit)
    (workdir / "env.json").write_text(json.dumps(env))
    return env


# ---------------------------------------------------------------------------------------------------- (a)
def run_naive(sb: SandboxProcess, workdir: Path, limit: int | None, truth: dict[str, int] | None,
              loader_file_format: str | None = None, tuned: bool = False,
              env: dict[str, str] | None = None) -> dict[str, Any]:
    """(a), or with loader_file_format="parquet" (a'), or with tuned=True (a''): dlt tuned per its performance
    guide (bench/naive.py TUNED). env: extra environment for the child (dlt config, e.g. a sweep of TUNED)."""
    sandbox_env(sb, workdir, "naive.duckdb", limit)
    result = workdir / "result.json"
    argv = [PYTHON, "-m", "bench.naive", "--env-json", str(workdir / "env.json"), "--db",
            str(workdir / "naive.duckdb"), "--workdir", str(workdir / "dlt"), "--result", str(result)]
    if loader_file_format:
        argv += ["--loader-file-format", loader_file_format]
    if tuned:
        argv.append("--tuned")
    run, fig = measure(sb, "naive", argv, workdir, env=env, result_file=result)
    p = run.payload
    fig["phases"] = {k: round(p[k], 3) for k in ("extract_s", "normalize_s", "load_s")}
    if tuned:
        fig["dlt_config"] = {"loader_file_format": p["loader_file_format"],
                             "normalize_workers": p["normalize_workers"], **p["config"]}
    fig["customers"] = limit
    return with_records(fig, p["point_history"], p["customer_transfers"], truth)


# ---------------------------------------------------------------------------------------------------- (c)
def run_limit(sb: SandboxProcess, workdir: Path, truth: dict[str, int] | None, threads: int = 16) -> dict[str, Any]:
    sandbox_env(sb, workdir, "limit.duckdb")
    pages = workdir / "pages"
    fr, fl = workdir / "fetch.json", workdir / "load.json"
    frun, ffig = measure(sb, "limit-fetch", [PYTHON, "-m", "bench.limit", "fetch", "--env-json",
                                             str(workdir / "env.json"), "--out", str(pages), "--threads",
                                             str(threads), "--result", str(fr)], workdir, result_file=fr)
    if frun.payload.get("errors"):
        raise RuntimeError(f"limit fetch had errors: {frun.payload['error_examples']}")
    lrun, lfig = measure(sb, "limit-load", [PYTHON, "-m", "bench.limit", "load", "--out", str(pages), "--db",
                                            str(workdir / "limit.duckdb"), "--result", str(fl)], workdir,
                         result_file=fl)
    p = lrun.payload
    ffig["bytes"] = frun.payload["bytes"]
    lfig["phases"] = {k: round(v, 3) for k, v in p.items() if k.endswith("_s")}
    lfig["rows"] = p["rows"]
    fetch = with_records(ffig, p["point_history"], p["customer_transfers"], None)
    load = with_records(lfig, p["point_history"], p["customer_transfers"], None)
    total = {
        "wall_s": round(ffig["wall_s"] + lfig["wall_s"], 3),
        "cpu_s": round(ffig["cpu_s"] + lfig["cpu_s"], 3),
        "peak_rss_mb": max(ffig["peak_rss_mb"], lfig["peak_rss_mb"]),
        "sandbox_cpu_s": ffig["sandbox_cpu_s"],
        "requests": ffig["requests"],
        "requests_per_s": round(ffig["requests"]["data_requests"] / (ffig["wall_s"] + lfig["wall_s"]), 1),
        "loadavg": [ffig["loadavg"][0], lfig["loadavg"][1]],
        "speed_probe_ms": ffig.get("speed_probe_ms"),
    }
    total = with_records(total, p["point_history"], p["customer_transfers"], truth)
    shutil.rmtree(pages, ignore_errors=True)   # up to GBs at the big scale; the figures are what we keep
    return {"total": total, "fetch": fetch, "duckdb": load}


# ---------------------------------------------------------------------------------------------------- (b)
def pipeline_available() -> bool:
    return (ROOT / "pipelines" / "runner.py").exists() and (ROOT / "pipelines" / "commands" / "run.py").exists()


def pipeline_env(env: dict[str, str], rate_limit: float | None, concurrency: int | None) -> dict[str, str]:
    out = dict(env)
    for source in ("CARECLOUD", "CAPILLARY"):
        if rate_limit is not None:
            out[f"SOURCES__{source}__RATE_LIMIT"] = str(rate_limit)
        if concurrency is not None:
            out[f"SOURCES__{source}__CONCURRENCY"] = str(concurrency)
        # the sandbox's data starts at 2024-01-01 project local time, i.e. 23:00 UTC the day before the
        # default initial_start: start earlier so every record the sandbox holds is in the first window
        out[f"SOURCES__{source}__INITIAL_START"] = "2023-01-01T00:00:00+00:00"
    out["RUNTIME__LOG_LEVEL"] = "WARNING"
    return out


def loyalty_etl() -> str:
    exe = Path(PYTHON).parent / "loyalty-etl"
    return str(exe) if exe.exists() else "loyalty-etl"


def warehouse_counts(db: Path) -> dict[str, int]:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        out = {}
        for table in ("carecloud_point_history", "capillary_customer_transfers"):
            out[table] = con.execute(f"SELECT count(*) FROM loyalty_raw.{table}").fetchone()[0]
        return out
    finally:
        con.close()


def warehouse_shape(db: Path) -> dict[str, Any]:
    """What a run left in its warehouse beside the rows: CareCloud columns and child tables, sync_issues by code."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        tables = [r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'loyalty_raw' "
            "AND table_name LIKE 'carecloud_point_history%' AND table_name NOT LIKE '_dlt%'").fetchall()]
        columns = con.execute("SELECT count(*) FROM information_schema.columns WHERE table_schema = 'loyalty_raw' "
                              "AND table_name = 'carecloud_point_history'").fetchone()[0]
        issues = dict(con.execute("SELECT code, count(*) FROM loyalty_raw.sync_issues GROUP BY code ORDER BY 2 DESC"
                                  ).fetchall())
        return {"point_history_columns": columns, "point_history_child_tables": len(tables) - 1,
                "sync_issues": issues}
    finally:
        con.close()


def run_pipeline(sb: SandboxProcess, workdir: Path, truth: dict[str, int] | None, *, fresh: bool = True,
                 name: str = "pipeline", rate_limit: float | None = 1e6, concurrency: int | None = None,
                 until: str | None = None, profile: str | None = None, sample_s: float = 0.2,
                 poll_s: float | None = None) -> dict[str, Any]:
    """`loyalty-etl run --no-models` exactly as a user runs it, with env pointing at the sandbox.

    fresh=False re-runs on the same warehouse (nightly runs). rate_limit=1e6 takes the client limiter out of the
    way when the sandbox imposes no limit (throughput runs); the rate-limit run passes the sandbox's R.
    profile: "py-spy" wraps the run in `py-spy record` (all threads, native off) writing a speedscope file."""
    db = workdir / "pipeline.duckdb"
    if fresh:
        env = sandbox_env(sb, workdir, "pipeline.duckdb")
    else:
        env = json.loads((workdir / "env.json").read_text())
    before = warehouse_counts(db) if not fresh and db.exists() else {"carecloud_point_history": 0,
                                                                      "capillary_customer_transfers": 0}
    argv = [loyalty_etl(), "--log-format", "json", "run", "--no-models"]
    if until:
        argv += ["--until", until]
    if profile:
        spy = Path(PYTHON).parent / "py-spy"
        if not spy.exists():
            raise RuntimeError("--profile needs py-spy (in the `bench` extra): .venv/bin/pip install py-spy")
        extra = os.environ.get("BENCH_PYSPY_FLAGS", "").split()
        rate = [] if {"-r", "--rate"} & set(extra) else ["-r", "25"]  # py-spy refuses a second --rate
        argv = [str(spy), "record", "--subprocesses", "--format", "speedscope", *rate, *extra,
                "-o", str(workdir / f"{name}.speedscope.json"), "--"] + argv
    run, fig = measure(sb, name, argv, workdir, env=pipeline_env(env, rate_limit, concurrency), sample_s=sample_s,
                       poll_s=poll_s)
    after = warehouse_counts(db)
    fig["warehouse_rows"] = after
    fig["log_tail"] = run.log[-1500:]
    fig = with_records(fig, after["carecloud_point_history"] - before["carecloud_point_history"],
                       after["capillary_customer_transfers"] - before["capillary_customer_transfers"], None)
    if truth:
        fig["lost"] = {
            "point_history": truth["carecloud_point_history"] - after["carecloud_point_history"],
            "customer_transfers": truth["capillary_customer_transfers"] - after["capillary_customer_transfers"],
        }
    return fig
