"""Shared test utilities: running the real CLI, a quick throughput figure. The comparison of a loaded warehouse
with the sandbox's ground truth is `tests/chaos/compare.py` (one for all suites)."""
