"""The one HTTP layer both sources use: a shared token-bucket rate limiter per credential, keep-alive connection
pools, retries with exponential backoff + jitter on 429/5xx/connection errors/truncated bodies, `Retry-After`
honoured, bounded attempts, and single-flight re-login on 401.

Why hand-written rather than urllib3's `Retry` or dlt's `requests` helper (both retry 429/5xx with backoff and
`Retry-After`): every attempt must first take a token from a limiter shared by all threads using one credential,
every retry and 429 is counted into the run report and live progress, a 401 must trigger ONE re-login shared by
all threads in flight (not one per thread), and a truncated body or undecodable JSON with a 200 status must be
retried like a 503. None of those hooks exist there.

Connections: libcurl (pycurl) keep-alive handles: one per thread for blocking calls (`HttpClient.request_json`),
and, on the extraction hot path, one per request in flight under libcurl's multi interface, all on one thread
(`pipelines/multiplex.py` runs the same request steps). A short body is libcurl's error 18, a dropped connection
52/56, all retried. libcurl costs the least CPU per request of the transports measured (urllib3's pool, a bare
stdlib `http.client` connection, pycurl; docs/decisions/design-figures.md), and at one request per customer the
request is the largest cost per record after the parse. urllib3 is still used for parsing `Retry-After`.

Processes: the limiter and the login token live in shared memory (`multiprocessing` fork context), so worker
processes forked by `pipelines/workers.py` share one request budget and one login with the run.
"""

from __future__ import annotations

import io
import multiprocessing
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generator

import certifi
import orjson
import pycurl
from urllib3.util.retry import Retry

from pipelines.logs import get_logger, redact, register_secret

log = get_logger("http")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504, 521})
ACCEPT_STATUSES = frozenset({200, 201})
MAX_RETRY_AFTER_S = 120.0


class HttpError(Exception):
    """A request that did not succeed: a non-retryable status, or retries exhausted. Never carries secrets
    (the message is redacted; headers are not kept)."""

    def __init__(self, message: str, status: int | None = None, body: Any = None, exhausted: bool = False) -> None:
        super().__init__(redact(message))
        self.status = status
        self.body = body
        self.exhausted = exhausted


def _fork_context() -> Any:
    """The multiprocessing context whose locks and shared memory the worker processes inherit (see
    `pipelines/workers.py`); where fork does not exist, the default one (state then stays per process)."""
    try:
        return multiprocessing.get_context("fork")
    except ValueError:  # pragma: no cover - platforms without fork
        return multiprocessing.get_context()


