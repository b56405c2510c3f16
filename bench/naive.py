"""Variant (a), the naive baseline: dlt's own declarative `rest_api` source configured the obvious way.

What a competent user writes in an afternoon from the dlt docs: the customer list is a parent resource, each API
is a child resource resolved per customer, CareCloud pages with the offset paginator, everything else is a dlt
default (sequential extraction, row-by-row normalizer, INSERT loader files, append). The page size is the same
as the pipeline's (`count=1000`) so only the machinery differs, not the request count. The CareCloud bearer token
is obtained once up front because rest_api has no login-flow auth; the Capillary Basic password is MD5-hashed as
the API requires.

Run as a child of bench.run: `python -m bench.naive --env-json ENV.json --db FILE --result FILE`.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any, Iterator

import dlt
from dlt.sources.rest_api import rest_api_source

from bench.apis import capillary_basic, carecloud_token


def _customers(path: str) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [{"customer_id": row["customer_id"]} for row in csv.DictReader(fh) if row["customer_id"]]


def build_sources(env: dict[str, str]) -> list[Any]:
    cc_base = env["SOURCES__CARECLOUD__BASE_URL"]
    token = carecloud_token(env)

    cc_rows = _customers(env["SOURCES__CARECLOUD__CUSTOMERS"])
    cap_rows = _customers(env["SOURCES__CAPILLARY__CUSTOMERS"])

    @dlt.resource(name="carecloud_customers", selected=False)
    def carecloud_customers() -> Iterator[list[dict[str, str]]]:
        yield cc_rows

    @dlt.resource(name="capillary_customers", selected=False)
    def capillary_customers() -> Iterator[list[dict[str, str]]]:
        yield cap_rows

    carecloud = rest_api_source({
        "client": {"base_url": cc_base + "/", "auth": {"type": "bearer", "token": token}},
        "resources": [
            carecloud_customers,
            {
                "name": "carecloud_point_history",
                "endpoint": {
                    "path": "point-history",
                    "params": {"customer_id": "{resources.carecloud_customers.customer_id}"},
                    "data_selector": "data.point_history",
                    "paginator": {"type": "offset", "limit": 1000, "limit_param": "count",
                                  "offset_param": "offset", "total_path": "data.total_items"},
                },
            },
        ],
    }, name="carecloud")

    till, md5_password = capillary_basic(env)
    capillary = rest_api_source({
        "client": {"base_url": env["SOURCES__CAPILLARY__BASE_URL"] + "/",
                   "auth": {"type": "http_basic", "username": till,
                            "password": md5_password}},
        "resources": [
            capillary_customers,
            {
                "name": "capillary_points_transfers",
                "endpoint": {
                    "path": "v2/points/transfer",
                    "params": {
                        "source": "INSTORE",
                        "identifierName": env.get("SOURCES__CAPILLARY__IDENTIFIER_NAME", "id"),
                        "identifierValue": "{resources.capillary_customers.customer_id}",
                    },
                    "data_selector": "data",
                    "paginator": "single_page",
                },
                "include_from_parent": ["customer_id"],
            },
        ],
    }, name="capillary")
    return [carecloud, capillary]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--env-json", required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--result", required=True)
    ap.add_argument("--loader-file-format", default=None,
                    help="None = dlt's default for DuckDB (insert_values); 'parquet' = the one-knob variant")
    args = ap.parse_args()
    env = json.loads(Path(args.env_json).read_text())

    t0 = time.perf_counter()
    pipeline = dlt.pipeline(pipeline_name="bench_naive", destination=dlt.destinations.duckdb(args.db),
                            dataset_name="loyalty_raw", pipelines_dir=args.workdir)
    sources = build_sources(env)
    phases: dict[str, float] = {}
    t = time.perf_counter()
    pipeline.extract(sources, loader_file_format=args.loader_file_format)
    phases["extract_s"] = time.perf_counter() - t
    t = time.perf_counter()
    pipeline.normalize()
    phases["normalize_s"] = time.perf_counter() - t
    t = time.perf_counter()
    pipeline.load()
    phases["load_s"] = time.perf_counter() - t
    total = time.perf_counter() - t0

    with pipeline.sql_client() as client:
        rows = {}
        for table in ("carecloud_point_history", "capillary_points_transfers"):
            rows[table] = client.execute_sql(f"SELECT count(*) FROM {client.make_qualified_table_name(table)}")[0][0]
    Path(args.result).write_text(json.dumps({
        "variant": "a", "loader_file_format": args.loader_file_format or "default (insert_values)", "seconds": total, **phases, "rows": rows,
        "point_history": rows["carecloud_point_history"],
        "customer_transfers": rows["capillary_points_transfers"],
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
