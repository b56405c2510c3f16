"""The sources the pipeline knows."""

from __future__ import annotations

from typing import Any

from pipelines.http import HttpStats


def make_api(source: str, settings: Any, stats: HttpStats, token_slot: Any = None) -> Any:
    """The API client of `source` ("carecloud" or "capillary"); `token_slot` shares its login across processes."""
    if source == "carecloud":
        from pipelines.carecloud.helpers import CareCloudApi

        return CareCloudApi(settings.source("carecloud"), stats, token_slot)
    from pipelines.capillary.helpers import CapillaryApi

    return CapillaryApi(settings.source("capillary"), stats, token_slot)
