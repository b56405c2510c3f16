"""A third source is one folder plus one registry line: `tests/third_source/ledger_source` (a cursor-paged "ledger"
API, its own tiny server here) registers itself through the `loyalty_warehouse.sources` entry point of its
`.dist-info`, and the real `loyalty-etl run` (a subprocess) loads it end to end beside CareCloud and Capillary from
the sandbox, with no edit anywhere else. The warehouse is compared row for row with the ledger's own truth."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.chaos.compare import compare
from tests.helpers.cli import cli_env, query, run_cli

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 11, 20, tzinfo=UTC)
PLUGIN = Path(__file__).parent / "third_source"
TOKEN = "ledger-token-0123456789"
PAGE = 2
CUSTOMERS = [f"L-{i:04d}" for i in range(12)]


def _entries(customer: str) -> list[dict[str, Any]]:
    """The ledger's data: i entries for customer i, one of them after NOW (not due yet), one long before."""
    i = int(customer[2:])
    out = []
    for k in range(i):
        booked = NOW - dt.timedelta(days=3 * k + 1, hours=i) if k else NOW + dt.timedelta(hours=i + 1)
        out.append({"entry_id": f"{customer}/{k}", "points": float(10 * i - k), "booked_at": booked.isoformat()})
    if i % 4 == 0:
        out.append({"entry_id": f"{customer}/old", "points": 1.0, "booked_at": "2019-05-01T00:00:00+00:00"})
    return out


def truth(since: dt.datetime, until: dt.datetime) -> list[tuple[str, str, float, dt.datetime]]:
    return sorted((e["entry_id"], c, e["points"], dt.datetime.fromisoformat(e["booked_at"]))
                  for c in CUSTOMERS for e in _entries(c)
                  if since <= dt.datetime.fromisoformat(e["booked_at"]) < until)


class LedgerHandler(BaseHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urlsplit(self.path)
        LedgerHandler.requests.append(url.path)
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._send(401, {"error": "bad token"})
        if url.path == "/ping":
            return self._send(200, {"ok": True})
        if url.path != "/ledger":
            return self._send(404, {"error": "no such path"})
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        if q.get("customer") not in CUSTOMERS:
            return self._send(404, {"error": "customer not found"})
        since, until = dt.datetime.fromisoformat(q["from"]), dt.datetime.fromisoformat(q["to"])
        due = [e for e in _entries(q["customer"]) if since <= dt.datetime.fromisoformat(e["booked_at"]) < until]
        offset = int(base64.b64decode(q["cursor"]).decode()) if "cursor" in q else 0
        nxt = offset + PAGE
        self._send(200, {"entries": due[offset:nxt],
                         "next_cursor": base64.b64encode(str(nxt).encode()).decode() if nxt < len(due) else None})


@pytest.fixture
def ledger_api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), LedgerHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_third_source_loads_end_to_end_through_loyalty_etl_run(sandbox_factory, sandbox_env, ledger_api: str,
                                                                tmp_path: Path) -> None:
    sb = sandbox_factory(customers=20)
    wh = tmp_path / "wh.duckdb"
    customers = tmp_path / "ledger.csv"
    customers.write_text("customer_id\n" + "".join(f"{c}\n" for c in [*CUSTOMERS, "L-unknown"]))
    env = cli_env(sandbox_env(sb, wh), SOURCES__LEDGER__BASE_URL=ledger_api, SOURCES__LEDGER__CUSTOMERS=customers,
                  SOURCES__LEDGER__CREDENTIALS__TOKEN=TOKEN, SOURCES__LEDGER__RATE_LIMIT=2000,
                  PYTHONPATH=os.pathsep.join(p for p in (str(PLUGIN), os.environ.get("PYTHONPATH")) if p))

    help_text = run_cli(env, "run", "--help").stdout
    assert "ledger" in help_text  # registered: a --source choice

    until = NOW.strftime("%Y-%m-%dT%H:%M:%SZ")
    proc = run_cli(env, "run", "--no-models", "--until", until)
    # exit 2: the one unknown ledger customer failed (recorded), everything else loaded
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}"

    since = dt.datetime(2024, 1, 1, tzinfo=UTC)  # the default initial_start
    loaded = query(wh, "select entry_id, customer_id, points, booked_at from loyalty_raw.ledger_entries order by 1")
    assert [(e, c, p, b.astimezone(UTC)) for e, c, p, b in loaded] == truth(since, NOW)
    assert len(loaded) > 40
    issues = query(wh, "select customer_id, code from loyalty_raw.sync_issues where source = 'ledger'")
    assert issues == [("L-unknown", "not_found")]
    state = query(wh, "select count(*), min(last_success_end) from loyalty_raw._customer_sync_state "
                      "where source = 'ledger' and last_success_end is not null")
    assert state[0][0] == len(CUSTOMERS) and state[0][1].astimezone(UTC) == NOW
    assert LedgerHandler.requests.count("/ledger") > len(CUSTOMERS)  # pages followed by cursor
    # the built-in sources loaded in the same run as before
    cmp = compare(wh, sb.truth(), until=NOW, ledger=False)
    assert cmp.ok, str(cmp)

    # the next run with nothing new adds nothing and fails only the unknown customer again
    proc = run_cli(env, "run", "--no-models", "--source", "ledger", "--until", until)
    assert proc.returncode == 2, proc.stderr[-4000:]
    assert query(wh, "select count(*) from loyalty_raw.ledger_entries")[0][0] == len(loaded)
