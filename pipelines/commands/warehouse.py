"""`loyalty-etl warehouse`: the warehouse itself. `migrate --to ducklake` moves the embedded file into the lake
(`pipelines/migrate.py`); `info` says which warehouse is configured and how analysts attach it read-only."""

from __future__ import annotations

import argparse
import sys
from typing import Any

HELP = "the warehouse itself: move the embedded file into a DuckLake, show how to attach it"

MIGRATE_HELP = "copy the embedded DuckDB file into the DuckLake, then build the marts there"
MIGRATE_DESCRIPTION = """\
Copy the embedded warehouse (the DuckDB file of [destination.duckdb] credentials) into the DuckLake of
[destination.ducklake.credentials] (catalog: a PostgreSQL URL; storage: a directory or s3://...), so that runs go on
from there where the file stopped.

What is copied: the whole raw schema loyalty_raw (the loaded tables, dlt's _dlt_loads/_dlt_version/
_dlt_pipeline_state, the bookkeeping _customer_sync_state/runs/sync_issues/discovery state), in ONE lake
transaction: stopped halfway, the lake holds nothing of it. Then the marts are built on the lake with dbt (as
`loyalty-etl models` does), not copied. Afterwards every table is checked (rows and a checksum of every row, file
against lake) and printed, and each mart is compared with the file's.

The file is attached read-only and left as it was. Both run locks (the file's and the lake's) are held while
copying, so no run writes either side meanwhile. A lake that already holds tables is refused unless --force.
"""

MIGRATE_EPILOG = """\
then switch:  [loyalty] warehouse = "ducklake" in .dlt/config.toml (or LOYALTY__WAREHOUSE=ducklake); the next
`loyalty-etl run` loads only what is new. docs/warehouse.md: when to move, settings, S3, backups, attaching.

exit codes: 0 copied and every table matches, 1 refused or failed (nothing copied) or a table differs.
"""

