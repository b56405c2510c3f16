"""`loyalty-etl run`: one incremental run of the pipeline, then the SQL models."""

from __future__ import annotations

import argparse

HELP = "load what changed since the last run (both sources by default), then build the marts"

DESCRIPTION = """\
Load what changed for every customer since the last successful run into the DuckDB warehouse, then build the
dbt marts.

Each customer is fetched for the window [its last successful end - lookback, end), where end is --until or now
minus the safety lag; a customer new to the pipeline starts at initial_start; a customer that failed resumes from
its own last success. Re-running any window is safe: loads merge on stable keys.

Settings: .dlt/config.toml, secrets in .dlt/secrets.toml or environment variables
(SOURCES__CARECLOUD__CREDENTIALS__PASSWORD, DESTINATION__DUCKDB__CREDENTIALS, ...).
"""

EPILOG = """\
exit codes:
  0  all customers done
  2  finished, but some customers failed (listed; recorded in loyalty_raw.sync_issues; retried next run)
  1  the run failed (nothing committed for the failed part; see the error line)

examples:
  loyalty-etl run                                   # nightly run, both sources, then dbt build
  loyalty-etl run --source carecloud --no-models
  loyalty-etl run --customers vip.csv --until 2026-11-21T00:00:00Z
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("run", help=HELP, description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", choices=["carecloud", "capillary", "all"], default="all",
                   help="which API to load (default: all)")
    p.add_argument("--customers", metavar="FILE",
                   help="CSV with a customer_id column to use instead of the configured list of each source")
    p.add_argument("--until", metavar="INSTANT",
                   help="end of this run's window, ISO 8601 (default: now minus the safety lag); no offset = UTC")
    p.add_argument("--no-models", action="store_true", help="load only; do not run dbt afterwards")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    import sys

    from pipelines.config import ConfigError, load_settings, parse_instant
    from pipelines.report import EXIT_FAILED

    try:
        settings = load_settings()
        until = parse_instant(args.until, "--until") if args.until else None
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    from pipelines.runner import SOURCES, run

    sources = list(SOURCES) if args.source == "all" else [args.source]
    report = run(settings, sources, customers_file=args.customers, until=until, models=not args.no_models)
    return report.exit_code
