"""Capillary event notifications: the webhook receiver (`loyalty-etl events serve`) and its durable event store.

The receiver never opens the DuckDB warehouse: it writes to an append-only SQLite file beside it, so receiving never
waits for a nightly run and a nightly run never waits for receiving. See docs/operations.md, "Capillary events".
"""
