"""The local sandbox: one HTTP server that behaves like both vendor APIs (CareCloud point history, Capillary
points transfers), with deterministic data, a controllable clock, fault injection and ground truth.

See docs/sandbox.md. In-process use:

    from pipelines.sandbox import Sandbox, SandboxConfig, FaultConfig
    with Sandbox(SandboxConfig(customers=200, seed=7, now="2026-11-20T00:00:00+00:00")) as sb:
        sb.url, sb.truth()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipelines.sandbox.config import FaultConfig, SandboxConfig

if TYPE_CHECKING:
    from pipelines.sandbox.server import ServerOptions
    from pipelines.sandbox.service import Sandbox
    from pipelines.sandbox.truth import Truth

__all__ = ["Sandbox", "SandboxConfig", "FaultConfig", "ServerOptions", "Truth"]
_LAZY = {"Sandbox": "pipelines.sandbox.service", "ServerOptions": "pipelines.sandbox.server",
         "Truth": "pipelines.sandbox.truth"}


def __getattr__(name: str) -> Any:
    # lazy: `loyalty-etl --help` imports the sandbox command's flags (config.py) without pyarrow and the server
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pipelines.sandbox' has no attribute {name!r}")
