"""A small asyncio HTTP/1.1 server for the sandbox.

Hand-written rather than `http.server` or an ASGI stack because the sandbox must (a) never be the bottleneck of
the benchmark: keep-alive, TCP_NODELAY and status line + headers + body in ONE send, without a framework's
per-request overhead; (b) misbehave on purpose: drop a connection, send half a body, delay a response without
blocking a thread. Only what the two vendor APIs need is implemented (no chunked request bodies, no TLS).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from email.utils import formatdate
from http import HTTPStatus

from pipelines.sandbox import faults as F
from pipelines.sandbox.api import Request, Response, SandboxApp, parse_query

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024
_REASONS = {s.value: s.phrase for s in HTTPStatus}


class ServerOptions:
    """Socket behaviour switches, kept for the Nagle/delayed-ACK measurement in speed.py."""

    def __init__(self, nodelay: bool = True, single_send: bool = True) -> None:
        self.nodelay = nodelay
        self.single_send = single_send


class _Connection(asyncio.Protocol):
    def __init__(self, app: SandboxApp, options: ServerOptions, loop: asyncio.AbstractEventLoop) -> None:
        self.app = app
        self.options = options
        self.loop = loop
        self.buf = bytearray()
        self.busy = False           # a delayed response is pending: keep pipelined requests in order
        self.closed = False
        self.transport: asyncio.Transport | None = None
        self._date = ("", 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # asyncio already turns Nagle off on TCP transports; set it explicitly either way so the
            # measurement mode (nodelay=False) really gets Nagle back
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1 if self.options.nodelay else 0)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > MAX_HEADER_BYTES + MAX_BODY_BYTES:
            self._abort()
            return
        self._pump()

    def _pump(self) -> None:
        while not self.busy and not self.closed:
            parsed = self._parse()
            if parsed is None:
                return
            req, keep_alive = parsed
            try:
                resp = self.app.handle(req)
            except Exception:  # a bug in a handler must not kill the server; answer 500 like a real service
                log.exception("sandbox handler failed for %s %s", req.method, req.path)
                resp = Response(500, b'{"error":{"type":"about:blank","exception":"internal_server_error",'
                                     b'"title":"Internal server error","detail":"sandbox handler failed"}}')
            if resp.delay > 0:
                self.busy = True
                self.loop.call_later(resp.delay, self._deliver_later, resp, keep_alive)
                return
            self._deliver(resp, keep_alive)

    def _deliver_later(self, resp: Response, keep_alive: bool) -> None:
        self.busy = False
        if self.closed:
            return
        self._deliver(resp, keep_alive)
        self._pump()

    def _parse(self) -> tuple[Request, bool] | None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > MAX_HEADER_BYTES:
                self._abort()
            return None
        head = bytes(self.buf[:end]).decode("latin-1")
        lines = head.split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError:
            self._abort()
            return None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "transfer-encoding" in headers:  # chunked request bodies: not needed by either API, refuse clearly
            self.buf.clear()
            self._deliver(Response(411, b'{"error":"send a Content-Length, chunked bodies are not supported"}'),
                          keep_alive=False)
            return None
        try:
            length = int(headers.get("content-length", "0") or 0)
        except ValueError:
            self._abort()
            return None
        if length > MAX_BODY_BYTES:
            self._abort()
            return None
        total = end + 4 + length
        if len(self.buf) < total:
            return None
        body = bytes(self.buf[end + 4: total])
        del self.buf[:total]
        path, _, raw_query = target.partition("?")
        conn = headers.get("connection", "").lower()
        keep_alive = conn != "close" if version == "HTTP/1.1" else conn == "keep-alive"
        return Request(method, path, parse_query(raw_query), headers, body, raw_query), keep_alive

    def _http_date(self) -> str:
        now = int(self.loop.time())
        if self._date[1] != now:
            self._date = (formatdate(usegmt=True), now)
        return self._date[0]

    def _deliver(self, resp: Response, keep_alive: bool) -> None:
        if self.transport is None or self.closed:
            return
        if resp.action == F.DROP:
            self._abort()
            return
        status = resp.status
        head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
                "Content-Type: application/json; charset=utf-8",
                f"Content-Length: {len(resp.body)}",
                f"Date: {self._http_date()}",
                "Server: loyalty-sandbox"]
        for name, value in resp.headers:
            head.append(f"{name}: {value}")
        if not keep_alive:
            head.append("Connection: close")
        header_bytes = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        if resp.action == F.TRUNCATE:
            # announce the full length, send half, close: the client sees an incomplete body
            self.transport.write(header_bytes + resp.body[: len(resp.body) // 2])
            self.transport.close()
            self.closed = True
            return
        if self.options.single_send:
            self.transport.write(header_bytes + resp.body)
        else:
            self.transport.write(header_bytes)
            self.transport.write(resp.body)
        if not keep_alive:
            self.transport.close()
            self.closed = True

    def _abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


async def create_server(app: SandboxApp, host: str, port: int,
                        options: ServerOptions | None = None) -> asyncio.base_events.Server:
    loop = asyncio.get_running_loop()
    opts = options or ServerOptions()
    return await loop.create_server(lambda: _Connection(app, opts, loop), host, port,
                                    reuse_address=True, backlog=1024)
