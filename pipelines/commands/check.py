"""`loyalty-etl check`: warehouse-wide data checks that need no API (read-only): today, that every value a
CareCloud record's `extended_data` carries is in its flattened column (`pipelines.carecloud.audit`)."""

from __future__ import annotations

import argparse
import json
import sys

HELP = "check the warehouse: every extended_data value sent is in its flattened column (read-only)"
EXIT_LOST = 1
EXIT_MISSING = 2
EXIT_BUSY = 75      # EX_TEMPFAIL, as `status`: a load holds the warehouse, retry shortly

EPILOG = """\
For every row of loyalty_raw.carecloud_point_history whose extended_data_raw is a JSON object, every non-null
value is looked for in its extended_data__<key> column (keys named the way the pipeline names them: dlt's
snake_case, nested objects joined with __) and every non-empty list in its child table. A null beside a value the
column's type cannot hold (e.g. a word in a double column) counts as not loadable: the load recorded it as
type_mismatch in sync_issues. Anything else counts as lost; the raw JSON still holds it.

Exit codes: 0 nothing lost, 1 values lost, 2 no warehouse yet (or a lake catalog that cannot be reached),
75 a load holds the embedded file (retry shortly). A lake is read at its last committed snapshot, beside a load.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help=HELP, description=HELP + ".", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=20, metavar="N",
                   help="how many lost values to list (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from pipelines.carecloud.audit import check_flattening
    from pipelines.config import ConfigError
    from pipelines.errors import WarehouseBusy, WarehouseMissing, WarehouseUnavailable
    from pipelines.logs import redact
    from pipelines.warehouse import configured_warehouse

    try:
        warehouse = configured_warehouse()
        con = warehouse.connect(read_only=True)
    except WarehouseMissing:
        print(f"no warehouse at {warehouse.describe()} yet: run `loyalty-etl run` (or `loyalty-etl demo`) first",
              file=sys.stderr)
        return EXIT_MISSING
    except WarehouseBusy:
        print(f"a load is running on {warehouse.describe()} (it holds the file); retry shortly", file=sys.stderr)
        return EXIT_BUSY
    except (ConfigError, WarehouseUnavailable) as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return EXIT_MISSING
    try:
        result = check_flattening(con, examples=args.examples)
    finally:
        con.close()
    if args.json:
        print(json.dumps(result.to_dict(), default=str, ensure_ascii=False, indent=2))
    else:
        print(f"extended_data flattening: {result.rows:,} rows, {result.values:,} values checked, "
              f"{result.lost:,} lost, {result.not_loadable:,} not loadable as the column's type "
              f"(recorded as type_mismatch)")
        for column, n in sorted(result.lost_by_column.items()):
            print(f"  lost in {column}: {n:,}")
        for ex in result.examples:
            print(f"  e.g. record_key={ex['record_key']} key={ex['key']} value={ex['value']!r} -> {ex['column']}")
    return 0 if result.ok else EXIT_LOST
