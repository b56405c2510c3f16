"""Shared fixtures: a real sandbox HTTP server per test, and the environment that points the real CLI at it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from pipelines.sandbox import FaultConfig, Sandbox, SandboxConfig
from pipelines.sandbox.config import split_kwargs

# A fixed instant so tests are reproducible; data spans 2024-01-01 .. 2027-06-30 (project local time).
DEFAULT_NOW = "2026-11-20T00:00:00+00:00"


@pytest.fixture
def sandbox_factory() -> Iterator[Callable[..., Sandbox]]:
    """`sandbox_factory(customers=50, seed=7, now=..., faults=FaultConfig(...), **config)` -> a started Sandbox on
    a free loopback port, stopped at teardown. Extra keywords may be SandboxConfig or FaultConfig fields."""
    started: list[Sandbox] = []

    def make(customers: int = 50, seed: int = 7, now: Any = DEFAULT_NOW, faults: FaultConfig | None = None,
             **config: Any) -> Sandbox:
        sb_kw, fault_kw = split_kwargs(config)
        if fault_kw:
            base = faults.__dict__ if faults is not None else {}
            faults = FaultConfig(**{**base, **fault_kw})
        sb = Sandbox(SandboxConfig(customers=customers, seed=seed, now=now, **sb_kw), faults or FaultConfig())
        sb.start("127.0.0.1", 0)
        started.append(sb)
        return sb

    yield make
    for sb in started:
        sb.stop()


@pytest.fixture
def sandbox_env() -> Callable[..., dict[str, str]]:
    """`sandbox_env(sb, warehouse_path, **customer_file_options) -> dict` of env vars for the real CLI
    (merge into os.environ). Writes the customer files into the warehouse's directory."""

    def make(sb: Sandbox, warehouse_path: str | Path, **options: Any) -> dict[str, str]:
        return sb.env(warehouse_path, **options)

    return make


# a real PostgreSQL on loopback (`postgres`: a database of its own per test on one server per worker)
from tests.helpers.postgres import postgres, postgres_server  # noqa: E402,F401  (fixtures)
