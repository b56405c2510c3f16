"""Measure the sandbox's own serving speed on loopback: `python -m pipelines.sandbox.speed [--seconds 3]`.

Prints a Markdown table (copied into docs/sandbox.md):
- requests/s and records/s for full 100- and 1000-record CareCloud pages, server in its own process (as
  `loyalty-etl sandbox` runs it), one keep-alive client connection per client process;
- the same through `requests.Session` (what a Python client pays on top);
- the keep-alive stall: median request latency with headers+body in one send and TCP_NODELAY (default),
  versus two sends with Nagle on (the `http.server` pattern) and two sends with TCP_NODELAY;
- the generator's cold speed (records/s created on first touch of a customer).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import time

import orjson
import psutil

BASE = "/webservice/rest-api/enterprise-interface/v1.0"
LOGIN = {"user_external_application_id": "sandbox-app", "login": "sandbox", "password": "sandbox-password"}
NOW = "2027-07-01T00:00:00+00:00"     # everything visible: pages are full


class RawClient:
    """A minimal keep-alive HTTP/1.1 client, so the figure is the server's, not a client library's."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def request(self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
        head = [f"{method} {path} HTTP/1.1", "Host: sandbox"]
        for k, v in (headers or {}).items():
            head.append(f"{k}: {v}")
        if body:
            head.append(f"Content-Length: {len(body)}")
        self.sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(1 << 20)
        end = self.buf.index(b"\r\n\r\n")
        length = 0
        for line in self.buf[:end].split(b"\r\n")[1:]:
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        total = end + 4 + length
        while len(self.buf) < total:
            self.buf += self.sock.recv(1 << 20)
        body, self.buf = self.buf[end + 4: total], self.buf[total:]
        return body

    def login(self) -> str:
        body = self.request("POST", BASE + "/users/actions/login", {"Content-Type": "application/json"},
                            orjson.dumps(LOGIN))
        return orjson.loads(body)["data"]["bearer_token"]


def _page_paths(customer_ids: list[str], count: int, records: int) -> list[str]:
    paths = []
    for cid in customer_ids:
        for offset in range(0, records - count + 1, count):
            paths.append(f"{BASE}/point-history?customer_id={cid}&count={count}&offset={offset}"
                         "&sort_field=point_history_record_time&sort_direction=ASC")
    return paths


def _client_worker(host: str, port: int, paths: list[str], seconds: float, out: mp.Queue) -> None:
    c = RawClient(host, port)
    auth = {"Authorization": f"Bearer {c.login()}"}
    n, deadline = 0, time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        c.request("GET", paths[n % len(paths)], auth)
        n += 1
    out.put((n, time.perf_counter() - start))


