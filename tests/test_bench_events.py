"""bench/events.py measures the real receiver: a small run stores every event it was acknowledged for, with both
commit modes, and reports figures the scenario's table reads."""

from __future__ import annotations

from bench.events import run_once


def test_receiver_bench_run_stores_every_acknowledged_event():
    for group in (True, False):
        fig = run_once(group, concurrency=3, events=60, warmup=5)
        assert fig["all_stored"] and fig["stored"] == 65 and fig["non_200"] == 0
        assert fig["events_per_s"] > 0 and 0 < fig["p50_ms"] <= fig["p99_ms"] <= fig["max_ms"]
