"""`loyalty-etl demo`: the README's main job. Starts the local sandbox API, points both sources at it, runs the
whole pipeline and the dbt models into the configured warehouse, then prints what was loaded and how to query it.

`--lake` (`make demo-lake`) does the same on a DuckLake whose catalog is a PostgreSQL of its own
(`pipelines/localpg.py`), everything under `<warehouse dir>/demo-lake/`. The server is left running afterwards, so
analysts can attach the lake as printed; `--stop-lake` (`make demo-lake-stop`) stops it."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

HELP = "start the sandbox API, load every source it serves and build the marts (the README's first command)"

EXAMPLE_QUERY = """\
SELECT movement_type, count(*) AS movements, sum(points) AS points
FROM loyalty.fct_points_ledger GROUP BY 1 ORDER BY 1"""

LAKE_DIR = "demo-lake"
"""Under the warehouse directory: `postgres/` (the server's data and its password) and `files/` (the lake's data)."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help=HELP, description=HELP + ".\n\nUses the sandbox's own credentials and customer files; your "
        ".dlt/secrets.toml is not read for the sources. The warehouse is the configured one "
        "(default warehouse/loyalty_warehouse.duckdb); with --lake a DuckLake on a PostgreSQL the demo starts "
        "itself (warehouse/demo-lake/), left running so you can attach it; --stop-lake stops it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--customers", type=int, default=1000, help="sandbox customers per source (default 1000)")
    p.add_argument("--seed", type=int, default=42, help="sandbox data seed (default 42)")
    p.add_argument("--no-models", action="store_true", help="skip the dbt marts")
    lake = p.add_mutually_exclusive_group()
    lake.add_argument("--lake", action="store_true",
                      help="load a DuckLake instead of the file: starts (or reuses) a local PostgreSQL for its "
                           "catalog under warehouse/demo-lake/ and leaves it running (needs initdb and pg_ctl)")
    lake.add_argument("--stop-lake", action="store_true", help="stop the PostgreSQL that --lake started, and exit")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from pipelines.config import warehouse_path
    from pipelines.sandbox import Sandbox, SandboxConfig

    warehouse = warehouse_path()
    if args.stop_lake:
        return stop_lake(warehouse.parent / LAKE_DIR)
    warehouse.parent.mkdir(parents=True, exist_ok=True)
    server = None
    if args.lake:
        server = start_lake(warehouse.parent / LAKE_DIR)
        if server is None:
            return 1
    with Sandbox(SandboxConfig(customers=args.customers, seed=args.seed)) as sb:
        sb.start()
        print(f"sandbox API on {sb.url} with {args.customers:,} customers per source (seed {args.seed})")
        # the dlt way: environment variables override .dlt/ files, pointing both sources at the sandbox
        os.environ.update(sb.env(warehouse))
        # the sandbox is in-process and fast: no need to throttle it like a production API
        for source in sb.sources:
            os.environ.setdefault(f"SOURCES__{source.upper()}__RATE_LIMIT", "1000")
        from pipelines.config import load_settings
        from pipelines.runner import run

        settings = load_settings()
        report = run(settings, sb.sources, models=not args.no_models, command="demo")
    if report.exit_code != 1:
        from pipelines.warehouse import open_warehouse

        print_loaded(open_warehouse(settings), models=report.models == "ok", server=server)
    return report.exit_code


def start_lake(directory: Path) -> Any:
    """The demo's PostgreSQL started (or joined, when a previous demo left it running), and the environment
    pointed at a lake on it: `[loyalty] warehouse = "ducklake"` and `[destination.ducklake.credentials]`."""
    import sys

    from pipelines.localpg import LocalPostgres, LocalPostgresError, unavailable_reason
    from pipelines.logs import register_secret

    reason = unavailable_reason()
    if reason:
        print(f"error: the lake demo needs a local PostgreSQL server: {reason}", file=sys.stderr)
        return None
    try:
        server = LocalPostgres(directory / "postgres").start()
    except LocalPostgresError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    register_secret(server.password)
    os.environ.update({
        "LOYALTY__WAREHOUSE": "ducklake",
        "DESTINATION__DUCKLAKE__CREDENTIALS__CATALOG": server.url,
        "DESTINATION__DUCKLAKE__CREDENTIALS__STORAGE": str((directory / "files").absolute()),
    })
    print(f"lake catalog: PostgreSQL {server.describe()}; lake files in {directory / 'files'}")
    return server


def stop_lake(directory: Path) -> int:
    from pipelines.localpg import LocalPostgres, LocalPostgresError

    if not (directory / "postgres").exists():
        print(f"no lake demo in {directory}: nothing to stop")
        return 0
    try:
        server = LocalPostgres(directory / "postgres")
        if not server.running():
            print(f"the lake demo's PostgreSQL ({directory / 'postgres'}) is not running")
            return 0
        server.stop()
    except LocalPostgresError as exc:
        import sys

        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"stopped the lake demo's PostgreSQL; its data stays in {directory} (`make clean` removes it, "
          "`make demo-lake` starts it again)")
    return 0


def print_loaded(wh: Any, models: bool, server: Any = None) -> None:
    from pipelines.commands.warehouse import attach_instructions

    con = wh.connect(read_only=True)
    try:
        catalog = con.execute("SELECT current_database()").fetchone()[0]
        rows = con.execute(
            "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = ? "
            "AND schema_name IN ('loyalty_raw', 'loyalty') AND NOT table_name LIKE '\\_%' ESCAPE '\\' "
            "ORDER BY 1, 2", [catalog]
        ).fetchall()
        print(f"\nwarehouse: {wh.describe()}")
        width = max((len(s) + len(t) + 1 for s, t in rows), default=0)
        for schema, table in rows:
            n = con.execute(f'SELECT count(*) FROM "{schema}"."{table}"').fetchone()[0]
            print(f"  {schema + '.' + table:<{width}} {n:>10,} rows")
        if models:
            print(f"\nexample query:\n{EXAMPLE_QUERY}\n")
            for row in con.execute(EXAMPLE_QUERY).fetchall():
                print(f"  {row[0]:<14} {row[1]:>10,} {row[2]:>16,.2f}")
    finally:
        con.close()
    if server is None:
        print(f"\nquery it yourself:  .venv/bin/python -c \"import duckdb; print(duckdb.connect('{wh.describe()}', "
              "read_only=True).sql('FROM loyalty.dim_customers LIMIT 5'))\"")
        print("or open the dashboard: make dashboard")
        return
    password_file = server.directory / "password"
    print(f"\nThe lake's PostgreSQL keeps running so you can attach it (read-only; the password is in "
          f"{password_file}):\n")
    print(attach_instructions(wh, password_hint=f"PGPASSWORD=$(cat {password_file})"))
    print(f"\nor the dashboard on it: LOYALTY__WAREHOUSE=ducklake DESTINATION__DUCKLAKE__CREDENTIALS__CATALOG="
          f"\"postgresql://{server.user}:$(cat {password_file})@{'127.0.0.1'}:{server.port}/{server.database}\" "
          f"DESTINATION__DUCKLAKE__CREDENTIALS__STORAGE={os.environ['DESTINATION__DUCKLAKE__CREDENTIALS__STORAGE']}"
          " make dashboard")
    print("stop the server: make demo-lake-stop   (make demo-lake again: a second, incremental night)")
