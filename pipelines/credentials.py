"""Several credentials per source (`[[sources.<name>.credentials]]`, docs/credentials.md): one API client per
credential, each with its own login and its own rate limiter, and every customer always fetched with the same one.

Why: a vendor sells request budget per API user (CareCloud) or per key (Capillary), so more budget comes as more
credentials, and the budget is only usable when each credential has its own limiter and its own token. A customer's
credential is `sharding.bucket(customer_id, C)`: an index into the source's C credentials in the order of their
list (TEAM contract 4; reordering the list, or adding a credential, moves customers to other credentials):
the same hash as `--shard K/N`, so when C divides N every customer of shard K uses credential (K-1) mod C and one
Airflow task sits in exactly one credential's pool (`credential_of_shard`).

A source with ONE credential is not wrapped at all: its client is the source's own, exactly as before.

Failures: a credential whose login is refused (or whose data requests answer 401) is marked unusable; its customers
fail one by one with `credential_unavailable` (recorded in sync_issues, retried next run) while the other
credentials' customers load. Only when no credential of the source works is the source unavailable, as a bad single
credential is.

Processes: each credential's limiter and token slot are created before the worker processes fork
(`credential_slots`, `pipelines/workers.py`), so every process shares them; each credential's customers in flight
are a lane of their own in the multiplexer (`lanes`), split between the workers like the source's concurrency was.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Sequence

from pipelines.errors import CustomerFailed, SourceUnavailable
from pipelines.http import HttpStats, SharedToken, Steps
from pipelines.logs import get_logger, redact
from pipelines.sharding import bucket

log = get_logger("credentials")

UNAVAILABLE = "credential_unavailable"


def credential_sets(cfg: Any) -> list[Any]:
    """The source's credentials in the order of their list (`config.load_source`); one for a single table."""
    sets = getattr(cfg, "credential_sets", None)
    if sets:
        return list(sets)
    single = getattr(cfg, "credentials", None)
    return [single] if single is not None else []


def names(cfg: Any) -> list[str]:
    """The credential names of a source's resolved section, in assignment order."""
    return [str(c.name) for c in credential_sets(cfg)]


def credential_index(customer_id: str, count: int) -> int:
    """Which of `count` credentials (an index into their list) fetches `customer_id`."""
    return bucket(customer_id, count) if count > 1 else 0


def credential_of_shard(shard: int, shards: int, count: int) -> int | None:
    """The one credential index every customer of shard `shard` (1-based) of `shards` uses when `count` divides
    `shards` (h mod N mod C == h mod C), else None (the shard's customers then use several credentials)."""
    if count <= 1:
        return 0
    if shards % count:
        return None
    return (shard - 1) % count


def rate_limit(cfg: Any, creds: Any) -> float:
    """Requests per second of one credential: its own `rate_limit`, else the source's (which is per credential)."""
    own = getattr(creds, "rate_limit", None)
    return float(own) if own is not None else float(cfg.rate_limit)


def concurrency(cfg: Any, creds: Any) -> int:
    """Customers in flight with one credential: its own `concurrency`, else the source's."""
    own = getattr(creds, "concurrency", None)
    return int(own) if own is not None else int(cfg.concurrency)


def for_credential(cfg: Any, creds: Any) -> Any:
    """A copy of the source's resolved section that has only `creds`, with its rate limit and concurrency: what the
    source's own `make_api` expects (so a source needs no change to get several credentials)."""
    one = copy.copy(cfg)
    one.credentials = creds
    one.credential_sets = [creds]
    one.rate_limit = rate_limit(cfg, creds)
    one.concurrency = concurrency(cfg, creds)
    return one


def lanes(cfg: Any, processes: int = 1) -> list[int] | None:
    """Customers in flight per credential in one process (a worker's share when `processes` share them), or None
    for a single credential (no lanes: the source's `concurrency` as before)."""
    sets = credential_sets(cfg)
    if len(sets) <= 1:
        return None
    return [max(1, math.ceil(concurrency(cfg, c) / max(1, processes))) for c in sets]


def total_concurrency(cfg: Any) -> int:
    """Customers in flight for the whole source: the sum over its credentials (the source's `concurrency` for one)."""
    sets = credential_sets(cfg)
    if len(sets) <= 1:
        return int(cfg.concurrency)
    return sum(concurrency(cfg, c) for c in sets)


def total_rate(cfg: Any) -> float:
    """Requests per second of the whole source: the sum over its credentials; 0 = some credential is unlimited."""
    rates = [rate_limit(cfg, c) for c in credential_sets(cfg)] or [float(cfg.rate_limit)]
    return 0.0 if any(r <= 0 for r in rates) else sum(rates)


def credential_slots(cfg: Any) -> list[SharedToken]:
    """One shared login slot per credential, created before the workers fork."""
    return [SharedToken() for _ in credential_sets(cfg)] or [SharedToken()]


