"""`loyalty-etl backfill --since --until [--chunk 7d] [--source ...]`: load history in chunks, resumable, without
moving the nightly windows. The work is in `pipelines/backfill.py`."""

from __future__ import annotations

import argparse

from pipelines.commands._common import (
    add_customers_option, add_no_models_option, add_source_option, add_until_option, chosen_sources, fail, load,
)

HELP = "load a history range in chunks (resumable after a crash; the nightly window state is left as it was)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "backfill", help=HELP,
        description=HELP + ".\n\nRerun the same command after a crash or with failed customers: chunks already "
        "loaded are skipped (recorded in loyalty_raw._backfill_progress), and only the failed customers of a chunk "
        "are retried. Instants are ISO 8601; without an offset they are UTC.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--since", required=True, help="start of the history to load (inclusive), e.g. 2024-01-01")
    add_until_option(p, "end (exclusive), e.g. 2026-01-01T00:00:00+00:00", required=True)
    p.add_argument("--chunk", default="7d", help="chunk length: 7d, 1w, 12h, ... (default 7d)")
    add_source_option(p, "limit to one source (repeatable; default both)", repeatable=True)
    add_customers_option(p, "CSV with a customer_id column instead of each source's configured list")
    add_no_models_option(p, "do not rebuild the dbt marts afterwards")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from pipelines.alerts import notify
    from pipelines.backfill import backfill
    from pipelines.config import ConfigError, parse_duration
    from pipelines.errors import WarehouseUnavailable
    from pipelines.lock import RunLocked
    from pipelines.report import render_summary

    try:
        settings, (since, until) = load(since=args.since, until=args.until)
        chunk = parse_duration(args.chunk)
        report = backfill(settings, chosen_sources(args.source), since, until, chunk, models=not args.no_models,
                          customers_file=args.customers)
    except (ConfigError, ValueError, RunLocked, WarehouseUnavailable) as exc:
        return fail(exc)
    print(render_summary(report))
    notify(settings, report)
    return report.exit_code
