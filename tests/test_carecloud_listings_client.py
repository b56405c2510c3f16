"""The CareCloud client for the cross-customer listings (`CareCloudApi.listing`, `.roster`): pages through the
project's HttpClient (retries, limiter, re-login) and `pipelines/paging.py`, against the real sandbox over loopback;
every item exactly once under 429/503/dropped/truncated answers; a listing that cannot be read to its end raises
`ListingIncomplete`, never a partial list."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from pipelines.config import load_settings
from pipelines.errors import ListingIncomplete
from pipelines.http import HttpStats
from pipelines.registry import make_api

WINDOW = ("2026-03-01 00:00:00", "2026-11-20 01:00:00")


@pytest.fixture
def api_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    apis = []

    def make(sb, page_size: int = 50, max_attempts: int = 8):
        for key, value in sb.env(tmp_path / "w.duckdb").items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("SOURCES__CARECLOUD__PAGE_SIZE", str(page_size))
        monkeypatch.setenv("SOURCES__CARECLOUD__MAX_ATTEMPTS", str(max_attempts))
        monkeypatch.setenv("SOURCES__CARECLOUD__RETRY_BACKOFF", "0.01")
        api = make_api("carecloud", load_settings(), HttpStats())
        apis.append(api)
        return api

    yield make
    for api in apis:
        api.close()


def _truth_window(sb, table: str, field: str) -> Counter:
    rows = sb.listing_truth()[table].to_pylist()
    return Counter(r[table.split("_")[1][:-1] + "_id"] for r in rows if WINDOW[0] <= r[field] <= WINDOW[1])


def test_points_and_purchases_windows_equal_the_truth_under_faults(sandbox_factory, api_for):
    sb = sandbox_factory(customers=150, random_429_share=0.12, error_503_share=0.1, drop_share=0.06,
                         truncate_share=0.04, retry_after_share=0.3, seed=4)
    api = api_for(sb, page_size=20, max_attempts=10)
    points, requests = api.listing("points", *WINDOW)
    assert Counter(p["point_id"] for p in points) == _truth_window(sb, "carecloud_points", "created_at")
    assert requests == -(-len(points) // 20) and len(points) > 200   # a page per 20 items: retries are not pages
    purchases, _ = api.listing("purchases", *WINDOW)
    assert Counter(p["purchase_id"] for p in purchases) == _truth_window(sb, "carecloud_purchases", "payment_time")
    faults = sb.stats()["faults"]
    assert faults.get("429_random") and faults.get("503_random") and faults.get("dropped_connection")


def test_roster_whole_and_down_to_a_floor(sandbox_factory, api_for):
    sb = sandbox_factory(customers=300, joining_share=0.3)
    api = api_for(sb, page_size=25)
    roster, requests = api.roster()
    truth = sb.listing_truth()["carecloud_customers"].to_pylist()
    assert sorted(c["customer_id"] for c in roster) == sorted(t["customer_id"] for t in truth)
    assert requests == -(-len(truth) // 25)
    floor = sorted(t["last_change"] for t in truth)[-40]        # the 40 most recently changed customers
    changed, requests = api.roster(changed_since=floor)
    wanted = {t["customer_id"] for t in truth if t["last_change"] >= floor}
    assert wanted <= {c["customer_id"] for c in changed}
    assert requests == 2 and len(changed) == 50                  # stops after the first page that crosses the floor


def test_a_listing_that_cannot_be_read_raises_and_returns_nothing(sandbox_factory, api_for):
    sb = sandbox_factory(customers=40)
    api = api_for(sb, page_size=10, max_attempts=2)
    api.check()
    sb.update_faults(error_503_share=1.0)
    for call in (lambda: api.listing("points", *WINDOW), lambda: api.roster()):
        with pytest.raises(ListingIncomplete) as err:
            call()
        assert "503" in str(err.value)
    sb.update_faults(error_503_share=0.0)
    # a result set that keeps growing while it is paged (records arriving) is fetched again, then given up
    page = api._listing_page

    def page_then_time_passes(path, key, query):
        result = yield from page(path, key, query)
        sb.advance(86400)
        return result

    api._listing_page = page_then_time_passes  # type: ignore[method-assign]
    with pytest.raises(ListingIncomplete, match="kept arriving"):
        api.listing("points", "2026-01-01 00:00:00", "2027-07-01 00:00:00")
