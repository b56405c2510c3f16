"""The local sandbox: one HTTP server that behaves like both vendor APIs (CareCloud point history, Capillary
points transfers), with deterministic data, a controllable clock, fault injection and ground truth.

See docs/sandbox.md. In-process use:

    from pipelines.sandbox import Sandbox, SandboxConfig, FaultConfig
    with Sandbox(SandboxConfig(customers=200, seed=7, now="2026-11-20T00:00:00+00:00")) as sb:
        sb.url, sb.truth()
"""

from pipelines.sandbox.config import FaultConfig, SandboxConfig
from pipelines.sandbox.server import ServerOptions
from pipelines.sandbox.service import Sandbox
from pipelines.sandbox.truth import Truth

__all__ = ["Sandbox", "SandboxConfig", "FaultConfig", "ServerOptions", "Truth"]
