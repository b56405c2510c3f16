"""`pipelines/paging.py`: a cursor-paged API is read through `CursorPaginator` and `paginate`, over real HTTP on
loopback, by the blocking driver and by the multiplexer alike: every record once, in order, with cursors that need
encoding, and a transient failure mid-paging retried without skipping a page."""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

from pipelines.http import HttpClient, HttpError, RateLimiter
from pipelines.multiplex import run_multiplexed
from pipelines.paging import CursorPaginator, paginate

PAGE = 7
ITEMS = {f"c{n}": [{"customer": f"c{n}", "seq": i} for i in range(n * 5)] for n in range(6)}  # 0..25 items each


class _CursorApi(BaseHTTPRequestHandler):
    """GET /items?customer=..&cursor=..: `{"data": {"items": [...], "next": <cursor or null>}}`. The cursor is an
    opaque string with characters that must be encoded; the first request for each customer's second page answers
    503 once."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the vendors' APIs
    requests: Counter = Counter()
    failed_once: set = set()
    lock = threading.Lock()

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
        customer = query["customer"]
        cursor = query.get("cursor")
        if cursor is not None and not cursor.startswith(f"{customer} &/"):
            return self._send(400, {"error": f"bad cursor {cursor!r}"})
        start = int(cursor.split("/")[1]) if cursor else 0
        with self.lock:
            self.requests[customer] += 1
            fail = start == PAGE and customer not in self.failed_once
            if fail:
                self.failed_once.add(customer)
        if fail:
            self._send(503, {"error": "try again"})
        else:
            items = ITEMS[customer][start:start + PAGE]
            more = start + PAGE < len(ITEMS[customer])
            self._send(200, {"data": {"items": items, "next": f"{customer} &/{start + PAGE}" if more else None}})

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def cursor_api() -> Iterator[HttpClient]:
    _CursorApi.requests.clear()
    _CursorApi.failed_once.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CursorApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client = HttpClient(f"http://127.0.0.1:{server.server_port}", limiter=RateLimiter(0), backoff_base=0.01,
                        name="cursor-api")
    try:
        yield client
    finally:
        client.close()
        server.shutdown()
        server.server_close()


def _page_steps(client: HttpClient):
    def page(query: str):
        _, body = yield from client.request_steps("GET", "/items", query=query)
        return body["data"]["items"], body["data"]
    return page


def _expected_requests(customer: str) -> int:
    pages = max(1, -(-len(ITEMS[customer]) // PAGE))
    return pages + (1 if len(ITEMS[customer]) > PAGE else 0)  # + the 503 on the second page


def test_cursor_paging_blocking_reads_every_record_once(cursor_api: HttpClient) -> None:
    for customer, items in ITEMS.items():
        got = cursor_api.drive(paginate(_page_steps(cursor_api), f"customer={customer}", CursorPaginator("next")))
        assert got == items, customer
        assert _CursorApi.requests[customer] == _expected_requests(customer)


def test_cursor_paging_multiplexed_equals_the_api(cursor_api: HttpClient) -> None:
    page = _page_steps(cursor_api)
    got = dict(run_multiplexed(
        ITEMS, lambda c: paginate(page, f"customer={c}", CursorPaginator("next")), concurrency=3))
    assert got == ITEMS
    assert all(_CursorApi.requests[c] == _expected_requests(c) for c in ITEMS)


def test_cursor_paging_failure_is_the_items_failure(cursor_api: HttpClient) -> None:
    """A page the API refuses fails that result set (no partial list), as a page of the built-in sources does."""
    bad = CursorPaginator("next", cursor_param="cursor")
    bad.update_request = lambda: "cursor=forged"  # type: ignore[method-assign]
    with pytest.raises(HttpError) as refused:
        cursor_api.drive(paginate(_page_steps(cursor_api), "customer=c3", bad))
    assert refused.value.status == 400
