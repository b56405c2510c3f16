"""Start the real `loyalty-etl events serve` in a subprocess and talk to it over loopback."""

from __future__ import annotations

import http.client
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.helpers.cli import REPO_ROOT

SECRET = "whSecret-7Hq2Xv9Lm4Tz8"
PATH = "/capillary/events"


class Receiver:
    def __init__(self, workdir: Path, *extra_args: str, env: dict[str, str] | None = None,
                 store: Path | None = None, wrap: list[str] | None = None, port: int = 0) -> None:
        self.workdir = workdir
        self.warehouse = workdir / "warehouse.duckdb"
        self.store = store or workdir / "capillary_events.sqlite3"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("SOURCES__", "DESTINATION__"))}
        self.env.update({"SOURCES__CAPILLARY__WEBHOOK__SECRET": SECRET,
                         "SOURCES__CAPILLARY__WEBHOOK__STORE": str(self.store),
                         "DESTINATION__DUCKDB__CREDENTIALS": str(self.warehouse)})
        self.env.update(env or {})
        self.args = list(extra_args)
        self.wrap = wrap or []
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.listen_port = port
        self.runs = 0

    def start(self, timeout: float = 60) -> "Receiver":
        self.runs += 1
        self.out = self.workdir / f"receiver-{id(self)}-{self.runs}.out"
        self.err = self.workdir / f"receiver-{id(self)}-{self.runs}.err"
        self.proc = subprocess.Popen(
            [*self.wrap, sys.executable, "-m", "pipelines.cli", *self.args, "events", "serve", "--port",
             str(self.listen_port)],
            cwd=REPO_ROOT, env=self.env, stdout=self.out.open("wb"), stderr=self.err.open("wb"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.out.read_text()
            if "receiving" in text:
                self.port = int(text.split("127.0.0.1:", 1)[1].split("/", 1)[0])
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"receiver exited {self.proc.returncode}: {self.err.read_text()}")
            time.sleep(0.05)
        raise RuntimeError("receiver did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"

    def post(self, body: bytes | dict | str, headers: dict[str, str] | None = None,
             secret: str | None = SECRET) -> tuple[int, dict]:
        data = json.dumps(body).encode() if isinstance(body, dict) else body.encode() if isinstance(body, str) \
            else body
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            hdrs = {"Content-Type": "application/json", **(headers or {})}
            if secret is not None:
                hdrs.setdefault("Authorization", secret)
            conn.request("POST", PATH, body=data, headers=hdrs)
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read() or b"{}")
        finally:
            conn.close()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def logs(self) -> str:
        return self.out.read_text() + self.err.read_text()


def stored(store: Path) -> list[tuple[str, str | None, bytes]]:
    """(event_id, event_name, body) of every stored event, read-only, in order of receipt."""
    if not store.exists():
        return []
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT event_id, event_name, body FROM events ORDER BY seq").fetchall()
    finally:
        conn.close()


def event(event_id: str, name: str = "pointsIssued", **data: Any) -> dict:
    return {"eventName": name, "eventId": event_id, "orgId": 1800, "refId": f"1800_{event_id}",
            "createdAt": 1763596800000, "data": {"customerIdentifiers": {"customerId": 564955302}, **data}}
