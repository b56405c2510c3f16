"""Many customers' requests in flight on ONE thread: libcurl's multi interface drives the request generators of
`pipelines/http.py` (`HttpClient.request_steps` and the sources' `fetch_steps` built on it).

Why not a thread per customer in flight (what this replaced): each finished request woke a fetch thread, which took
the GIL from the thread normalizing records and handed it back: kernel CPU per request (futexes, context switches;
`python -m bench.units`, docs/decisions/session-5-multiplex.md), and thread-pool futures cost more user CPU on top.
Here the only thread is the one that also turns records into Arrow; libcurl does the socket I/O of every transfer in
flight inside `perform()`.

Why by hand rather than asyncio + an HTTP library: the retries, backoff, 401 re-login and the rate limiter shared
across processes are written once as generators and run unchanged by the blocking driver (`HttpClient.drive`) and
by this one; an asyncio client would need its own copy of all of them, and aiohttp/httpx cost several times
libcurl's CPU per request (docs/decisions/design-figures.md). pycurl's `CurlMulti` has no scheduler of its own: the
timers below (backoff pauses, limiter waits) are the small part this module adds.

Blocking inside a step (a login after a 401 or at expiry, single-flight across processes) pauses this thread's
other transfers for its duration, as it would have made every thread wait for the same token.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
from typing import Any, Callable, Generic, Iterable, Iterator, TypeVar

import pycurl

from pipelines.http import Pause, Send, Steps, connection_failed, new_handle, prepare, response

T = TypeVar("T")
_END = object()


class _Task:
    """One item's request steps. `limiter` is set while the task sleeps on a timer waiting for a token (a timer
    without it is a backoff pause)."""

    __slots__ = ("item", "steps", "limiter", "lane")

    def __init__(self, item: Any, steps: Steps, lane: int = 0) -> None:
        self.item, self.steps, self.limiter, self.lane = item, steps, None, lane


class Multiplexer(Generic[T]):
    """Runs `steps_of(item)` for every item of `items`, at most `concurrency` at once, on the calling thread.

    Every task started and not yet finished is in exactly one of these states, each a container of its own:
    - `transferring`: its `Send` is a libcurl transfer in the multi handle (`running`: easy handle -> task);
    - `sleeping`: on the timer heap (`timers`), for a backoff `Pause` or until the rate limiter has a token;
    - `finished`: its result (or the exception it raised) waits in `finished` to be yielded to the caller.
    A task is otherwise only ever running on the stack (`_advance`), between two waits. `idle` holds easy handles
    between transfers (their connections stay in libcurl's cache); `exhausted` is true once `items` ran out.
    """

    def __init__(self, items: Iterable[T], steps_of: Callable[[T], Steps], concurrency: int,
                 lanes: "tuple[Callable[[T], int], list[int]] | None" = None) -> None:
        self.items = iter(items)
        self.steps_of = steps_of
        self.concurrency = max(1, concurrency)
        # lanes (several credentials of one source, `pipelines/credentials.py`): item -> lane, and each lane's own
        # limit of items in flight, so a slow credential's customers never hold the slots of another's. An item
        # whose lane is full waits in `parked` while later items of other lanes start.
        self.lane_of, self.lane_limits = lanes if lanes is not None else (None, [])
        if self.lane_of is not None:
            self.concurrency = max(1, sum(self.lane_limits))
        self.lane_active = [0] * len(self.lane_limits)
        self.parked: list[deque] = [deque() for _ in self.lane_limits]
        self.multi = pycurl.CurlMulti()
        self.idle: list[Any] = []
        self.running: dict[Any, _Task] = {}
        self.timers: list[tuple[float, int, _Task]] = []   # (due, tie-breaker, task)
        self.finished: list[tuple[T, Any]] = []
        self.active = 0          # tasks started and not yet finished
        self.exhausted = False
        self._seq = itertools.count()

    # ------------------------------------------------------------------------------------------ task transitions
    def _advance(self, task: _Task, value: Any = None, error: BaseException | None = None) -> None:
        """Run `task` up to its next step that waits for something (a transfer, a timer), or to its end."""
        steps = task.steps
        while True:
            try:
                op = steps.throw(error) if error is not None else steps.send(value)
            except StopIteration as stop:
                self._finish(task.item, stop.value, task.lane)
                return
            except Exception as exc:  # noqa: BLE001 - the item's failure, reported to the caller
                self._finish(task.item, exc, task.lane)
                return
            value = error = None
            kind = type(op)
            if kind is Send:
                self._transfer(task, op)
                return
            if kind is Pause:
                self._sleep(task, op)
                return
            if not self._token_or_sleep(task, op):  # a RateLimiter
                return

    def _finish(self, item: T, result: Any, lane: int = 0) -> None:
        self.finished.append((item, result))
        self.active -= 1
        if self.lane_of is not None:
            self.lane_active[lane] -= 1

    def _transfer(self, task: _Task, op: Send) -> None:
        curl = self.idle.pop() if self.idle else new_handle(op.timeout)
        prepare(curl, op)
        self.running[curl] = task
        self.multi.add_handle(curl)

    def _sleep(self, task: _Task, seconds: float) -> None:
        heapq.heappush(self.timers, (time.monotonic() + seconds, next(self._seq), task))

    def _token_or_sleep(self, task: _Task, limiter: Any) -> bool:
        """Take a token for `task`, or put it to sleep until the limiter will have one."""
        wait = limiter.try_acquire()
        if wait <= 0:
            return True
        task.limiter = limiter
        self._sleep(task, wait)
        return False

    # ------------------------------------------------------------------------------------------ the loop's phases
    def _start_more(self) -> None:
        """Start tasks for new items while there are free slots."""
        if self.lane_of is not None:
            self._start_more_in_lanes()
            return
        while not self.exhausted and self.active < self.concurrency:
            item = next(self.items, _END)
            if item is _END:
                self.exhausted = True
                return
            self._start(item)

    def _start(self, item: T, lane: int = 0) -> None:
        self.active += 1
        try:
            steps = self.steps_of(item)
        except Exception as exc:  # noqa: BLE001
            self._finish(item, exc, lane)
            return
        self._advance(_Task(item, steps, lane))

    def _start_more_in_lanes(self) -> None:
        limits, active, parked = self.lane_limits, self.lane_active, self.parked
        for lane, queue in enumerate(parked):
            while queue and active[lane] < limits[lane]:
                active[lane] += 1
                self._start(queue.popleft(), lane)
        while not self.exhausted and self.active < self.concurrency:
            item = next(self.items, _END)
            if item is _END:
                self.exhausted = True
                return
            lane = self.lane_of(item)  # type: ignore[misc]
            if active[lane] >= limits[lane]:
                parked[lane].append(item)
                continue
            active[lane] += 1
            self._start(item, lane)

    @property
    def _pending(self) -> bool:
        return any(self.parked)

    def _wake_sleepers(self) -> None:
        """Resume the tasks whose timer is due (those waiting for a token only once they got one)."""
        timers = self.timers
        now = time.monotonic()
        while timers and timers[0][0] <= now:
            _, _, task = heapq.heappop(timers)
            limiter, task.limiter = task.limiter, None
            if limiter is None or self._token_or_sleep(task, limiter):
                self._advance(task)

    def _perform(self) -> None:
        while self.multi.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
            pass

    def _reap(self) -> None:
        """Hand every finished transfer's answer (or connection failure) to its task."""
        multi, running = self.multi, self.running
        while True:
            queued, ok, failed = multi.info_read()
            for curl in ok:
                multi.remove_handle(curl)
                task = running.pop(curl)
                answer = response(curl)
                if answer.will_close:
                    curl.close()  # libcurl closes such a connection itself; a fresh handle is cheap
                else:
                    self.idle.append(curl)
                self._advance(task, answer)
            for curl, code, _message in failed:
                multi.remove_handle(curl)
                task = running.pop(curl)
                curl.close()  # as the blocking driver drops its connection after a failed transfer
                self._advance(task, error=connection_failed(code))
            if not queued:
                return

    def _wait(self) -> None:
        """Block until a socket, a libcurl timeout or the next timer may have something to do (at most 1 s)."""
        timeout = 1.0
        if self.timers:
            timeout = min(timeout, max(0.0, self.timers[0][0] - time.monotonic()))
        if self.running:
            wanted = self.multi.timeout()  # ms until libcurl's own next timeout (connect, low speed); -1 = none
            if wanted >= 0:
                timeout = min(timeout, wanted / 1000)
            started = time.monotonic()
            # select returns at once when libcurl has no socket to wait on yet (a resolver between states):
            # nap briefly instead of spinning through perform()
            if self.multi.select(timeout) <= 0 and time.monotonic() - started < timeout / 2:
                time.sleep(min(timeout, 0.005))
        elif timeout > 0:
            time.sleep(timeout)

    def __iter__(self) -> Iterator[tuple[T, Any]]:
        try:
            while self.active or self.finished or not self.exhausted or self._pending:
                self._start_more()
                if self.running:
                    self._perform()
                    self._reap()
                self._wake_sleepers()
                if self.finished:
                    # the freed slots' next requests go on the wire before the caller works on the results
                    self._start_more()
                    if self.running:
                        self._perform()
                    done, self.finished = self.finished, []
                    yield from done
                    continue
                if self.active:
                    self._wait()
        finally:
            self.close()

    def close(self) -> None:
        """Abandon the transfers in flight and the sleeping tasks; release libcurl's handles."""
        for curl, task in self.running.items():
            self.multi.remove_handle(curl)
            curl.close()
            task.steps.close()
        self.running.clear()
        for _, _, task in self.timers:
            task.steps.close()
        self.timers.clear()
        for curl in self.idle:
            curl.close()
        self.idle.clear()
        self.multi.close()


def run_multiplexed(items: Iterable[T], steps_of: Callable[[T], Steps], concurrency: int,
                    lanes: "tuple[Callable[[T], int], list[int]] | None" = None) -> Iterator[tuple[T, Any]]:
    """Run `steps_of(item)` for every item, at most `concurrency` of them at once, and yield (item, result or the
    exception it raised) as each finishes. Items are taken from `items` only as slots free up, so memory stays flat
    however many there are. `lanes` = (item -> lane index, each lane's limit in flight): then at most that many of
    each lane at once (and `concurrency` is their sum); items of a full lane wait while other lanes' items start.
    Closing the iterator early abandons the transfers in flight."""
    yield from Multiplexer(items, steps_of, concurrency, lanes)
