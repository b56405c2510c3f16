"""Helpers for the reliability suite (tests/test_reliability*.py): drive the real `loyalty-etl` CLI in a
subprocess against the sandbox, kill it, read the warehouse, and compare it with the sandbox's ground truth."""