class RateLimiter:
    """Token bucket shared by every thread AND every worker process that uses one credential (hand-written: a few
    lines with a lock; the limiter must be consulted before every attempt, including retries, by a thread pool in
    each of several processes). Its state lives in shared memory created before the workers fork."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = float(rate)
        self.capacity = max(1.0, burst if burst is not None else min(self.rate, 1.0))
        ctx = _fork_context()
        self._state = ctx.RawArray("d", [self.capacity, time.monotonic()])  # tokens, last refill (CLOCK_MONOTONIC)
        self._lock = ctx.Lock()

    def try_acquire(self) -> float:
        """Take a token if there is one: 0.0; else the seconds until there will be (nothing taken)."""
        if self.rate <= 0:
            return 0.0
        state = self._state
        with self._lock:
            now = time.monotonic()
            tokens = min(self.capacity, state[0] + (now - state[1]) * self.rate)
            state[1] = now
            if tokens >= 1.0:
                state[0] = tokens - 1.0
                return 0.0
            state[0] = tokens
            return (1.0 - tokens) / self.rate

    def acquire(self) -> None:
        while (wait := self.try_acquire()) > 0:
            time.sleep(wait)


class SharedToken:
    """One login token for every thread and worker process using one credential: the token, its generation
    (bumped at every login) and its expiry (CLOCK_MONOTONIC, system-wide) in shared memory under one lock, so a
    401 or an expiry seen by many threads in several processes leads to ONE login."""

    SIZE = 8192

    def __init__(self) -> None:
        ctx = _fork_context()
        self.lock = ctx.Lock()
        self._generation = ctx.RawValue("q", 0)
        self._expires = ctx.RawValue("d", 0.0)   # 0 = no known expiry
        self._length = ctx.RawValue("i", 0)
        self._buf = ctx.RawArray("c", self.SIZE)

    @property
    def generation(self) -> int:
        return self._generation.value

    def read(self) -> tuple[int, str | None, float | None]:
        """(generation, token, expiry); call with `lock` held."""
        gen = self._generation.value
        if gen == 0:
            return 0, None, None
        return gen, self._buf.raw[:self._length.value].decode(), (self._expires.value or None)

    def write(self, token: str, expires: float | None) -> int:
        """Store a new token; call with `lock` held. Returns the new generation."""
        data = token.encode()
        if len(data) > self.SIZE:
            raise ValueError(f"token longer than {self.SIZE} bytes")
        self._buf.raw = data + b"\0" * (self.SIZE - len(data))
        self._length.value = len(data)
        self._expires.value = expires or 0.0
        self._generation.value += 1
        return self._generation.value


_LIMITERS: dict[tuple[str, str], RateLimiter] = {}
_LIMITERS_LOCK = threading.Lock()


def shared_limiter(credential_key: tuple[str, str], rate: float) -> RateLimiter:
    """One limiter per (host, credential) for the whole process and the worker processes it forks afterwards, so a
    run, a backfill chunk and any other client using the same API key share one request budget."""
    with _LIMITERS_LOCK:
        limiter = _LIMITERS.get(credential_key)
        if limiter is None or limiter.rate != rate:
            limiter = _LIMITERS[credential_key] = RateLimiter(rate)
        return limiter


Counts = tuple[int, int, int, int]   # requests, retries, 429s, logins


@dataclass
class HttpStats:
    """Counters for one source in one run; `on_update` forwards deltas to live progress.

    With several credentials (`pipelines/credentials.py`) each credential's client counts into a child
    (`credential` = its name, `parent` = the source's stats): the child's deltas also go to the parent, which keeps
    them per credential in `by_credential` (name -> [requests, retries, 429s, logins]) as well as in its totals."""

    requests: int = 0
    retries: int = 0
    http_429: int = 0
    logins: int = 0
    on_update: Callable[[int, int, int], None] | None = field(default=None, repr=False)
    credential: str | None = None
    parent: "HttpStats | None" = field(default=None, repr=False)
    by_credential: dict[str, list[int]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, requests: int = 0, retries: int = 0, http_429: int = 0, logins: int = 0,
            credential: str | None = None) -> None:
        credential = credential or self.credential
        with self._lock:
            self.requests += requests
            self.retries += retries
            self.http_429 += http_429
            self.logins += logins
            if credential is not None:
                counts = self.by_credential.get(credential)
                if counts is None:
                    counts = self.by_credential[credential] = [0, 0, 0, 0]
                counts[0] += requests
                counts[1] += retries
                counts[2] += http_429
                counts[3] += logins
        if self.parent is not None:
            self.parent.add(requests, retries, http_429, logins, credential)
        if self.on_update and (requests or retries or http_429):
            self.on_update(requests, retries, http_429)

    def take(self) -> tuple[Counts, dict[str, Counts]]:
        """The counts so far, in total and per credential, reset to zero (a worker process hands its deltas to the
        run this way)."""
        with self._lock:
            out = (self.requests, self.retries, self.http_429, self.logins)
            per = {name: tuple(c) for name, c in self.by_credential.items()}
            self.requests = self.retries = self.http_429 = self.logins = 0
            self.by_credential = {}
        return out, per  # type: ignore[return-value]

    def add_counts(self, totals: Counts, per_credential: dict[str, Counts]) -> None:
        """Deltas `take()` gave in another process, added here (totals once, and each credential's share)."""
        requests, retries, http_429, logins = totals
        with self._lock:
            self.logins += logins
            self.requests += requests
            self.retries += retries
            self.http_429 += http_429
            for name, counts in per_credential.items():
                mine = self.by_credential.setdefault(name, [0, 0, 0, 0])
                for i, n in enumerate(counts):
                    mine[i] += n
        if self.on_update and (requests or retries or http_429):
            self.on_update(requests, retries, http_429)


class Auth:
    """Adds credentials to a request. `generation` identifies the credential version used, so that a 401 seen by
    many threads triggers one refresh (`refresh(generation)` is a no-op once someone else refreshed)."""

    def headers(self) -> tuple[int, dict[str, str]]:
        return 0, {}

    def refresh(self, generation: int) -> bool:
        """Return True when a retry with fresh credentials makes sense."""
        return False


class TokenAuth(Auth):
    """A login-obtained token shared by all threads (and, through `slot`, all worker processes), refreshed
    single-flight: on a 401 the first thread logs in again while the others wait on the lock and then reuse the new
    token. `login()` returns (token, ttl seconds or None); the token is also refreshed shortly before a known
    expiry."""

    def __init__(self, login: Callable[[], tuple[str, float | None]], header: str, prefix: str = "",
                 stats: HttpStats | None = None, slot: SharedToken | None = None) -> None:
        self._login = login
        self._header = header
        self._prefix = prefix
        self._stats = stats
        self._slot = slot or SharedToken()
        # this process's copy of the slot, re-read only when the shared generation moves
        self._generation = 0
        self._token: str | None = None
        self._expires: float | None = None

    def _adopt(self) -> None:
        """Copy the slot's token into this process (lock held)."""
        gen, token, expires = self._slot.read()
        if gen != self._generation and token is not None:
            register_secret(token)  # a token another process obtained must be redacted here too
        self._generation, self._token, self._expires = gen, token, expires

    def _do_login(self) -> None:
        token, ttl = self._login()
        self._slot.write(token, time.monotonic() + ttl * 0.9 if ttl else None)
        self._adopt()
        if self._stats is not None:
            self._stats.add(logins=1)
        fields: dict[str, Any] = {"header": self._header, "generation": self._generation}
        if self._stats is not None and self._stats.credential is not None:
            fields["credential"] = self._stats.credential
        log.info("logged in", extra={"fields": fields})

    def headers(self) -> tuple[int, dict[str, str]]:
        if self._slot.generation != self._generation:
            with self._slot.lock:
                self._adopt()
        token, gen, expires = self._token, self._generation, self._expires
        if token is None or (expires is not None and time.monotonic() >= expires):
            with self._slot.lock:
                self._adopt()
                if self._generation == gen:
                    self._do_login()
                token, gen = self._token, self._generation
        return gen, {self._header: f"{self._prefix}{token}"}

    def refresh(self, generation: int) -> bool:
        with self._slot.lock:
            self._adopt()
            if self._generation == generation:
                self._do_login()
        return True


class StaticAuth(Auth):
    def __init__(self, headers: dict[str, str]) -> None:
        self._headers = headers

    def headers(self) -> tuple[int, dict[str, str]]:
        return 0, self._headers



class _Response:
    """What one attempt returned: status, body bytes and the `Retry-After` / `Connection` header values."""

    __slots__ = ("status", "data", "retry_after", "will_close")

    def __init__(self, status: int, data: bytes, retry_after: str | None, will_close: bool) -> None:
        self.status, self.data, self.retry_after, self.will_close = status, data, retry_after, will_close


class _ConnectionFailed(Exception):
    """Refused, reset, dropped, timed out, or a body shorter than its Content-Length: transient."""


# ---------------------------------------------------------------------------------------------- request steps
# A request (with its retries, backoff, 401 re-login and limiter) is written ONCE, as a generator of steps
# (`HttpClient.request_steps`), and run by one of two drivers: `HttpClient.drive` blocks on each step in the calling
# thread (logins, tests, one-off calls), `pipelines/multiplex.py` keeps many customers' requests in flight on ONE
# thread with libcurl's multi interface (the extraction hot path: no thread per request in flight, so no GIL
# hand-overs; docs/decisions/session-5-multiplex.md). A step is one of:
#   Send     the driver performs it and sends back a `_Response`, or throws `_ConnectionFailed` into the generator;
#   Pause    the driver resumes the generator after that many seconds (backoff before a retry);
#   RateLimiter  the driver resumes it once a token was taken (`try_acquire`).
# The generator's return value is the request's result; an exception it raises is the request's failure.
class Send:
    __slots__ = ("method", "url", "body", "headers", "timeout")

    def __init__(self, method: str, url: str, body: bytes | None, headers: list[str], timeout: float) -> None:
        self.method, self.url, self.body, self.headers, self.timeout = method, url, body, headers, timeout


class Pause(float):
    """Seconds to wait before the generator goes on."""


Steps = Generator[Any, Any, Any]


def new_handle(timeout: float) -> Any:
    """A libcurl easy handle set up as every request of this project wants it."""
    curl = pycurl.Curl()
    curl.setopt(pycurl.NOSIGNAL, 1)  # threads: no SIGALRM-based timeouts
    curl.setopt(pycurl.CAINFO, certifi.where())
    curl.setopt(pycurl.ACCEPT_ENCODING, "")  # gzip/deflate when the server offers it (not the sandbox)
    curl.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
    curl.timeout = None
    _set_timeout(curl, timeout)
    return curl


def _set_timeout(curl: Any, timeout: float) -> None:
    if curl.timeout != timeout:
        curl.setopt(pycurl.CONNECTTIMEOUT, max(1, int(timeout)))
        # a read timeout like the stdlib's socket timeout: give up when nothing arrives for `timeout` seconds
        curl.setopt(pycurl.LOW_SPEED_LIMIT, 1)
        curl.setopt(pycurl.LOW_SPEED_TIME, max(1, int(timeout)))
        curl.timeout = timeout


def prepare(curl: Any, op: Send) -> None:
    """Point `curl` at the request `op`; `curl.buf` collects the body, `curl.found` the two headers that matter."""
    _set_timeout(curl, op.timeout)
    buf = curl.buf = io.BytesIO()
    found: dict[str, str] = {}
    curl.found = found

    def header_line(line: bytes) -> None:
        # only two headers matter; the status line and the rest are skipped without decoding
        if line[:1] in b"RrCc":
            name, _, value = line.partition(b":")
            key = name.strip().lower()
            if key in (b"retry-after", b"connection"):
                found[key.decode()] = value.strip().decode("latin-1")

    curl.setopt(pycurl.URL, op.url)
    curl.setopt(pycurl.HTTPHEADER, op.headers)
    curl.setopt(pycurl.WRITEDATA, buf)
    curl.setopt(pycurl.HEADERFUNCTION, header_line)
    if op.method == "GET":
        curl.setopt(pycurl.HTTPGET, 1)
    elif op.method == "POST":
        curl.setopt(pycurl.POSTFIELDS, op.body or b"")
    else:
        raise ValueError(f"unsupported method {op.method}")  # the APIs need GET and POST only


def response(curl: Any) -> _Response:
    """The answer of a transfer `curl` finished (after `prepare`)."""
    found = curl.found
    return _Response(curl.getinfo(pycurl.RESPONSE_CODE), curl.buf.getvalue(), found.get("retry-after"),
                     found.get("connection", "").lower() == "close")


def connection_failed(code: int | None) -> _ConnectionFailed:
    return _ConnectionFailed(f"curl error {code}: {_CURL_NAMES.get(code, 'transfer failed')}")


class HttpClient:
    """JSON over keep-alive HTTP for one API base URL. Thread-safe: each thread keeps its own connection.

    Transport: libcurl through pycurl: less CPU per request than the stdlib's `http.client`, whose header parsing
    goes through the `email` package (docs/decisions/design-figures.md). `request_json` blocks on one keep-alive
    easy handle per thread; the extraction hot path runs the same `request_steps` for many customers at once through
    `pipelines/multiplex.py`.
    """

    def __init__(self, base_url: str, *, limiter: RateLimiter, auth: Auth | None = None, max_attempts: int = 6,
                 backoff_base: float = 1.0, backoff_max: float = 60.0, timeout: float = 60.0,
                 stats: HttpStats | None = None, name: str = "api") -> None:
        self.base_url = base_url.rstrip("/")
        self.limiter = limiter
        self.auth = auth or Auth()
        self.max_attempts = max(1, int(max_attempts))
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.stats = stats or HttpStats()
        self.name = name
        self.timeout = timeout
        self._static_headers = ["Accept: application/json", "User-Agent: loyalty-warehouse/0.1"]
        self._local = threading.local()
        self._all: dict[int, Any] = {}   # thread ident -> its handle, so close() and dead threads' cleanup reach them
        self._all_lock = threading.Lock()

    def _handle(self) -> Any:
        curl = getattr(self._local, "curl", None)
        if curl is None:
            curl = self._local.curl = new_handle(self.timeout)
            with self._all_lock:
                # threads come and go: close the handles of threads that ended, else each keeps its connection and
                # buffers until the run ends
                alive = {t.ident for t in threading.enumerate()}
                for ident in [i for i in self._all if i not in alive]:
                    self._all.pop(ident).close()
                self._all[threading.get_ident()] = curl
        return curl

    def _drop_connection(self) -> None:
        curl = getattr(self._local, "curl", None)
        if curl is not None:
            curl.close()
            self._local.curl = None

    def close(self) -> None:
        with self._all_lock:
            for curl in self._all.values():
                try:
                    curl.close()
                except pycurl.error:
                    pass
            self._all.clear()

    def _send(self, op: Send) -> _Response:
        """Perform `op` on this thread's handle, blocking."""
        curl = self._handle()
        prepare(curl, op)
        try:
            curl.perform()
        except pycurl.error as exc:
            self._drop_connection()
            raise connection_failed(exc.args[0] if exc.args else None) from None
        answer = response(curl)
        if answer.will_close:
            self._drop_connection()
        return answer

    def drive(self, steps: Steps) -> Any:
        """Run a generator of request steps to its end in this thread, blocking on each; return its result."""
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                op = steps.throw(error) if error is not None else steps.send(value)
            except StopIteration as stop:
                return stop.value
            value = error = None
            if type(op) is Send:
                try:
                    value = self._send(op)
                except _ConnectionFailed as exc:
                    error = exc
            elif type(op) is Pause:
                time.sleep(op)
            else:
                op.acquire()

    def _retry_delay(self, attempt: int, retry_after: str | None) -> Pause:
        delay = None
        if retry_after:
            try:
                delay = Retry().parse_retry_after(retry_after)
            except Exception:
                delay = None
        if delay is None:
            # vendor guidance (CareCloud best practices): 1 s, 2 s, 4 s, ... with +-20 % jitter, capped
            delay = min(self.backoff_max, self.backoff_base * (2 ** (attempt - 1)))
            delay *= random.uniform(0.8, 1.2)
        return Pause(min(max(delay, 0.0), MAX_RETRY_AFTER_S))

    def request_json(self, method: str, path: str, *, query: str | None = None, json_body: Any = None,
                     use_auth: bool = True) -> tuple[int, Any]:
        """Send one request, retrying what is transient, blocking. Returns (status, parsed JSON body) for a status
        in `ACCEPT_STATUSES`; raises `HttpError` for anything else (with `.status` and `.body` of the last answer).
        `query`: an already encoded query string (callers that send the same parameters to every customer encode
        the fixed part once); `json_body`: sent as JSON; `use_auth=False` for the login request itself."""
        return self.drive(self.request_steps(method, path, query=query, json_body=json_body, use_auth=use_auth))

    def request_steps(self, method: str, path: str, *, query: str | None = None, json_body: Any = None,
                      use_auth: bool = True) -> Steps:
        """`request_json` as a generator of steps (see `Send`), for `drive` or `pipelines/multiplex.py`."""
        url = self.base_url + path
        if query:
            url += "?" + query
        body = orjson.dumps(json_body) if json_body is not None else None
        last_error = "no attempt"
        last_status: int | None = None
        last_body: Any = None
        for attempt in range(1, self.max_attempts + 1):
            if attempt > 1:
                self.stats.add(retries=1)
            yield self.limiter
            generation, auth_headers = self.auth.headers() if use_auth else (0, {})
            headers = self._static_headers + [f"{k}: {v}" for k, v in auth_headers.items()]
            if body is not None:
                headers.append("Content-Type: application/json")
            try:
                answer: _Response = yield Send(method, url, body, headers, self.timeout)
            except _ConnectionFailed as exc:
                self.stats.add(requests=1)
                last_error, last_status = str(exc), None
                log.info("connection error, retrying", extra={"fields": {"api": self.name, "path": path,
                                                                          "attempt": attempt, "error": last_error}})
                if attempt < self.max_attempts:
                    yield self._retry_delay(attempt, None)
                continue
            status, data = answer.status, answer.data
            self.stats.add(requests=1, http_429=1 if status == 429 else 0)
            last_status = status
            try:
                parsed = orjson.loads(data) if data else None
            except orjson.JSONDecodeError:
                # a truncated or garbled body: transient whatever the status says
                last_error, last_body = f"HTTP {status} with an undecodable body ({len(data)} bytes)", None
                if attempt < self.max_attempts:
                    yield self._retry_delay(attempt, None)
                continue
            last_body = parsed
            if status in ACCEPT_STATUSES:
                return status, parsed
            if status == 401 and use_auth and self.auth.refresh(generation):
                last_error = "HTTP 401 (credentials refreshed)"
                continue
            if status in RETRY_STATUSES:
                last_error = f"HTTP {status}"
                if attempt < self.max_attempts:
                    yield self._retry_delay(attempt, answer.retry_after)
                continue
            raise HttpError(f"{self.name} {method} {path}: HTTP {status}", status=status, body=parsed)
        raise HttpError(f"{self.name} {method} {path}: gave up after {self.max_attempts} attempts ({last_error})",
                        status=last_status, body=last_body, exhausted=True)


_CURL_NAMES = {6: "could not resolve host", 7: "connection refused", 18: "body shorter than Content-Length",
               28: "timed out", 35: "TLS handshake failed", 52: "empty reply (connection dropped)",
               55: "send failed", 56: "connection reset while receiving"}
