"""Per-unit costs of the pipeline's hot path, one thread, against a bench sandbox in its own process:

    python -m bench.units [--customers 3000]

- HTTP: CPU per request with the stdlib's `http.client` and with pycurl (the transport `pipelines/http.py` uses),
  both including the orjson parse, same requests back to back;
- fetch: CPU per customer of `CareCloudApi.fetch` / `CapillaryApi.fetch` (the transport plus retries, auth, limiter);
- normalize: CPU per CareCloud record of `PointHistoryBatch.add` and `.build` (records -> Arrow);
- sandbox: its CPU per request (it shares this machine's two cores with the pipeline in `make bench`);
- in flight: user and kernel CPU per customer of fetch + normalize (`extraction.produce` with each source's spec)
  with 1 and with 8 customers in flight (what a worker process runs at the default concurrency), all on one thread
  through libcurl's multi interface (`pipelines/multiplex.py`; these were once fetch threads, whose GIL hand-overs
  cost kernel CPU per customer: docs/decisions/session-5-multiplex.md).

Every figure is printed beside a CPU speed probe (this machine's speed drifts), so compare figures within one run.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import http.client
import io
import os
import resource
import sys
from urllib.parse import urlencode, urlsplit

from bench.harness import ROOT, SandboxProcess, speed_probe

NOW = "2026-11-20T00:00:00+00:00"


def _cpu() -> float:
    return sum(_user_sys())


def _user_sys() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.units", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=3000)
    args = ap.parse_args(argv)
    n = args.customers
    out = ROOT / "bench" / "out" / "units"
    out.mkdir(parents=True, exist_ok=True)
    with SandboxProcess({"customers": n, "seed": 7, "now": NOW}, log_file=out / "sandbox.log") as sb:
        os.environ.update(sb.call("env", warehouse=str(out / "units.duckdb")))
        for source in ("CARECLOUD", "CAPILLARY"):
            os.environ[f"SOURCES__{source}__RATE_LIMIT"] = "1000000"
        import orjson
        import pycurl

        from pipelines.capillary.helpers import CapillaryApi
        from pipelines.carecloud.helpers import CareCloudApi
        from pipelines.carecloud.normalize import PointHistoryBatch
        from pipelines.columns import ColumnTypes
        from pipelines.config import load_settings
        from pipelines.http import HttpStats
        from pipelines.windows import Window, local_bounds, utc

        settings = load_settings()
        cc = CareCloudApi(settings.source("carecloud"), HttpStats())
        cap = CapillaryApi(settings.source("capillary"), HttpStats())
        cc.check()
        ids = [r["customer_id"] for r in csv.DictReader(open(settings.source("carecloud").customers))][:n]
        cap_ids = [next(iter(r.values())) for r in csv.DictReader(open(settings.source("capillary").customers))][:n]
        window = Window(utc(dt.datetime(2023, 1, 1, tzinfo=dt.timezone.utc)),
                        utc(dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc)))
        tf, tt = local_bounds(window, cc.timezone)
        records = [(c, cc.fetch(c, tf, tt)[0]) for c in ids]      # also warms the sandbox's cache
        for c in cap_ids:
            cap.fetch(c)
        total = sum(len(r) for _, r in records)
        print(f"{n:,} customers, {total:,} CareCloud records; CPU probe {speed_probe():.0f} ms")

        # transports, the same GET per customer
        _, auth = cc.auth.headers()
        u = urlsplit(settings.source("carecloud").base_url)
        path = u.path + "/point-history"
        queries = [urlencode({"customer_id": c, "count": 1000, "time_from": tf, "time_to": tt}) for c in ids]
        conn = http.client.HTTPConnection(u.hostname, u.port)
        c0 = _cpu()
        for q in queries:
            conn.request("GET", f"{path}?{q}", headers={"Accept": "application/json", **auth})
            orjson.loads(conn.getresponse().read())
        stdlib = (_cpu() - c0) / n
        curl = pycurl.Curl()
        curl.setopt(pycurl.HTTPHEADER, ["Accept: application/json"] + [f"{k}: {v}" for k, v in auth.items()])
        base = f"{u.scheme}://{u.hostname}:{u.port}{path}?"
        c0 = _cpu()
        for q in queries:
            buf = io.BytesIO()
            curl.setopt(pycurl.URL, base + q)
            curl.setopt(pycurl.WRITEDATA, buf)
            curl.perform()
            orjson.loads(buf.getvalue())
        curled = (_cpu() - c0) / n
        print(f"HTTP GET + JSON parse, CPU per request: http.client {stdlib * 1e6:.0f} us, pycurl {curled * 1e6:.0f} us")

        s0, c0 = sb.cpu_s(), _cpu()
        for c in ids:
            cc.fetch(c, tf, tt)
        cc_fetch, cc_sandbox = (_cpu() - c0) / n, (sb.cpu_s() - s0) / n
        s0, c0 = sb.cpu_s(), _cpu()
        for c in cap_ids:
            cap.fetch(c)
        cap_fetch, cap_sandbox = (_cpu() - c0) / n, (sb.cpu_s() - s0) / n
        print(f"fetch, CPU per customer: CareCloud {cc_fetch * 1e6:.0f} us (sandbox {cc_sandbox * 1e6:.0f} us), "
              f"Capillary {cap_fetch * 1e6:.0f} us (sandbox {cap_sandbox * 1e6:.0f} us)")

        warm = PointHistoryBatch(cc.timezone, "units", ColumnTypes())  # first build imports pyarrow.compute etc.
        warm.add(*records[0][:1], window, records[0][1])
        warm.build()
        batch = PointHistoryBatch(cc.timezone, "units", ColumnTypes())
        c0 = _cpu()
        for c, recs in records:
            batch.add(c, window, recs)
        c1 = _cpu()
        batch.build()
        c2 = _cpu()
        print(f"normalize, CPU per CareCloud record: add {(c1 - c0) / total * 1e6:.1f} us, "
              f"build {(c2 - c1) / total * 1e6:.1f} us; CPU probe {speed_probe():.0f} ms")

        from pipelines import registry
        from pipelines.extraction import ExtractJob, produce

        def in_flight(api: object, source: str, customers: list[str], concurrency: int) -> tuple[float, float]:
            """User and kernel CPU per customer, chunks of 200 customers as a worker gets them."""
            tasks = [(c, window) for c in customers]
            u0, s0 = _user_sys()
            for i in range(0, len(tasks), 200):
                job = ExtractJob(source="units", run_id="units", tasks=tasks[i:i + 200], types=ColumnTypes(),
                                 concurrency=concurrency, batch_rows=10_000, stats=HttpStats(), crash_points=False)
                for _ in produce(registry.get(source), api, job):  # type: ignore[arg-type]
                    pass
            u1, s1 = _user_sys()
            return (u1 - u0) / len(customers) * 1e6, (s1 - s0) / len(customers) * 1e6

        for concurrency in (1, 8):
            cu, cs = in_flight(cc, "carecloud", ids, concurrency)
            pu, ps = in_flight(cap, "capillary", cap_ids, concurrency)
            print(f"fetch + normalize with {concurrency} customer(s) in flight, CPU per customer (user + kernel): "
                  f"CareCloud {cu:.0f} + {cs:.0f} us, Capillary {pu:.0f} + {ps:.0f} us; CPU probe {speed_probe():.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
