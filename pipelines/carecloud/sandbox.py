"""CareCloud's part of the local sandbox (`pipelines/sandbox/service.py` loops over the registered sources' parts):
its base URL, customer ids, settings for the real CLI and ground truth. Imported only by the sandbox."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from pipelines.sandbox import config
from pipelines.sandbox.truth import carecloud_truth


class CareCloudSandbox:
    name = "carecloud"

    def base_url(self, sb: Any) -> str:
        return sb.url + config.CARECLOUD_BASE_PATH

    def customer_ids(self, sb: Any, indices: Sequence[int]) -> list[str]:
        gen = sb.app.data
        return [gen.carecloud_id(i) for i in indices]

    def unknown_ids(self, sb: Any, n: int) -> list[str]:
        """Well-formed ids the API does not know (400 not_found)."""
        gen = sb.app.data
        return [gen.carecloud_id(sb.config.customers + k)[:16][::-1] + f"{k:010x}" for k in range(n)]

    def maintenance_key(self, sb: Any, customer_id: str) -> str:
        return customer_id

    def warm(self, sb: Any, indices: Sequence[int]) -> int:
        gen = sb.app.data
        return sum(len(gen.carecloud(i)) for i in indices)

    def env(self, sb: Any, customers_file: Path) -> dict[str, str]:
        # the credentials read at call time: a test may swap the sandbox's constants (test_reliability_security)
        return {
            "SOURCES__CARECLOUD__BASE_URL": self.base_url(sb),
            "SOURCES__CARECLOUD__CREDENTIALS__LOGIN": config.CARECLOUD_LOGIN,
            "SOURCES__CARECLOUD__CREDENTIALS__PASSWORD": config.CARECLOUD_PASSWORD,
            "SOURCES__CARECLOUD__CREDENTIALS__EXTERNAL_APP_ID": config.CARECLOUD_APP_ID,
            "SOURCES__CARECLOUD__CUSTOMERS": str(customers_file),
            "SOURCES__CARECLOUD__TIMEZONE": sb.config.timezone,
        }

    def truth(self, sb: Any, at: float, indices: Sequence[int]) -> dict[str, Any]:
        return {"carecloud_point_history": carecloud_truth(sb.app.data, at, indices)}


PART = CareCloudSandbox()
