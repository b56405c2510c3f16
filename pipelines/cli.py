"""`loyalty-etl`: the command line. Sub-commands live in `pipelines/commands/`, one module each.

Heavy imports (dlt, duckdb, dbt) happen inside the command handlers so `--help` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import Sequence

from pipelines import __version__, commands

# The order sub-commands are listed in `--help`; modules not listed here come after, alphabetically.
ORDER = ["demo", "run", "merge", "backfill", "models", "status", "events", "sandbox", "dashboard"]

DESCRIPTION = """\
Load CareCloud point history and Capillary points transfers into a DuckDB warehouse, incrementally,
and build the dbt marts analysts and dashboards read.

First time here? `loyalty-etl demo` starts the local sandbox API, loads both sources into
warehouse/loyalty_warehouse.duckdb and builds the marts. Settings come from .dlt/config.toml,
secrets from .dlt/secrets.toml or environment variables (SOURCES__CARECLOUD__CREDENTIALS__PASSWORD, ...).
"""

EPILOG = """\
exit codes: 0 all customers done, 2 finished but some customers failed (listed), 1 the run failed.
"""


def _command_modules() -> list[str]:
    found = [m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_")]
    return [n for n in ORDER if n in found] + sorted(n for n in found if n not in ORDER)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loyalty-etl",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"loyalty-etl {__version__}")
    parser.add_argument(
        "--log-format", choices=["text", "json"], default="text",
        help="text: one readable line per event (default); json: one JSON object per line for log shippers",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name in _command_modules():
        importlib.import_module(f"pipelines.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    from pipelines.logs import setup_logging

    setup_logging(args.log_format, args.verbose)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
