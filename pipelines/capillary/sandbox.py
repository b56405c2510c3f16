"""Capillary's part of the local sandbox (`pipelines/sandbox/service.py` loops over the registered sources' parts):
its base URL, customer identifiers (`sb.capillary_identifier` names which), settings for the real CLI and ground
truth. Imported only by the sandbox."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from pipelines.sandbox import config
from pipelines.sandbox.data import CAPILLARY_USER_BASE
from pipelines.sandbox.truth import capillary_truth


class CapillarySandbox:
    name = "capillary"

    def base_url(self, sb: Any) -> str:
        return sb.url

    def customer_ids(self, sb: Any, indices: Sequence[int], identifier_name: str | None = None) -> list[str]:
        name = identifier_name or sb.capillary_identifier
        if name == "id":  # the common case, without building all four identifiers per customer
            return [str(CAPILLARY_USER_BASE + i) for i in indices]
        gen = sb.app.data
        return [gen.capillary_identifiers(i)[name] for i in indices]

    def unknown_ids(self, sb: Any, n: int) -> list[str]:
        """Well-formed ids the API does not know (8015)."""
        return [str(880_000_000 + k) for k in range(n)]

    def maintenance_key(self, sb: Any, customer_id: str) -> str:
        return f"{sb.capillary_identifier}:{customer_id}"

    def warm(self, sb: Any, indices: Sequence[int]) -> int:
        gen = sb.app.data
        for i in indices:
            gen.capillary_view(i)
        return 0

    def env(self, sb: Any, customers_file: Path) -> dict[str, str]:
        # the credentials read at call time: a test may swap the sandbox's constants (test_reliability_security)
        return {
            "SOURCES__CAPILLARY__BASE_URL": self.base_url(sb),
            "SOURCES__CAPILLARY__CREDENTIALS__TILL_ID": config.CAPILLARY_TILL_ID,
            "SOURCES__CAPILLARY__CREDENTIALS__PASSWORD": config.CAPILLARY_PASSWORD,
            "SOURCES__CAPILLARY__CUSTOMERS": str(customers_file),
            "SOURCES__CAPILLARY__IDENTIFIER_NAME": sb.capillary_identifier,
            "SOURCES__CAPILLARY__SERVER_TIMEZONE": sb.config.capillary_timezone,
        }

    def truth(self, sb: Any, at: float, indices: Sequence[int]) -> dict[str, Any]:
        return {"capillary_customer_transfers": capillary_truth(sb.app.data, at, indices, sb.capillary_identifier)}


PART = CapillarySandbox()
