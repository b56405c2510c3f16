"""`loyalty-etl models`: build the dbt marts (sql/) on the configured warehouse, optionally with their docs."""

from __future__ import annotations

import argparse
import sys

HELP = "build the dbt marts (seed, models and tests) on the configured warehouse"

EXAMPLES = """\
examples:
  loyalty-etl models                                  dbt build: seed, staging views, marts, all tests
  loyalty-etl models --select fct_points_ledger+      one model and everything downstream of it
  loyalty-etl models --full-refresh                   rebuild the incremental marts from scratch
  loyalty-etl models --docs                           also generate the dbt docs site into sql/target
  loyalty-etl models --docs --serve                   ... and serve it on http://127.0.0.1:8080

The warehouse is the pipeline's ([loyalty] warehouse: the DuckDB file of [destination.duckdb] credentials, or the
DuckLake of [destination.ducklake.credentials]); nothing else needs configuring. On a lake, readers keep reading
the marts' last committed snapshot while this builds. Exit code 0 when every model and test passed, 1 otherwise.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help=HELP, description=HELP + ".", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-s", "--select", nargs="+", metavar="SELECTOR",
                   help="dbt node selection (e.g. fct_points_ledger+, staging, dim_customers)")
    p.add_argument("--full-refresh", action="store_true", help="rebuild incremental models from scratch")
    p.add_argument("--docs", action="store_true", help="generate the dbt docs site (sql/target/index.html)")
    p.add_argument("--serve", action="store_true", help="generate the docs and serve them until Ctrl-C")
    p.add_argument("--port", type=int, default=8080, help="port for --serve (default %(default)s)")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from pipelines.config import ConfigError
    from pipelines.errors import WarehouseUnavailable
    from pipelines.lock import RunLocked
    from pipelines.logs import get_logger, redact
    from pipelines.models import SQL_DIR, last_results, run_dbt
    from pipelines.warehouse import configured_warehouse

    log = get_logger("models")
    args.docs = args.docs or args.serve
    try:
        warehouse = configured_warehouse()
        exists = warehouse.exists()
    except (ConfigError, WarehouseUnavailable) as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return 1
    if not exists:
        print(f"error: warehouse {warehouse.describe()} does not exist yet; load it first with `loyalty-etl run` "
              "(or `loyalty-etl demo`)", file=sys.stderr)
        return 1

    build = ["build"]
    if args.select:
        build += ["--select", *args.select]
    if args.full_refresh:
        build.append("--full-refresh")

    # The same single-writer rules as a load: refuse while a run holds the warehouse (the file: its one lock; the
    # lake: the "merge" lock its marts steps take, so two builds never MERGE into one mart at once).
    try:
        lock = warehouse.lock("merge").acquire()
    except (RunLocked, WarehouseUnavailable) as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return 1
    try:
        try:
            # The file: hold it as the writer for the whole build, waiting out a reader (dashboard, status) that has
            # it open for a moment instead of failing inside dbt; dbt shares this process's open file. The lake
            # needs no holder: dbt attaches it itself, beside any reader.
            holder = warehouse.connect() if warehouse.kind == "duckdb" else None
        except Exception as exc:  # noqa: BLE001 - duckdb.Error or WarehouseUnavailable: one line, no traceback
            print(f"error: cannot open {warehouse.describe()}: {redact(str(exc))}", file=sys.stderr)
            return 1
        try:
            rc = run_dbt(warehouse, build, log_format=args.log_format)
            # Freshness only warns (a sandbox or a paused schedule is not an error): never changes the exit code.
            run_dbt(warehouse, ["source", "freshness"], quiet=True, log_format=args.log_format)
            for node in last_results():
                table = node.unique_id.split(".", 2)[-1]  # source.<project>.<source>.<table>: "carecloud.point_history"
                source = table.split(".")[0]
                if node.status == "warn":
                    log.warning("raw table %s is stale: its newest record is older than the warn_after of "
                                "sql/models/staging/%s/_%s__sources.yml", table, source, source)
                elif node.status != "pass":
                    log.warning("raw table %s freshness could not be checked: %s", table, node.message)
            docs_rc = run_dbt(warehouse, ["docs", "generate"], log_format=args.log_format) if args.docs else 0
        finally:
            if holder is not None:
                holder.close()
    finally:
        lock.release()

    if args.docs:
        if docs_rc != 0:
            return 1
        target = SQL_DIR / "target"
        print(f"\ndbt docs written to {target}/index.html. Browse them with either:\n"
              f"  loyalty-etl models --docs --serve          (http://127.0.0.1:{args.port})\n"
              f"  python -m http.server {args.port} --bind 127.0.0.1 --directory {target}")
        if warehouse.kind == "duckdb":
            print(f"  LOYALTY_WAREHOUSE_PATH={warehouse.describe()} dbt docs serve --project-dir sql --profiles-dir sql")
        if args.serve:
            _serve(target, args.port)
    return 0 if rc == 0 else 1


def _serve(directory, port: int) -> None:
    import functools
    import http.server

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    with http.server.ThreadingHTTPServer(("127.0.0.1", port), handler) as server:
        print(f"serving dbt docs on http://127.0.0.1:{port} (Ctrl-C to stop)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
