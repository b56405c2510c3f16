"""Bench scenario `event_receiver`: how many Capillary events per second the webhook receiver stores, and how long a
delivery waits for its durable 2xx, on this machine.

    python -m bench.events            # ~1 min; merges the key `event_receiver` into bench/results.json
    python -m bench.events --quick    # a smoke run; writes bench/out/results-events-quick.json only

The real `loyalty-etl events serve` runs as a child process on loopback with a fresh store; N client threads, each on
its own keep-alive connection as Capillary's `maxAllowedConnections` are, POST sandbox-shaped events (~0.8 KB) and
time each request from send to the 200, which the receiver sends only after the event's commit was fsynced. Each
concurrency runs with group commit (the default) and with one commit per event, alternating, so their ratio is
taken within one run (this machine's speed drifts). Every acknowledged event is checked in the store afterwards.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from bench.harness import ROOT, save_scenario

SECRET = "bench-secret-0123456789abcdef"
PATH = "/capillary/events"


def _event(n: int) -> bytes:
    ids = {"customerId": 564_000_000 + n % 100_000,
           "instore": {"mobile": f"4207{n % 100_000:08d}", "email": f"member{n % 100_000:08d}@sandbox.example",
                       "externalId": f"EXT-7-{n % 100_000:08d}"}}
    return json.dumps({
        "eventName": "pointsTransferred", "eventId": f"bench-{n:09d}-4f1c-9a0e-6b2d8c3e5f71", "orgId": 100458,
        "refId": f"100458_{n}", "apiRequestId": f"{n:032x}", "createdAt": 1763596800000 + n,
        "data": {"transferId": 1_000_000 + n, "pointsTransferred": 25.0, "programName": "SandboxDefaultProgram",
                 "notes": "gift", "transferredAt": 1763596800000 + n,
                 "transferredFrom": {"entityType": "CUSTOMER", "customerIdentifiers": ids},
                 "transferredTo": {"entityType": "CUSTOMER", "customerIdentifiers": {**ids, "customerId": 1 + n}},
                 "customerIdentifiers": ids},
        "loyaltyEventId": None}).encode()


class _Receiver:
    def __init__(self, workdir: Path, group_commit: bool) -> None:
        self.store = workdir / "events.sqlite3"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SOURCES__", "DESTINATION__"))}
        env.update({"SOURCES__CAPILLARY__WEBHOOK__SECRET": SECRET,
                    "SOURCES__CAPILLARY__WEBHOOK__STORE": str(self.store),
                    "SOURCES__CAPILLARY__WEBHOOK__GROUP_COMMIT": "true" if group_commit else "false",
                    "DESTINATION__DUCKDB__CREDENTIALS": str(workdir / "warehouse.duckdb")})
        self.out = workdir / "receiver.out"
        self.proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "events", "serve", "--port", "0"],
                                     cwd=ROOT, env=env, stdout=self.out.open("wb"), stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while "receiving" not in self.out.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"receiver did not start: {self.out.read_text()}")
            time.sleep(0.05)
        self.port = int(self.out.read_text().split("127.0.0.1:", 1)[1].split("/", 1)[0])
        self.ps = psutil.Process(self.proc.pid)

    def cpu_s(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)

    def stored(self) -> int:
        conn = sqlite3.connect(f"file:{self.store}?mode=ro", uri=True)
        try:
            return conn.execute("SELECT count(*) FROM events").fetchone()[0]
        finally:
            conn.close()


def _send(port: int, numbers: list[int], latencies: list[float], failures: list[int]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json", "Authorization": SECRET}
    for n in numbers:
        body = _event(n)
        t0 = time.perf_counter()
        conn.request("POST", PATH, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        latencies.append(time.perf_counter() - t0)
        if resp.status != 200:
            failures.append(resp.status)
    conn.close()


def run_once(group_commit: bool, concurrency: int, events: int, warmup: int = 50) -> dict[str, Any]:
    work = ROOT / "bench" / "out"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="events-", dir=work) as tmp:
        r = _Receiver(Path(tmp), group_commit)
        try:
            _send(r.port, list(range(warmup)), [], [])
            per_thread = [list(range(warmup + k, warmup + events, concurrency)) for k in range(concurrency)]
            latencies: list[float] = []
            failures: list[int] = []
            threads = [threading.Thread(target=_send, args=(r.port, nums, latencies, failures))
                       for nums in per_thread]
            cpu0, t0 = r.cpu_s(), time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            cpu = r.cpu_s() - cpu0
        finally:
            r.stop()
        stored = r.stored()
    lat = sorted(latencies)
    return {
        "group_commit": group_commit, "concurrency": concurrency, "events": events,
        "events_per_s": round(events / wall, 1), "wall_s": round(wall, 2),
        "p50_ms": round(statistics.median(lat) * 1000, 2),
        "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 2),
        "max_ms": round(lat[-1] * 1000, 2),
        "receiver_cpu_ms_per_event": round(cpu / events * 1000, 3),
        "non_200": len(failures), "stored": stored, "all_stored": stored == events + warmup and not failures,
    }


def fsync_ms(samples: int = 30) -> float:
    """Median time of one 1 KB write + fsync on the disk the bench writes to: the floor of a durable 2xx."""
    times = []
    work = ROOT / "bench" / "out"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=work) as f:
        for _ in range(samples):
            t0 = time.perf_counter()
            f.write(b"x" * 1024)
            f.flush()
            os.fsync(f.fileno())
            times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1000, 2)


def measure(quick: bool = False, log=print, repeats: int | None = None) -> dict[str, Any]:
    """Each (concurrency, commit mode) `repeats` times, the modes alternating; the run with the median events/s
    stands for the pair (the disk is shared with other work, so single runs scatter)."""
    events = 300 if quick else 2000
    levels = [1, 16] if quick else [1, 4, 16]
    repeats = repeats or (1 if quick else 3)
    out: dict[str, Any] = {"command": "python -m bench.events" + (" --quick" if quick else ""),
                           "events_per_run": events, "repeats": repeats, "body_bytes": len(_event(0)),
                           "fsync_ms_median": fsync_ms(), "runs": []}
    for c in levels:
        tries: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
        for i in range(repeats):
            for group in (True, False):
                log(f"[bench events] concurrency {c}, group commit {'on' if group else 'off'} "
                    f"[{i + 1}/{repeats}]: {events} events")
                tries[group].append(run_once(group, c, events))
        for group, runs in tries.items():
            runs.sort(key=lambda r: r["events_per_s"])
            median = dict(runs[len(runs) // 2])
            median["events_per_s_all"] = [r["events_per_s"] for r in runs]
            median["p99_ms_all"] = [r["p99_ms"] for r in runs]
            median["all_stored"] = all(r["all_stored"] for r in runs)
            out["runs"].append(median)
    by = {(r["group_commit"], r["concurrency"]): r for r in out["runs"]}
    out["group_vs_single_throughput"] = {str(c): round(by[(True, c)]["events_per_s"] / by[(False, c)]["events_per_s"],
                                                       2) for c in levels}
    best = max((r for r in out["runs"] if r["group_commit"]), key=lambda r: r["events_per_s"])
    out["summary"] = {"events_per_s": best["events_per_s"], "p99_ms": best["p99_ms"],
                      "at_concurrency": best["concurrency"], "all_stored": all(r["all_stored"] for r in out["runs"])}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.events", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer events and concurrency levels (a smoke run)")
    ap.add_argument("--out", type=Path, help="results file to merge into (default bench/results.json; "
                                             "quick: bench/out/results-events-quick.json)")
    args = ap.parse_args(argv)
    result = measure(args.quick)
    path = args.out or (ROOT / "bench" / "out" / "results-events-quick.json" if args.quick
                        else ROOT / "bench" / "results.json")
    save_scenario(path, ("event_receiver",), result)
    for r in result["runs"]:
        print(f"concurrency {r['concurrency']:>2}  group commit {'on ' if r['group_commit'] else 'off'}  "
              f"{r['events_per_s']:>8.1f} events/s  p50 {r['p50_ms']:>7.2f} ms  p99 {r['p99_ms']:>7.2f} ms  "
              f"stored {r['stored']}  {'ok' if r['all_stored'] else 'MISSING'}")
    print(f"fsync median {result['fsync_ms_median']} ms; group/single throughput {result['group_vs_single_throughput']}")
    print(f"results: {path}")
    return 0 if result["summary"]["all_stored"] else 1


if __name__ == "__main__":
    sys.exit(main())
