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

The warehouse is the pipeline's (DESTINATION__DUCKDB__CREDENTIALS or [destination.duckdb] credentials in
.dlt/config.toml); nothing else needs configuring. Exit code 0 when every model and test passed, 1 otherwise.
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
    from pipelines.config import ConfigError, warehouse_path
    from pipelines.logs import get_logger
    from pipelines.models import SQL_DIR, last_results, run_dbt

    log = get_logger("models")
    args.docs = args.docs or args.serve
    try:
        warehouse = warehouse_path()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not warehouse.exists():
        print(f"error: warehouse {warehouse} does not exist yet; load it first with `loyalty-etl run` "
              "(or `loyalty-etl demo`)", file=sys.stderr)
        return 1

    build = ["build"]
    if args.select:
        build += ["--select", *args.select]
    if args.full_refresh:
        build.append("--full-refresh")

    import duckdb

    from pipelines.lock import RunLock, RunLocked, connect_writer

    # The same single-writer rules as a load: refuse while a run holds the warehouse, and wait out a reader
    # (dashboard, status) that has the file open for a moment instead of failing inside dbt.
    try:
        lock = RunLock(warehouse).acquire()
    except RunLocked as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        try:
            holder = connect_writer(warehouse)
        except duckdb.Error as exc:
            print(f"error: cannot open {warehouse}: {exc}", file=sys.stderr)
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
            holder.close()
    finally:
        lock.release()

    if args.docs:
        if docs_rc != 0:
            return 1
        target = SQL_DIR / "target"
        print(f"\ndbt docs written to {target}/index.html. Browse them with either:\n"
              f"  loyalty-etl models --docs --serve          (http://127.0.0.1:{args.port})\n"
              f"  python -m http.server {args.port} --bind 127.0.0.1 --directory {target}\n"
              f"  LOYALTY_WAREHOUSE_PATH={warehouse} dbt docs serve --project-dir sql --profiles-dir sql")
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
