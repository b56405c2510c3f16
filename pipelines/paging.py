"""Paginators: how a source walks the pages of one result set, as a named type per paging scheme.

The names follow dlt's `BasePaginator` (`dlt.sources.helpers.rest_client.paginators`): a paginator holds the paging
state, `init_request()` gives the first page's paging parameters, `update_state(page, data)` reads each answer,
`has_next_page` says whether to go on and `update_request()` gives the next page's parameters. `paginate` runs a
paginator over a source's page steps; a new paging scheme (a cursor-paged API, say) is a new paginator, not a new
loop.

Why not subclasses of dlt's `BasePaginator` itself: its methods take and mutate a `requests.Request` and read a
`requests.Response`, which the request steps of `pipelines/http.py` never build: a page is one pre-encoded query
string sent by libcurl (blocking, or many at once on one thread through `pipelines/multiplex.py`), and its body is
parsed once by orjson before any paging decision. Building `requests` objects per page only to feed a paginator
would add CPU on the extraction hot path and give those types a meaning they do not have here. dlt's paginators also
have no notion of the result set changing under them, which CareCloud's offset paging must detect
(`StableOffsetPaginator.restart`).

Paging parameters are returned as already encoded query text and appended to the source's fixed query, so the
fixed part is encoded once per customer and window, not once per page.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable
from urllib.parse import quote_plus

from pipelines.http import Steps


class PagingUnstable(Exception):
    """The result set kept changing while it was paged (`StableOffsetPaginator`); the source reports the customer
    as failed for this run."""

    def __init__(self, attempts: int, totals: list[int], fetched: int) -> None:
        super().__init__(f"records kept arriving while paging; fetched {attempts} times")
        self.attempts, self.totals, self.fetched = attempts, totals, fetched


class BasePaginator(ABC):
    """The paging state of one result set (see the module docstring for the protocol and dlt's counterpart)."""

    def __init__(self) -> None:
        self._has_next_page = True

    @property
    def has_next_page(self) -> bool:
        return self._has_next_page

    def init_request(self) -> str:
        """The first page's paging parameters (encoded query text, "" for none); resets the paging state."""
        self._has_next_page = True
        return ""

    @abstractmethod
    def update_state(self, page: list, data: Any) -> None:
        """Take in one answer: `page` the records it held, `data` the parsed object around them (where totals,
        cursors and the like live). Sets `has_next_page`."""

    @abstractmethod
    def update_request(self) -> str:
        """The next page's paging parameters (encoded query text)."""

    def restart(self) -> bool:
        """Called after the last page: True when the result set must be fetched again from its first page (the
        paginator found it inconsistent). May raise when that is no longer worth trying."""
        return False


class SinglePagePaginator(BasePaginator):
    """An API that answers with everything at once."""

    def update_state(self, page: list, data: Any) -> None:
        self._has_next_page = False

    def update_request(self) -> str:  # pragma: no cover - never called: there is no next page
        return ""


class StableOffsetPaginator(BasePaginator):
    """Offset paging (`offset_param` = records already fetched, `total_key` in the answer's data) that keeps the result
    consistent while the vendor adds records during the paging.

    Offset paging is only safe while the result set stands still: if the total changes between pages or the records
    fetched do not add up to it (a late record slid in and shifted the offsets), `restart()` asks for the whole
    result set again, up to `max_attempts` fetches in all, then raises `PagingUnstable`. So no record is skipped or
    doubled. Without a total in the answers, a page shorter than `page_size` is the last one."""

    def __init__(self, page_size: int, max_attempts: int, offset_param: str = "offset",
                 total_key: str = "total_items") -> None:
        super().__init__()
        self.page_size = page_size
        self.max_attempts = max_attempts
        self.offset_param = offset_param
        self.total_key = total_key
        self.attempt = 0             # fetches of the whole result set so far (1 after the first)
        self.offset = 0
        self.total: int | None = None
        self.totals: set[int | None] = set()

    def init_request(self) -> str:
        self._has_next_page = True
        self.attempt += 1
        self.offset = 0
        self.total = None
        self.totals = set()
        return f"{self.offset_param}=0"

    def update_state(self, page: list, data: Any) -> None:
        total = data.get(self.total_key) if isinstance(data, dict) else None
        try:
            total = int(total) if total is not None else None
        except (TypeError, ValueError):
            total = None
        self.total = total
        self.totals.add(total)
        self.offset += len(page)
        if not page or (total is not None and self.offset >= total) or (total is None and len(page) < self.page_size):
            self._has_next_page = False

    def update_request(self) -> str:
        return f"{self.offset_param}={self.offset}"

    def restart(self) -> bool:
        if len(self.totals) == 1 and (self.total is None or self.offset == self.total):
            return False
        if self.attempt < self.max_attempts:
            return True
        raise PagingUnstable(self.attempt, sorted(t for t in self.totals if t is not None), self.offset)


class CursorPaginator(BasePaginator):
    """Cursor paging: each answer's data carries the next page's cursor under `cursor_key` (absent, null or "" on
    the last page), sent back as the query parameter `cursor_param`."""

    def __init__(self, cursor_key: str = "next_cursor", cursor_param: str = "cursor") -> None:
        super().__init__()
        self.cursor_key = cursor_key
        self.cursor_param = cursor_param
        self.cursor: str | None = None

    def init_request(self) -> str:
        self._has_next_page = True
        self.cursor = None
        return ""

    def update_state(self, page: list, data: Any) -> None:
        cursor = data.get(self.cursor_key) if isinstance(data, dict) else None
        self.cursor = str(cursor) if cursor not in (None, "") else None
        self._has_next_page = self.cursor is not None and bool(page)

    def update_request(self) -> str:
        return f"{self.cursor_param}={quote_plus(self.cursor or '')}"


def paginate(page_steps: Callable[[str], Steps], query: str, paginator: BasePaginator) -> Steps:
    """Request steps that fetch every page of one result set and return its records (a list).

    `page_steps(query)` are the steps of one page, returning (records of that page, the parsed data around them);
    `query` is the fixed part of the query (encoded, without paging parameters), the paginator adds its own."""
    while True:
        records: list = []
        paging = paginator.init_request()
        while True:
            page, data = yield from page_steps(f"{query}&{paging}" if paging and query else (paging or query))
            records.extend(page)
            paginator.update_state(page, data)
            if not paginator.has_next_page:
                break
            paging = paginator.update_request()
        if not paginator.restart():
            return records


class DescendingStopPaginator(StableOffsetPaginator):
    """`StableOffsetPaginator` over a result set sorted descending by `field`, that stops after the first page holding
    a record below `floor`: the rest is older than the caller needs (CareCloud's roster by `last_change` DESC,
    paged down to the watermark minus the lookback). Stopping early leaves fewer records than the total, so only a
    total that changed while paging makes it fetch again."""

    def __init__(self, page_size: int, max_attempts: int, field: str, floor: str | None) -> None:
        super().__init__(page_size, max_attempts)
        self.field = field
        self.floor = floor
        self.stopped = False

    def init_request(self) -> str:
        self.stopped = False
        return super().init_request()

    def update_state(self, page: list, data: Any) -> None:
        super().update_state(page, data)
        floor, field = self.floor, self.field
        if floor is not None and any(isinstance(r, dict) and str(r.get(field) or "") < floor for r in page):
            self.stopped = True
            self._has_next_page = False

    def restart(self) -> bool:
        if not self.stopped:
            return super().restart()
        if len(self.totals) == 1:
            return False
        if self.attempt < self.max_attempts:
            return True
        raise PagingUnstable(self.attempt, sorted(t for t in self.totals if t is not None), self.offset)