def make_api(spec: Any, cfg: Any, stats: HttpStats, slots: Sequence[SharedToken] | SharedToken | None = None,
             shard: tuple[int, int] | None = None) -> Any:
    """The source's API client: its own (`spec.make_api`) for one credential, a `CredentialApis` over one client per
    credential for several. `slots`: the credentials' shared login slots (`credential_slots`), in the same order.
    `shard`: (K, N) of a `--shard K/N` run; when C divides N its customers use one credential only, and the client
    then logs in and lists with that one alone (`CredentialApis.own`)."""
    if isinstance(slots, SharedToken):
        slots = [slots]
    sets = credential_sets(cfg)
    if len(sets) <= 1:
        return spec.make_api(cfg, stats, slots[0] if slots else None)
    apis = []
    for i, creds in enumerate(sets):
        child = HttpStats(credential=str(creds.name), parent=stats)
        apis.append(spec.make_api(for_credential(cfg, creds), child, slots[i] if slots else None))
    own = None
    if shard is not None:
        index = credential_of_shard(shard[0], shard[1], len(sets))
        own = [index] if index is not None else None
    return CredentialApis(cfg.name, [str(c.name) for c in sets], apis, own)


class CredentialApis:
    """One source's API clients, one per credential (`SourceApi` to the engine). A customer's requests go through
    the client of its credential (`lane_of`); what is not per customer (listings, change discovery, the roster,
    attributes such as `timezone`) goes to the first credential that works.

    `own`: the credentials this run's customers use (a shard's one credential when C divides N; default all). Only
    those are logged in by `check` and asked for listings (`primary`), so a shard task that sits in one
    credential's Airflow pool never spends another credential's budget (not even a login): before, every shard
    logged in with every credential and listed with the first one, a request outside its pool each time."""

    def __init__(self, source: str, names: list[str], apis: list[Any], own: Sequence[int] | None = None) -> None:
        self.source = source
        self.names = names
        self.apis = apis
        self.own = list(own) if own is not None else list(range(len(apis)))
        self.unusable: dict[int, str] = {}     # credential index -> why (its login was refused, a 401 on data)
        self._checked: set[int] = set()

    def lane_of(self, customer_id: str) -> int:
        return credential_index(customer_id, len(self.apis))

    def _mark_unusable(self, i: int, reason: str) -> None:
        if i not in self.unusable:
            self.unusable[i] = redact(reason)
            log.error("credential unusable: its customers fail this run", extra={"fields": {
                "source": self.source, "credential": self.names[i], "error": self.unusable[i]}})

    def _check(self, i: int) -> bool:
        if i in self.unusable:
            return False
        if i not in self._checked:
            try:
                self.apis[i].check()
            except SourceUnavailable as exc:
                self._mark_unusable(i, str(exc))
                return False
            self._checked.add(i)
        return True

    def _none_left(self) -> SourceUnavailable:
        return SourceUnavailable(f"{self.source}: no credential works: " + "; ".join(
            f"{self.names[i]}: {why}" for i, why in sorted(self.unusable.items())))

    def _all_unusable(self) -> bool:
        return all(i in self.unusable for i in self.own)

    def check(self) -> None:
        """Log in with every credential this run uses (`own`); those refused are marked unusable (their customers
        will fail), and only when none works is the whole source unavailable."""
        results = [self._check(i) for i in self.own]
        if not any(results):
            raise self._none_left()

    def unusable_credentials(self) -> dict[str, str]:
        """name -> why, for the credentials marked unusable so far."""
        return {self.names[i]: why for i, why in sorted(self.unusable.items())}

    def close(self) -> None:
        for api in self.apis:
            api.close()

    def customer_steps(self, customer_id: str, window: Any) -> Steps:
        i = self.lane_of(customer_id)
        if i in self.unusable:
            if self._all_unusable():
                raise self._none_left()
            raise CustomerFailed(UNAVAILABLE, f"credential {self.names[i]} unusable: {self.unusable[i]}")
        try:
            return (yield from self.apis[i].customer_steps(customer_id, window))
        except SourceUnavailable as exc:  # its login refused, or its data requests answered 401
            self._mark_unusable(i, str(exc))
            if self._all_unusable():
                raise self._none_left() from None
            raise CustomerFailed(UNAVAILABLE, f"credential {self.names[i]} unusable: {self.unusable[i]}") from None

    def primary(self) -> Any:
        """The client of the first credential this run uses (`own`, in list order) whose login works, for what is not
        per customer."""
        for i in self.own:
            if self._check(i):
                return self.apis[i]
        raise self._none_left()

    def __getattr__(self, name: str) -> Any:
        # only for what this class does not define: a source's optional hooks (sync_roster, discover, observe,
        # listing calls) and attributes (timezone, settings) come from the first working credential's client
        if name.startswith("__") or name in ("apis", "unusable", "names", "_checked", "source", "own"):
            raise AttributeError(name)
        return getattr(self.primary(), name)


def lane_function(api: Any) -> Callable[[str], int] | None:
    """The api's customer -> credential lane, or None for a single credential's own client."""
    return api.lane_of if isinstance(api, CredentialApis) else None
