"""The HTTP receiver for Capillary's event notifications: `POST /capillary/events`.

The standard library's ThreadingHTTPServer, not the sandbox's asyncio server: every request ends in a blocking,
fsynced SQLite commit, which a thread per connection waits for naturally while an event loop would stall on it, and
the sandbox server exists to misbehave on purpose. Meant to run behind the brand's API gateway or reverse proxy,
which terminates TLS (docs/operations.md).

Per request, in this order, and nothing is stored unless every check passes:
  404/405 wrong path or method; 401 the configured header is missing or not equal to the secret (constant-time
  compare, checked before the body is read); 413 the body is over `max_body_bytes` (from Content-Length, and while
  reading a chunked body); 400 not JSON, not an object, or no `eventId`; 503 the store could not commit (the
  vendor retries); 200 stored, or already stored (a duplicate `eventId` is acknowledged and not stored again).
"""

from __future__ import annotations

import hmac
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from pipelines.events.store import EventStore
from pipelines.logs import get_logger

log = get_logger("events")

# A client that stops sending mid-request holds a thread; this bounds how long.
REQUEST_TIMEOUT_SECONDS = 30.0


class _Rejected(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class EventReceiver(ThreadingHTTPServer):
    """Serve until `stop()`: requests in flight finish (their events are stored and answered), idle keep-alive
    connections are closed, then `serve_forever` returns and `server_close` waits for the handler threads."""

    daemon_threads = False        # server_close joins them: a request in flight is finished, not cut off
    block_on_close = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], store: EventStore, *, path: str, header: str, secret: str,
                 max_body_bytes: int, parse: Callable[[Any], tuple[str, str | None]]) -> None:
        self.store = store
        self.events_path = path
        self.auth_header = header
        self._secret = secret.encode("utf-8")
        self.max_body_bytes = max_body_bytes
        self.parse = parse
        self.stopping = False
        self._conns: dict[socket.socket, bool] = {}  # connection -> busy with a request
        self._conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    # ------------------------------------------------------------------ connection bookkeeping for a clean stop
    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns[request] = False
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._conns_lock:
                self._conns.pop(request, None)

    def mark_busy(self, conn: socket.socket, busy: bool) -> bool:
        """Mark a connection busy with a request (or idle again); False once stopping has begun."""
        with self._conns_lock:
            if conn in self._conns:
                self._conns[conn] = busy
            return not self.stopping

    def stop(self) -> None:
        """Stop accepting, let requests in flight finish, close idle keep-alive connections. Safe from a signal
        handler: the blocking part runs on its own thread."""
        with self._conns_lock:
            if self.stopping:
                return
            self.stopping = True
            idle = [c for c, busy in self._conns.items() if not busy]
        for conn in idle:
            try:
                conn.shutdown(socket.SHUT_RD)  # its handler's read returns EOF and the thread ends
            except OSError:
                pass
        threading.Thread(target=self.shutdown, name="receiver-stop", daemon=True).start()

    def authorized(self, value: str | None) -> bool:
        if value is None:
            hmac.compare_digest(self._secret, b"")  # same work either way
            return False
        return hmac.compare_digest(value.encode("utf-8", "surrogateescape"), self._secret)


