"""`loyalty-etl backfill --since --until [--chunk 7d] [--source ...]`: load history in chunks, resumable, without
moving the nightly windows. The work is in `pipelines/backfill.py`."""

from __future__ import annotations

import argparse
import sys

HELP = "load a history range in chunks (resumable after a crash; the nightly window state is left as it was)"
SOURCES = ["carecloud", "capillary"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "backfill", help=HELP,
        description=HELP + ".\n\nRerun the same command after a crash or with failed customers: chunks already "
        "loaded are skipped (recorded in loyalty_raw._backfill_progress), and only the failed customers of a chunk "
        "are retried. Instants are ISO 8601; without an offset they are UTC.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--since", required=True, help="start of the history to load (inclusive), e.g. 2024-01-01")
    p.add_argument("--until", required=True, help="end (exclusive), e.g. 2026-01-01T00:00:00+00:00")
    p.add_argument("--chunk", default="7d", help="chunk length: 7d, 1w, 12h, ... (default 7d)")
    p.add_argument("--source", action="append", choices=SOURCES,
                   help="limit to one source (repeatable; default both)")
    p.add_argument("--customers", metavar="FILE",
                   help="CSV with a customer_id column instead of each source's configured list")
    p.add_argument("--no-models", action="store_true", help="do not rebuild the dbt marts afterwards")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from pipelines.alerts import notify
    from pipelines.backfill import backfill
    from pipelines.config import ConfigError, load_settings, parse_duration, parse_instant
    from pipelines.lock import RunLocked
    from pipelines.logs import redact
    from pipelines.report import EXIT_FAILED, render_summary

    try:
        settings = load_settings()
        since = parse_instant(args.since, "--since")
        until = parse_instant(args.until, "--until")
        chunk = parse_duration(args.chunk)
        report = backfill(settings, args.source or SOURCES, since, until, chunk, models=not args.no_models,
                          customers_file=args.customers)
    except (ConfigError, ValueError, RunLocked) as exc:
        print(f"loyalty-etl backfill: {redact(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    print(render_summary(report))
    notify(settings, report)
    return report.exit_code
