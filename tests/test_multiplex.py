"""`pipelines/multiplex.py`: many customers' request steps in flight on one thread (libcurl multi) give exactly
what the blocking driver gives, under 429s with and without Retry-After, 503s, dropped connections, truncated
bodies and an expiring token, with at most `concurrency` customers in flight."""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterator

from pipelines.carecloud.config import CareCloudConfiguration, CareCloudCredentials
from pipelines.carecloud.helpers import CareCloudApi
from pipelines.errors import CustomerFailed
from pipelines.http import HttpStats
from pipelines.multiplex import run_multiplexed
from pipelines.sandbox.config import CARECLOUD_APP_ID, CARECLOUD_LOGIN, CARECLOUD_PASSWORD

NOW = "2026-11-20T00:00:00+00:00"
FROM, TO = "2023-12-01 00:00:00", "2026-11-20 01:00:00"


def _api(sb: Any, stats: HttpStats, page_size: int = 1000) -> CareCloudApi:
    return CareCloudApi(CareCloudConfiguration(
        name="carecloud", base_url=sb.carecloud_base_url, rate_limit=0, concurrency=4, max_attempts=8,
        retry_backoff=0.01, page_size=page_size, credentials=CareCloudCredentials(
            login=CARECLOUD_LOGIN, password=CARECLOUD_PASSWORD, external_app_id=CARECLOUD_APP_ID)), stats)


def _key(r: dict) -> tuple:
    """A record as both sides spell it (the API's records and the truth's rows differ in types only)."""
    return (float(r["point_amount"]),
            *(str(r.get(f)) for f in ("point_history_record_time", "extended_data", "point_operation_note")))


def test_multiplexed_fetch_equals_truth_under_faults_and_bounds_concurrency(sandbox_factory) -> None:
    sb = sandbox_factory(customers=60, now=NOW, random_429_share=0.15, retry_after_share=0.5, error_503_share=0.1,
                         drop_share=0.05, truncate_share=0.05, token_max_requests=25, seed=3)
    ids = sb.customer_ids("carecloud")
    stats = HttpStats()
    api = _api(sb, stats, page_size=200)  # heavy customers take several pages
    in_flight, peak = 0, 0

    def steps_of(customer_id: str) -> Iterator[Any]:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            records, _ = yield from api.fetch_steps(customer_id, FROM, TO)
            return records
        finally:
            in_flight -= 1

    got: dict[str, Any] = dict(run_multiplexed(ids, steps_of, concurrency=4))
    assert set(got) == set(ids)
    failures = {c: r for c, r in got.items() if isinstance(r, BaseException)}
    assert not failures, failures
    truth = [r for r in sb.truth().carecloud_point_history.to_pylist()
             if r["point_history_record_time"] and FROM <= r["point_history_record_time"] <= TO]
    for customer_id in ids:
        want = Counter(_key(r) for r in truth if r["customer_id"] == customer_id)
        assert Counter(_key(r) for r in got[customer_id]) == want, customer_id
    assert sum(len(v) for v in got.values()) > 500
    assert 1 < peak <= 4, peak
    assert stats.retries > 10 and stats.http_429 > 0 and stats.logins >= 2, stats  # the faults really happened
    api.close()


def test_a_failed_customer_is_reported_and_the_others_load(sandbox_factory) -> None:
    sb = sandbox_factory(customers=10, now=NOW)
    ids = sb.customer_ids("carecloud")
    api = _api(sb, HttpStats())
    items = ids[:3] + ["no-such-customer"] + ids[3:]
    got = dict(run_multiplexed(items, lambda c: api.fetch_steps(c, FROM, TO), concurrency=3))
    assert isinstance(got["no-such-customer"], CustomerFailed) and got["no-such-customer"].code == "not_found"
    blocking = {c: api.fetch(c, FROM, TO) for c in ids}   # (records, fetch attempts)
    assert {c: got[c] for c in ids} == blocking
    api.close()


def test_closing_early_abandons_transfers_cleanly(sandbox_factory) -> None:
    sb = sandbox_factory(customers=20, now=NOW, latency_ms=50)
    ids = sb.customer_ids("carecloud")
    api = _api(sb, HttpStats())
    it = run_multiplexed(ids, lambda c: api.fetch_steps(c, FROM, TO), concurrency=5)
    first = next(it)
    assert first[0] in ids and not isinstance(first[1], BaseException)
    it.close()  # the four transfers still in flight are dropped, their handles closed
    # the blocking client still works afterwards
    assert api.fetch(ids[0], FROM, TO) == dict(run_multiplexed(ids[:1], lambda c: api.fetch_steps(c, FROM, TO),
                                                               concurrency=1))[ids[0]]
    api.close()