INFO_HELP = "which warehouse is configured, and how to attach it read-only (DuckDB CLI, Python, BI tools)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("warehouse", help=HELP, description=HELP + ".")
    actions = p.add_subparsers(dest="action", metavar="ACTION", title="actions")
    m = actions.add_parser("migrate", help=MIGRATE_HELP, description=MIGRATE_DESCRIPTION, epilog=MIGRATE_EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    m.add_argument("--to", required=True, choices=["ducklake"],
                   help="the kind of warehouse to move to (only ducklake: the file is the default kind)")
    m.add_argument("--force", action="store_true",
                   help="replace whatever the lake already holds (default: refuse a lake that holds tables)")
    m.add_argument("--no-models", action="store_true",
                   help="copy the raw schema only; build the marts later with `loyalty-etl models`")
    m.set_defaults(func=handle_migrate)
    i = actions.add_parser("info", help=INFO_HELP, description=INFO_HELP + ".")
    i.set_defaults(func=handle_info)
    p.set_defaults(func=lambda args: (p.print_help(), 1)[1])


def _lake_of(settings: Any) -> Any:
    """The lake of `[destination.ducklake.credentials]`, whatever `[loyalty] warehouse` says now (a migration
    usually runs before the switch)."""
    import copy

    from pipelines.warehouse import open_warehouse

    as_lake = copy.copy(settings)
    as_lake.warehouse = "ducklake"
    return open_warehouse(as_lake)


def handle_migrate(args: argparse.Namespace) -> int:
    import duckdb

    from pipelines import migrate
    from pipelines.commands._common import fail
    from pipelines.config import ConfigError, load_settings
    from pipelines.errors import WarehouseUnavailable
    from pipelines.lock import RunLocked
    from pipelines.logs import get_logger
    from pipelines.warehouse import FileWarehouse

    log = get_logger("migrate")
    try:
        settings = load_settings()
        file = FileWarehouse(settings.warehouse_file)
        lake = _lake_of(settings)
    except ConfigError as exc:
        return fail(exc)
    if not file.exists():
        return fail(migrate.MigrationRefused(
            f"no warehouse file at {file.describe()} ([destination.duckdb] credentials): nothing to migrate"))
    print(f"from: {file.describe()}\nto:   {lake.describe()}")
    try:
        # the lake's "merge" lock too: `models` takes it (not "run"), and no build may MERGE into the marts meanwhile
        with file.lock("run"), lake.lock("run"), lake.lock("merge"):
            conn = lake.connect()
            try:
                result = migrate.migrate_raw(
                    conn, str(file.path), source=file.describe(), target=lake.describe(), force=args.force,
                    reopen=lambda: lake.connect(read_only=True), progress=lambda line: log.info("%s", line))
            finally:
                conn.close()
            print(f"\ncopied {len(result.tables)} tables of loyalty_raw, {result.rows:,} rows, in {result.copy_s:.1f} s"
                  f" (checked in {result.verify_s:.1f} s):\n")
            print(migrate.render(result))
            if result.replaced:
                print(f"\nreplaced what the lake held (--force): {', '.join(result.replaced)}")
            if result.left_out:
                print(f"\nleft out (not the pipeline's, not dbt's; copy them yourself if needed): "
                      f"{', '.join(result.left_out)}")
            if not result.ok:
                bad = [t.name for t in result.tables if not t.ok]
                print(f"\nerror: the lake differs from the file in {', '.join(bad)}", file=sys.stderr)
                return 1
            models_rc = 0
            if not args.no_models:
                models_rc = _build_marts(lake, str(file.path), args.log_format)
    except (RunLocked, migrate.MigrationRefused, WarehouseUnavailable, ConfigError) as exc:
        return fail(exc)
    except duckdb.Error as exc:  # e.g. the file held by a writer that does not take the run lock (a manual dbt)
        return fail(RuntimeError(f"migration failed: {exc} (a failure while copying leaves the lake as it was: "
                                  "the copy is one transaction)"))
    if settings.warehouse != "ducklake":
        print('\nnext: set [loyalty] warehouse = "ducklake" in .dlt/config.toml (or LOYALTY__WAREHOUSE=ducklake); '
              "the next `loyalty-etl run` goes on where the file stopped.")
    return 0 if models_rc == 0 else 1


def _build_marts(lake: Any, file: str, log_format: str) -> int:
    """dbt build on the lake (what `loyalty-etl models` runs), then each mart compared with the file's."""
    from pipelines import migrate
    from pipelines.models import run_dbt

    print("\nbuilding the marts on the lake (dbt build) ...")
    rc = run_dbt(lake, ["build"], log_format=log_format)
    conn = lake.connect(read_only=True)
    try:
        migrate.attach_file(conn, file)
        marts = migrate.compare_marts(conn, conn.execute("SELECT current_database()").fetchone()[0])
    finally:
        conn.close()
    if marts:
        width = max(len(m[0]) for m in marts)
        print(f"\n{'mart':<{width}} {'file rows':>12} {'lake rows':>12}  contents")
        for name, rows_file, rows_lake, same in marts:
            print(f"{name:<{width}} {rows_file:>12,} {rows_lake:>12,}  {'same' if same else 'differs'}")
        if any(not same for *_, same in marts):
            print("(a mart that reads today's date, agg_points_expiring, differs when the file's marts were built "
                  "on another day)")
    if rc != 0:
        print("error: dbt build failed on the lake (above); the raw tables are copied: fix it and run "
              "`loyalty-etl models` with [loyalty] warehouse = \"ducklake\"", file=sys.stderr)
    return rc


def handle_info(args: argparse.Namespace) -> int:
    from pipelines.commands._common import fail
    from pipelines.config import ConfigError
    from pipelines.warehouse import configured_warehouse

    try:
        wh = configured_warehouse()
    except ConfigError as exc:
        return fail(exc)
    print(attach_instructions(wh))
    return 0


def attach_instructions(wh: Any, password_hint: str = "PGPASSWORD=...") -> str:
    """How to read warehouse `wh` read-only from the DuckDB CLI and Python (no password: `password_hint` says
    where it comes from)."""
    if wh.kind == "duckdb":
        return (f"warehouse: the embedded DuckDB file {wh.describe()}\n\n"
                f"DuckDB CLI:  duckdb -readonly {wh.describe()}\n"
                f"Python:      duckdb.connect({str(wh.describe())!r}, read_only=True)\n"
                "BI tools:    a DuckDB connection to that file, read-only (docs/warehouse.md)")
    c = wh.config
    catalog = c.catalog
    port = f":{catalog.port}" if catalog.port else ""
    user = f"{catalog.username}@" if catalog.username else ""
    url = f"postgresql://{user}{catalog.host or 'localhost'}{port}/{catalog.database}"
    attach = f"ATTACH 'ducklake:postgres:{url}' AS {c.name} (READ_ONLY, METADATA_SCHEMA '{c.metadata_schema}')"
    return (f"warehouse: {wh.describe()}\n\n"
            f"DuckDB CLI ({password_hint} duckdb):\n"
            f"  INSTALL ducklake; INSTALL postgres;\n  {attach};\n  USE {c.name};\n"
            f"  FROM loyalty.fct_points_ledger LIMIT 5;\n\n"
            "Python (the password from PGPASSWORD in the environment):\n"
            f"  con = duckdb.connect(); con.execute(\"LOAD ducklake; LOAD postgres\")\n"
            f"  con.execute(\"{attach}\"); con.execute(\"USE {c.name}\")\n\n"
            "BI tools: an in-memory DuckDB with those ATTACH and USE lines as init SQL (docs/warehouse.md)")
