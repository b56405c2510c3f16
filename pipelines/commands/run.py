"""`loyalty-etl run`: one incremental run of the pipeline, then the SQL models."""

from __future__ import annotations

import argparse

from pipelines.commands._common import (
    add_customers_option, add_no_models_option, add_source_option, add_until_option, chosen_sources, fail, load,
)

HELP = "load what changed since the last run (both sources by default), then build the marts"

DESCRIPTION = """\
Load what changed for every customer since the last successful run into the DuckDB warehouse, then build the
dbt marts.

Each customer is fetched for the window [its last successful end - lookback, end), where end is --until or now
minus the safety lag; a customer new to the pipeline starts at initial_start; a customer that failed resumes from
its own last success. Re-running any window is safe: loads merge on stable keys.

With selection = "changed" in a source's section, a run first asks the vendor which customers changed (CareCloud:
GET /points by creation time, GET /purchases by payment time, known point records expiring) and loads those, the
new ones, the ones that failed last time and a rolling sweep of the rest (each customer at least once every
sweep_days nights); --all loads everyone. customers = "api" takes CareCloud's customer list from GET /customers.

With --shard K/N the run loads only shard K of N of each source's customers (a stable hash of the customer id),
into its own raw dataset, with its own dlt pipeline and its own change-discovery window, and builds no marts:
shards may run at the same time on several machines (DuckLake warehouse) or one after another on one machine;
`loyalty-etl merge` then moves every shard's rows into loyalty_raw in one step and builds the marts (docs/shards.md).

Settings: .dlt/config.toml, secrets in .dlt/secrets.toml or environment variables
(SOURCES__CARECLOUD__CREDENTIALS__PASSWORD, DESTINATION__DUCKDB__CREDENTIALS, ...).
"""

EPILOG = """\
exit codes:
  0  all customers done
  2  finished, but some customers failed (listed; recorded in loyalty_raw.sync_issues; retried next run), or change
     discovery / the customer list could not be read completely (that window is read again next run)
  1  the run failed (nothing committed for the failed part; see the error line)

examples:
  loyalty-etl run                                   # nightly run, both sources, then dbt build
  loyalty-etl run --source carecloud --no-models
  loyalty-etl run --customers vip.csv --until 2026-11-21T00:00:00Z
  loyalty-etl run --source carecloud --shard 2/4    # shard 2 of 4 (Airflow: one task per source and shard) ...
  loyalty-etl merge                                 # ... then, once all shards landed: into loyalty_raw, dbt build
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("run", help=HELP, description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_option(p, "which API to load (default: all)")
    add_customers_option(p, "CSV with a customer_id column to use instead of the configured list of each source")
    add_until_option(p, "end of this run's window, ISO 8601 (default: now minus the safety lag); no offset = UTC",
                     metavar="INSTANT")
    add_no_models_option(p, "load only; do not run dbt afterwards")
    p.add_argument("--shard", metavar="K/N",
                   help="load only shard K of N (1-based) of the customers, into the shard's own dataset; implies "
                        "--no-models (`loyalty-etl merge` builds the marts after all shards)")
    p.add_argument("--all", action="store_true", dest="full",
                   help="load every listed customer tonight, even with selection = \"changed\" (a full pass)")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from pipelines.config import ConfigError

    try:
        settings, (until,) = load(until=args.until or None)  # an empty --until: the default
    except ConfigError as exc:
        return fail(exc)
    from pipelines.runner import run
    from pipelines.shards import Shard, ShardSpecError

    sources = chosen_sources(args.source)
    try:
        shard = Shard.parse(args.shard, sources) if args.shard else None
    except ShardSpecError as exc:
        return fail(exc)
    report = run(settings, sources, customers_file=args.customers, until=until,
                 models=not args.no_models, full=args.full, shard=shard)
    return report.exit_code
