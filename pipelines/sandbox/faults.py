"""Fault injection: per-credential token bucket, random 429/503, latency, dropped and truncated responses,
maintenance windows. Decisions are drawn from a seeded RNG and every injected fault is counted by kind."""

from __future__ import annotations

import random
import threading
import time
import zlib
from collections import Counter

from pipelines.sandbox.config import FaultConfig

# What the server does with one data request.
PASS = "pass"
RATE_LIMITED = "429_rate_limit"
RANDOM_429 = "429_random"
ERROR_503 = "503_random"
MAINTENANCE = "503_maintenance"
DROP = "dropped_connection"
TRUNCATE = "truncated_body"


class TokenBucket:
    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.capacity = burst if burst > 0 else max(1.0, rate)
        self.tokens = self.capacity
        self.updated = time.monotonic()

    def take(self) -> float:
        """0 if a token was taken, else the seconds until one is available."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class Faults:
    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.lock = threading.Lock()
        self.buckets: dict[str, TokenBucket] = {}
        self.counts: Counter[str] = Counter()
        self.started = time.monotonic()
        self.script = _script(config.scripted)

    def count(self, kind: str) -> None:
        with self.lock:
            self.counts[kind] += 1

    def update(self, **changes: object) -> None:
        """Change fault settings while serving (tests end a maintenance window, turn a storm off, ...)."""
        unknown = set(changes) - FaultConfig.field_names()
        if unknown:
            raise ValueError(f"unknown fault setting(s): {', '.join(sorted(unknown))}")
        with self.lock:
            for name, value in changes.items():
                setattr(self.config, name, type(getattr(self.config, name))(value))
            if {"rate_limit_rps", "rate_limit_burst", "rate_limit_scope"} & set(changes):
                self.buckets.clear()
            if "scripted" in changes:
                self.script = _script(self.config.scripted)
            if "seed" in changes:
                self.rng.seed(self.config.seed)

    def in_maintenance(self, customer_key: str) -> bool:
        c = self.config
        if not (c.maintenance_share > 0 and c.maintenance_seconds > 0):
            return False
        elapsed = time.monotonic() - self.started
        if not c.maintenance_after_seconds <= elapsed < c.maintenance_after_seconds + c.maintenance_seconds:
            return False
        # the same customers stay down for the whole window, like a shard under maintenance
        return (zlib.crc32(customer_key.encode()) % 10_000) < c.maintenance_share * 10_000

    def decide(self, credential: str, customer_key: str) -> tuple[str, float | None]:
        """(action, retry_after seconds or None) for one data request made with `credential` ("vendor:principal",
        the CareCloud login or the Capillary key / till id)."""
        c = self.config
        with self.lock:
            if c.rate_limit_rps > 0:
                # "vendor:principal"; with scope "tenant" every credential of the vendor shares the vendor's bucket
                key = credential.partition(":")[0] if c.rate_limit_scope == "tenant" else credential
                bucket = self.buckets.get(key)
                if bucket is None:
                    bucket = self.buckets[key] = TokenBucket(c.rate_limit_rps, c.rate_limit_burst)
                wait = bucket.take()
                if wait > 0:
                    self.counts[RATE_LIMITED] += 1
                    return RATE_LIMITED, (wait if self.rng.random() < c.retry_after_share else None)
            if self.in_maintenance(customer_key):
                self.counts[MAINTENANCE] += 1
                return MAINTENANCE, None
            if self.script:
                kind = self.script.pop(0)
                self.counts[kind] += 1
                return kind, None
            roll = self.rng.random()
            for kind, share in ((RANDOM_429, c.random_429_share), (ERROR_503, c.error_503_share),
                                (DROP, c.drop_share), (TRUNCATE, c.truncate_share)):
                if roll < share:
                    self.counts[kind] += 1
                    retry = None
                    if kind == RANDOM_429 and self.rng.random() < c.retry_after_share:
                        retry = 1.0
                    return kind, retry
                roll -= share
            return PASS, None

    def delay(self) -> float:
        c = self.config
        if not (c.latency_ms or c.jitter_ms):
            return 0.0
        with self.lock:
            jitter = self.rng.random() * c.jitter_ms
        return (c.latency_ms + jitter) / 1000.0


SCRIPTABLE = (RANDOM_429, ERROR_503, DROP, TRUNCATE)


def _script(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(SCRIPTABLE))
    if unknown:
        raise ValueError(f"unknown scripted fault kind(s): {', '.join(unknown)}; use {', '.join(SCRIPTABLE)}")
    return kinds