def _start_server(customers: int, heavy_records: int) -> tuple[subprocess.Popen, str, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "sandbox", "--port", "0", "--customers", str(customers),
         "--now", NOW, "--heavy-every", "50", "--heavy-records", str(heavy_records)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if "serving" not in line:
        proc.kill()
        raise RuntimeError(f"sandbox did not start: {line}{proc.stderr.read()}")
    url = line.split(" on ")[1].strip()
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return proc, host, int(port)


def throughput(seconds: float, clients: int) -> list[dict]:
    from pipelines.sandbox.data import DataGenerator
    from pipelines.sandbox.config import SandboxConfig

    customers, heavy = 500, 3000
    gen = DataGenerator(SandboxConfig(customers=customers, heavy_every=50, heavy_records=heavy))
    heavy_ids = [gen.carecloud_id(i) for i in range(customers) if i % 50 == 7]
    proc, host, port = _start_server(customers, heavy)
    server = psutil.Process(proc.pid)
    rows = []
    try:
        warm = RawClient(host, port)
        auth = {"Authorization": f"Bearer {warm.login()}"}
        for cid in heavy_ids:  # generate + cache first: measure serving, not the generator
            body = warm.request("GET", f"{BASE}/point-history?customer_id={cid}&count=1", auth)
            assert orjson.loads(body)["data"]["total_items"] >= heavy
        for count in (100, 1000):
            paths = _page_paths(heavy_ids, count, heavy)
            probe = orjson.loads(warm.request("GET", paths[0], auth))["data"]["point_history"]
            assert len(probe) == count
            for k in sorted({1, clients}):
                q: mp.Queue = mp.Queue()
                procs = [mp.Process(target=_client_worker, args=(host, port, paths, seconds, q)) for _ in range(k)]
                cpu0 = _cpu(server)
                for p in procs:
                    p.start()
                results = [q.get() for _ in procs]
                for p in procs:
                    p.join()
                cpu = _cpu(server) - cpu0
                rps = sum(n / t for n, t in results)
                n = sum(n for n, _ in results)
                rows.append({"client": f"raw socket x{k}", "page": count, "rps": rps, "records_s": rps * count,
                             "cpu_ms": cpu / n * 1000})
            cpu0 = _cpu(server)
            row = _requests_row(host, port, paths, seconds, count)
            row["cpu_ms"] = (_cpu(server) - cpu0) / row.pop("n") * 1000
            rows.append(row)
    finally:
        proc.terminate()
        proc.wait(10)
    return rows


def _requests_row(host: str, port: int, paths: list[str], seconds: float, count: int) -> dict:
    import requests

    s = requests.Session()
    token = s.post(f"http://{host}:{port}{BASE}/users/actions/login", json=LOGIN).json()["data"]["bearer_token"]
    headers = {"Authorization": f"Bearer {token}"}
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        s.get(f"http://{host}:{port}{paths[n % len(paths)]}", headers=headers).json()
        n += 1
    rps = n / (time.perf_counter() - start)
    return {"client": "requests.Session + .json()", "page": count, "rps": rps, "records_s": rps * count, "n": n}


def _cpu(proc: "psutil.Process") -> float:
    t = proc.cpu_times()
    return t.user + t.system


def stall(n: int = 60) -> list[dict]:
    from pipelines.sandbox import FaultConfig, Sandbox, SandboxConfig, ServerOptions

    rows = []
    for label, opts in (("one send + TCP_NODELAY (default)", ServerOptions()),
                        ("two sends + TCP_NODELAY", ServerOptions(nodelay=True, single_send=False)),
                        ("two sends + Nagle (http.server pattern)", ServerOptions(nodelay=False, single_send=False))):
        with Sandbox(SandboxConfig(customers=20, now=NOW), FaultConfig(), opts) as sb:
            c = RawClient("127.0.0.1", sb.port)
            auth = {"Authorization": f"Bearer {c.login()}"}
            path = f"{BASE}/point-history?customer_id={sb.customer_ids('carecloud')[1]}&count=100"
            c.request("GET", path, auth)
            times = []
            for _ in range(n):
                t = time.perf_counter()
                c.request("GET", path, auth)
                times.append(time.perf_counter() - t)
            rows.append({"mode": label, "median_ms": statistics.median(times) * 1000,
                         "p90_ms": sorted(times)[int(n * 0.9)] * 1000})
    return rows


def generator_speed(customers: int = 2000) -> float:
    from pipelines.sandbox.config import SandboxConfig
    from pipelines.sandbox.data import DataGenerator

    gen = DataGenerator(SandboxConfig(customers=customers, heavy_every=0))
    start = time.process_time()  # CPU time: the figure should not depend on what else the machine runs
    n = sum(len(gen.carecloud(i)) for i in range(customers))
    return n / (time.process_time() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.sandbox.speed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement (default %(default)s)")
    parser.add_argument("--clients", type=int, default=2, help="also measure with this many client processes")
    args = parser.parse_args(argv)
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d')}\n")
    print(f"load average before: {os.getloadavg()[0]:.1f}\n")
    print("| client | page size | requests/s | records/s | server CPU ms/request | records/s per server core |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in throughput(args.seconds, args.clients):
        print(f"| {r['client']} | {r['page']} | {r['rps']:,.0f} | {r['records_s']:,.0f} | {r['cpu_ms']:.2f} | "
              f"{r['page'] / r['cpu_ms'] * 1000:,.0f} |")
    print("\n| keep-alive, 100-record page | median ms | p90 ms |\n|---|---:|---:|")
    for r in stall():
        print(f"| {r['mode']} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} |")
    print(f"\ngenerator, cold: {generator_speed():,.0f} records per CPU second (first touch of a customer; cached afterwards)")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
