"""Variant (a), the naive baseline: dlt's own declarative `rest_api` source configured the obvious way.

What a competent user writes in an afternoon from the dlt docs: the customer list is a parent resource, each API
is a child resource resolved per customer, CareCloud pages with the offset paginator, everything else is a dlt
default (sequential extraction, row-by-row normalizer, INSERT loader files, append). The page size is the same
as the pipeline's (`count=1000`) so only the machinery differs, not the request count. The CareCloud bearer token
is obtained once up front because rest_api has no login-flow auth; the Capillary Basic password is MD5-hashed as
the API requires.

(a'') `--tuned`: the same source tuned the way dlt's own performance guide says
(https://dlthub.com/docs/reference/performance): `parallelized=True` on the per-customer child resources, so each
customer's pages are fetched by a deferred callable in dlt's extract thread pool; a larger pool and more items in
flight; bigger in-memory buffers; file rotation (so normalize could use a process pool); normalize workers as
measured best on the bench machine; uncompressed intermediary files; Parquet loader files. See TUNED for the
values and why.

Run as a child of bench.run: `python -m bench.naive --env-json ENV.json --db FILE --result FILE [--tuned]`.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
import os
from typing import Any, Iterator

import dlt
from dlt.sources.rest_api import rest_api_source

from bench.apis import capillary_basic, carecloud_token


# (a''): dlt's performance guide applied, as config a dlt user sets (environment = config.toml sections). The values
# are the best of a small sweep on this bench's data (docs/performance.md), so the baseline is as strong as dlt's
# documented knobs make it, not a strawman.
TUNED = {
    # "You can control the number of workers in the thread pool with the workers setting" (default 5): the
    # per-customer fetches are I/O waits on the API, so more threads keep more requests in flight
    "EXTRACT__WORKERS": "16",
    # "max_parallel_items applies to thread pools as well" (default 20): at least the pool size, plus a queue
    "EXTRACT__MAX_PARALLEL_ITEMS": "64",
    # "The default buffer is ... moderately low (5000 items) ... you might want to increase it"
    "DATA_WRITER__BUFFER_MAX_ITEMS": "50000",
    # "If you want such data to be normalized and loaded in parallel, you must enable file rotation"
    "DATA_WRITER__FILE_MAX_ITEMS": "100000",
    # intermediary (extract) files are gzip'ed by default; the guide shows how to switch it off
    "DATA_WRITER__DISABLE_COMPRESSION": "true",
}
# "The number of processes in the pool is controlled by the workers config value" and "Never allow dlt to use all
# cores on your local machine": on the 2-core bench machine 1 was faster than 2 in alternating runs
# (docs/decisions/session-6-heterogeneous-and-tuned-dlt.md); NORMALIZE__WORKERS in the environment overrides it
TUNED_NORMALIZE_WORKERS = 1
TUNED_FILE_FORMAT = "parquet"


def _customers(path: str) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [{"customer_id": row["customer_id"]} for row in csv.DictReader(fh) if row["customer_id"]]


def build_sources(env: dict[str, str], parallelized: bool = False) -> list[Any]:
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
                "parallelized": parallelized,
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
                "parallelized": parallelized,
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
    ap.add_argument("--tuned", action="store_true", help="(a''): dlt tuned per its performance guide (TUNED)")
    args = ap.parse_args()
    env = json.loads(Path(args.env_json).read_text())
    file_format = args.loader_file_format
    normalize_workers = 1
    if args.tuned:
        for key, value in TUNED.items():
            os.environ.setdefault(key, value)   # an explicit environment wins (sweeps of the values)
        file_format = file_format or TUNED_FILE_FORMAT
        normalize_workers = int(os.environ.get("NORMALIZE__WORKERS", TUNED_NORMALIZE_WORKERS))

    t0 = time.perf_counter()
    pipeline = dlt.pipeline(pipeline_name="bench_naive", destination=dlt.destinations.duckdb(args.db),
                            dataset_name="loyalty_raw", pipelines_dir=args.workdir)
    sources = build_sources(env, parallelized=args.tuned)
    phases: dict[str, float] = {}
    t = time.perf_counter()
    pipeline.extract(sources, loader_file_format=file_format)
    phases["extract_s"] = time.perf_counter() - t
    t = time.perf_counter()
    pipeline.normalize(workers=normalize_workers)
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
        "variant": "a_tuned" if args.tuned else "a", "seconds": total, **phases, "rows": rows,
        "loader_file_format": file_format or "default (insert_values)", "normalize_workers": normalize_workers,
        "config": {k: os.environ[k] for k in TUNED if k in os.environ},
        "point_history": rows["carecloud_point_history"],
        "customer_transfers": rows["capillary_points_transfers"],
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
