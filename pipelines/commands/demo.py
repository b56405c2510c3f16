"""`loyalty-etl demo`: the README's main job. Starts the local sandbox API, points both sources at it, runs the
whole pipeline and the dbt models into the configured warehouse, then prints what was loaded and how to query it."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

HELP = "start the sandbox API, load every source it serves and build the marts (the README's first command)"

EXAMPLE_QUERY = """\
SELECT movement_type, count(*) AS movements, sum(points) AS points
FROM loyalty.fct_points_ledger GROUP BY 1 ORDER BY 1"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help=HELP, description=HELP + ".\n\nUses the sandbox's own credentials and customer files; your "
        ".dlt/secrets.toml is not read for the sources. The warehouse is the configured one "
        "(default warehouse/loyalty_warehouse.duckdb).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--customers", type=int, default=1000, help="sandbox customers per source (default 1000)")
    p.add_argument("--seed", type=int, default=42, help="sandbox data seed (default 42)")
    p.add_argument("--no-models", action="store_true", help="skip the dbt marts")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from pipelines.config import warehouse_path
    from pipelines.sandbox import Sandbox, SandboxConfig

    warehouse = warehouse_path()
    warehouse.parent.mkdir(parents=True, exist_ok=True)
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

        report = run(load_settings(), sb.sources, models=not args.no_models, command="demo")
    if report.exit_code != 1:
        print_loaded(warehouse, models=not args.no_models)
    return report.exit_code


def print_loaded(warehouse: Path, models: bool) -> None:
    import duckdb

    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        rows = con.execute(
            "SELECT schema_name, table_name, estimated_size FROM duckdb_tables() "
            "WHERE schema_name IN ('loyalty_raw', 'loyalty') AND NOT table_name LIKE '\\_%' ESCAPE '\\' "
            "ORDER BY 1, 2"
        ).fetchall()
        print(f"\nwarehouse: {warehouse}")
        width = max((len(s) + len(t) + 1 for s, t, _ in rows), default=0)
        for schema, table, _ in rows:
            n = con.execute(f'SELECT count(*) FROM "{schema}"."{table}"').fetchone()[0]
            print(f"  {schema + '.' + table:<{width}} {n:>10,} rows")
        if models:
            print(f"\nexample query:\n{EXAMPLE_QUERY}\n")
            for row in con.execute(EXAMPLE_QUERY).fetchall():
                print(f"  {row[0]:<14} {row[1]:>10,} {row[2]:>16,.2f}")
    finally:
        con.close()
    print(f"\nquery it yourself:  .venv/bin/python -c \"import duckdb; print(duckdb.connect('{warehouse}', "
          "read_only=True).sql('FROM loyalty.dim_customers LIMIT 5'))\"")
    print("or open the dashboard: make dashboard")