class _Handler(BaseHTTPRequestHandler):
    server: EventReceiver
    protocol_version = "HTTP/1.1"  # keep-alive: Capillary reuses up to maxAllowedConnections connections
    # Status line, headers and body leave in one send (a buffered wfile, flushed by handle_one_request) with
    # TCP_NODELAY: with http.server's defaults (unbuffered, Nagle on) the body waits for the client's delayed ACK,
    # about 40 ms per request (docs/performance.md, "Event receiver").
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True
    timeout = REQUEST_TIMEOUT_SECONDS

    def version_string(self) -> str:
        return "loyalty-events"

    def parse_request(self) -> bool:
        if not self.server.mark_busy(self.connection, True):
            self.close_connection = True  # the request line arrived during a stop: still served, then closed
        return super().parse_request()

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        finally:
            if not self.server.mark_busy(self.connection, False):
                self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (BaseHTTPRequestHandler's signature)
        pass  # one line per event is written by _finish; http.server's own access line would be a second

    # ------------------------------------------------------------------ methods
    def do_POST(self) -> None:
        started = time.perf_counter()
        event_id = name = None
        size = 0
        try:
            if self.path.split("?", 1)[0] != self.server.events_path:
                raise _Rejected(404, "unknown path")
            if not self.server.authorized(self.headers.get(self.server.auth_header)):
                raise _Rejected(401, "missing or wrong " + self.server.auth_header)
            body = self._read_body()
            size = len(body)
            try:
                event = json.loads(body)
            except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested beyond the parser
                raise _Rejected(400, "the body is not valid JSON") from None
            try:
                event_id, name = self.server.parse(event)
            except ValueError as exc:
                raise _Rejected(400, str(exc)) from None
            try:
                new = self.server.store.add(event_id, name, body)
            except Exception as exc:  # disk full, locked past the busy timeout, I/O error: not stored, vendor retries
                log.error("event not stored: %s", exc, extra={"fields": {"event_id": event_id}})
                raise _Rejected(503, "the event store is unavailable") from None
        except _Rejected as rej:
            self._answer(rej.status, {"error": rej.reason})
            self._finish(rej.status, rej.reason, event_id, name, size, started)
            return
        status = "stored" if new else "duplicate"
        self._answer(200, {"status": status, "eventId": event_id})
        self._finish(200, status, event_id, name, size, started)

    def do_GET(self) -> None:
        self._not_allowed()

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET

    def _not_allowed(self) -> None:
        started = time.perf_counter()
        if self.path.split("?", 1)[0] != self.server.events_path:
            self._answer(404, {"error": "unknown path"})
            self._finish(404, "unknown path", None, None, 0, started)
        else:
            self._answer(405, {"error": "use POST"}, ("Allow", "POST"))
            self._finish(405, "method not allowed", None, None, 0, started)

    # ------------------------------------------------------------------ body, answers, the log line
    def _read_body(self) -> bytes:
        limit = self.server.max_body_bytes
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked(limit)
        raw = self.headers.get("Content-Length")
        if raw is None:
            raise _Rejected(411, "send a Content-Length or a chunked body")
        try:
            length = int(raw)
        except ValueError:
            raise _Rejected(400, "invalid Content-Length") from None
        if length < 0:
            raise _Rejected(400, "invalid Content-Length")
        if length > limit:
            raise _Rejected(413, f"body of {length} bytes is over the limit of {limit}")
        body = self.rfile.read(length)
        if len(body) < length:
            raise _Rejected(400, "the body ended early")
        return body

    def _read_chunked(self, limit: int) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _Rejected(400, "invalid chunked body") from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            total += size
            if total > limit:
                raise _Rejected(413, f"chunked body over the limit of {limit} bytes")
            chunk = self.rfile.read(size)
            if len(chunk) < size:
                raise _Rejected(400, "the body ended early")
            parts.append(chunk)
            self.rfile.readline(8)  # the CRLF after a chunk

    def _answer(self, status: int, payload: dict, *headers: tuple[str, str]) -> None:
        body = json.dumps(payload).encode()
        if status >= 400 or self.server.stopping:
            # the body may be unread (401, 413): it must not be taken for the next request on this connection
            self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _finish(self, status: int, outcome: str, event_id: str | None, name: str | None, size: int,
                started: float) -> None:
        if event_id is not None and len(event_id) > 200:  # the sender chooses it: keep the line a line
            event_id = event_id[:200] + "..."
        fields = {"status": status, "outcome": outcome, "event_id": event_id, "event": name, "bytes": size,
                  "ms": round((time.perf_counter() - started) * 1000, 1), "client": self.client_address[0]}
        (log.info if status < 400 else log.warning)("capillary event", extra={"fields": fields})
