"""The registry of sources: one line per source, naming the package that exports its `SPEC` (`pipelines/spec.py`).

Everything that handles "each source" (runner, settings, `--source` choices, worker start-up, demo, sandbox,
dashboard) loops over this registry; no other module names a source. A source can also live outside this
repository: a package that declares an entry point in the group `loyalty_warehouse.sources`
(`ledger = "my_package.ledger:SPEC"`; the attribute may be left out, `SPEC` is the default) is registered when it is installed
(or on `sys.path` with its `.dist-info`), the standard Python plugin mechanism (docs/extending.md).

Names come without importing any source (the CLI's `--help` stays fast); `get(name)` imports the package."""

from __future__ import annotations

import importlib
from functools import lru_cache
from typing import Any

from pipelines.spec import SourceSpec

REGISTRY: dict[str, str] = {
    "carecloud": "pipelines.carecloud",
    "capillary": "pipelines.capillary",
}
ENTRY_POINT_GROUP = "loyalty_warehouse.sources"


@lru_cache(maxsize=1)
def _modules() -> dict[str, str]:
    from importlib.metadata import entry_points

    modules = dict(REGISTRY)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in modules and modules[ep.name] != ep.value:
            raise ValueError(f"source {ep.name!r} registered twice: {modules[ep.name]} and {ep.value} "
                             f"(entry point group {ENTRY_POINT_GROUP})")
        modules[ep.name] = ep.value
    return modules


def names() -> list[str]:
    """Every registered source, in registry order (plugins after the built-in ones)."""
    return list(_modules())


@lru_cache(maxsize=None)
def get(name: str) -> SourceSpec:
    """The spec of source `name` (imports its package)."""
    try:
        target = _modules()[name]
    except KeyError:
        raise KeyError(f"unknown source {name!r}; registered: {', '.join(names())}") from None
    module, _, attr = target.partition(":")
    spec = getattr(importlib.import_module(module), attr or "SPEC", None)
    if not isinstance(spec, SourceSpec) or spec.name != name:
        raise TypeError(f"{target} must be a pipelines.spec.SourceSpec named {name!r}")
    return spec


def specs(selected: list[str] | tuple[str, ...] | None = None) -> list[SourceSpec]:
    """The specs of `selected` sources (all when None), in that order."""
    return [get(name) for name in (names() if selected is None else selected)]


def make_api(source: str, settings: Any, stats: Any, token_slot: Any = None) -> Any:
    """The API client of `source` from the run's `config.Settings` (with several credentials, one client per
    credential behind one object: `pipelines/credentials.py`); `token_slot` (one, or one per credential) shares its
    login across processes."""
    from pipelines.credentials import make_api

    return make_api(get(source), settings.source(source), stats, token_slot)
