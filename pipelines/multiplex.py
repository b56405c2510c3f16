"""Many customers' requests in flight on ONE thread: libcurl's multi interface drives the request generators of
`pipelines/http.py` (`HttpClient.request_steps` and the sources' `fetch_steps` built on it).

Why not a thread per customer in flight (what this replaced): each finished request woke a fetch thread, which took
the GIL from the thread normalizing records and handed it back: kernel CPU per request (futexes, context
switches; `python -m bench.units`, docs/decisions/session-5-multiplex.md), and thread-pool futures cost more user
CPU on top. Here the only thread is the one that also
turns records into Arrow; libcurl does the socket I/O of every transfer in flight inside `perform()`.

Why by hand rather than asyncio + an HTTP library: the retries, backoff, 401 re-login and the rate limiter shared
across processes are written once as generators and run unchanged by the blocking driver (`HttpClient.drive`) and
by this one; an asyncio client would need its own copy of all of them, and aiohttp/httpx cost several times
libcurl's CPU per request (docs/decisions/design-figures.md). pycurl's `CurlMulti` has no scheduler of its own: the timers below
(backoff pauses, limiter waits) are the small part this module adds.

Blocking inside a step (a login after a 401 or at expiry, single-flight across processes) pauses this thread's
other transfers for its duration, as it would have made every thread wait for the same token.
"""

from __future__ import annotations

import heapq
import itertools
import time
from typing import Any, Callable, Iterable, Iterator, TypeVar

import pycurl

from pipelines.http import Pause, Send, Steps, connection_failed, new_handle, prepare, response

T = TypeVar("T")
_END = object()


class _Task:
    __slots__ = ("item", "steps", "limiter")

    def __init__(self, item: Any, steps: Steps) -> None:
        self.item, self.steps, self.limiter = item, steps, None


def run_multiplexed(items: Iterable[T], steps_of: Callable[[T], Steps], concurrency: int,
                    ) -> Iterator[tuple[T, Any]]:
    """Run `steps_of(item)` for every item, at most `concurrency` of them at once, and yield (item, result or the
    exception it raised) as each finishes. Items are taken from `items` only as slots free up, so memory stays flat
    however many there are. Closing the iterator early abandons the transfers in flight."""
    concurrency = max(1, concurrency)
    source = iter(items)
    multi = pycurl.CurlMulti()
    idle: list[Any] = []                        # easy handles not in a transfer; their connections stay in the cache
    running: dict[Any, _Task] = {}              # easy handle -> task
    timers: list[tuple[float, int, _Task]] = []  # (due, tie-breaker, task): pauses and limiter waits
    seq = itertools.count()
    finished: list[tuple[T, Any]] = []
    active = 0
    exhausted = False

    def advance(task: _Task, value: Any = None, error: BaseException | None = None) -> None:
        """Run `task` up to its next step that waits for something (a transfer, a timer), or to its end."""
        nonlocal active
        steps = task.steps
        while True:
            try:
                op = steps.throw(error) if error is not None else steps.send(value)
            except StopIteration as stop:
                finished.append((task.item, stop.value))
                active -= 1
                return
            except Exception as exc:  # noqa: BLE001 - the item's failure, reported to the caller
                finished.append((task.item, exc))
                active -= 1
                return
            value = error = None
            kind = type(op)
            if kind is Send:
                curl = idle.pop() if idle else new_handle(op.timeout)
                prepare(curl, op)
                running[curl] = task
                multi.add_handle(curl)
                return
            if kind is Pause:
                heapq.heappush(timers, (time.monotonic() + op, next(seq), task))
                return
            if not token_or_wait(task, op):  # a RateLimiter
                return

    def token_or_wait(task: _Task, limiter: Any) -> bool:
        """Take a token for `task`, or park it on a timer until the limiter will have one."""
        wait = limiter.try_acquire()
        if wait <= 0:
            return True
        task.limiter = limiter
        heapq.heappush(timers, (time.monotonic() + wait, next(seq), task))
        return False

    def start_more() -> None:
        nonlocal active, exhausted
        while not exhausted and active < concurrency:
            item = next(source, _END)
            if item is _END:
                exhausted = True
                return
            active += 1
            try:
                steps = steps_of(item)
            except Exception as exc:  # noqa: BLE001
                finished.append((item, exc))
                active -= 1
                continue
            advance(_Task(item, steps))

    def fire_timers() -> None:
        now = time.monotonic()
        while timers and timers[0][0] <= now:
            _, _, task = heapq.heappop(timers)
            limiter, task.limiter = task.limiter, None
            if limiter is None or token_or_wait(task, limiter):
                advance(task)

    def reap() -> None:
        while True:
            queued, ok, failed = multi.info_read()
            for curl in ok:
                multi.remove_handle(curl)
                task = running.pop(curl)
                answer = response(curl)
                if answer.will_close:
                    curl.close()  # libcurl closes such a connection itself; a fresh handle is cheap
                else:
                    idle.append(curl)
                advance(task, answer)
            for curl, code, _message in failed:
                multi.remove_handle(curl)
                task = running.pop(curl)
                curl.close()  # as the blocking driver drops its connection after a failed transfer
                advance(task, error=connection_failed(code))
            if not queued:
                return

    def perform() -> None:
        while multi.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
            pass

    try:
        while active or finished or not exhausted:
            start_more()
            if running:
                perform()
                reap()
            fire_timers()
            if finished:
                # the freed slots' next requests go on the wire before the caller works on the results
                start_more()
                if running:
                    perform()
                done, finished[:] = list(finished), []
                yield from done
                continue
            if not active:
                continue
            timeout = 1.0
            if timers:
                timeout = min(timeout, max(0.0, timers[0][0] - time.monotonic()))
            if running:
                wanted = multi.timeout()  # ms until libcurl's own next timeout (connect, low speed); -1 = none
                if wanted >= 0:
                    timeout = min(timeout, wanted / 1000)
                started = time.monotonic()
                # select returns at once when libcurl has no socket to wait on yet (a resolver between states):
                # nap briefly instead of spinning through perform()
                if multi.select(timeout) <= 0 and time.monotonic() - started < timeout / 2:
                    time.sleep(min(timeout, 0.005))
            elif timeout > 0:
                time.sleep(timeout)
    finally:
        for curl, task in running.items():
            multi.remove_handle(curl)
            curl.close()
            task.steps.close()
        for _, _, task in timers:
            task.steps.close()
        for curl in idle:
            curl.close()
        multi.close()
