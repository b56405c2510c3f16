"""dlt source for CareCloud point history: one `GET /point-history` window per customer, many customers in flight,
records turned into Arrow batches (see `normalize.py`) and merged on `record_key`."""

from __future__ import annotations

from typing import Any, Iterator

import dlt

from pipelines.carecloud.helpers import CareCloudApi
from pipelines.carecloud.normalize import PointHistoryBatch
from pipelines.carecloud.settings import POINT_HISTORY_TABLE
from pipelines.columns import with_required
from pipelines.extraction import ExtractJob, extract_batches, fetched
from pipelines.http import Steps
from pipelines.windows import Window, local_bounds

COLUMNS: dict[str, Any] = {
    "record_key": {"data_type": "text", "nullable": False},
    "customer_id": {"data_type": "text"},
    "point_amount": {"data_type": "double"},
    "point_history_record_time": {"data_type": "timestamp", "timezone": False},
    "recorded_at": {"data_type": "timestamp", "timezone": True},
    "extended_data_raw": {"data_type": "text"},
    "_loaded_run_id": {"data_type": "text"},
}
CHILD_PRIMARY_KEY = ["record_key", "_idx"]
# A record's key is a hash of its content (every documented field as sent, `normalize.record_key`), so a key seen
# again is the same record again: dlt's insert-only merge (MERGE ... WHEN NOT MATCHED THEN INSERT) adds only new
# keys and leaves the rows re-fetched in the lookback alone. Against delete-insert (delete every re-fetched key,
# insert again, deduplicate) it halved the load step of the benchmark round
# (docs/decisions/session-2-worker-processes.md). Consequence: `_loaded_run_id` is the run that FIRST loaded the
# row, and a field the vendor adds later is filled only for records loaded after it appeared.
INSERT_ONLY: Any = {"disposition": "merge", "strategy": "insert-only"}
CHILD_COLUMNS: dict[str, Any] = {"record_key": {"data_type": "text", "nullable": False},
                                 "_idx": {"data_type": "bigint", "nullable": False},
                                 "_loaded_run_id": {"data_type": "text"}}


def _hinted(tables: list[tuple[str, Any]]) -> Iterator[Any]:
    for name, table in tables:
        # every table as a variant with its own complete hints: hints set on the resource itself would be
        # inherited by the child tables (dlt copies resource column hints into variants)
        if name == POINT_HISTORY_TABLE:
            hints = dlt.mark.make_hints(table_name=name, write_disposition=INSERT_ONLY, primary_key="record_key",
                                        columns=COLUMNS)
        else:
            hints = dlt.mark.make_hints(table_name=name, write_disposition=INSERT_ONLY, primary_key=CHILD_PRIMARY_KEY,
                                        columns=CHILD_COLUMNS)
        yield dlt.mark.with_hints(with_required(table, CHILD_PRIMARY_KEY), hints, create_table_variant=True)


def point_history_batches(api: CareCloudApi, job: ExtractJob) -> Iterator[list[tuple[str, Any]]]:
    """Fetch `job.tasks` and turn the records into Arrow tables, `job.batch_rows` records at a time. Runs in this
    process or in a worker process (`pipelines/workers.py`); no dlt here."""

    def fetch(task: tuple[str, Window]) -> Steps:
        customer_id, window = task
        time_from, time_to = local_bounds(window, api.timezone)
        records, _ = yield from api.fetch_steps(customer_id, time_from, time_to)
        return records

    def build(batch: PointHistoryBatch) -> list[tuple[str, Any]]:
        tables, issues = batch.build()
        job.issues.extend(issues)
        return tables

    batch = PointHistoryBatch(api.timezone, job.run_id, job.types)
    for customer_id, window, records in fetched(job, fetch):
        batch.add(customer_id, window, records)
        job.succeed(customer_id, len(records))
        if len(batch) >= job.batch_rows:
            yield build(batch)
            batch = PointHistoryBatch(api.timezone, job.run_id, job.types)
    yield build(batch)


@dlt.source(name="carecloud", max_table_nesting=0)
def carecloud_source(api: CareCloudApi, job: ExtractJob) -> Any:
    """Point history of `job.tasks` (customer, window) through `api`."""
    return point_history_resource(api, job)


def point_history_resource(api: CareCloudApi, job: ExtractJob) -> Any:
    """The resource on its own, so a run can extract both APIs' resources side by side in one package."""

    @dlt.resource(name=POINT_HISTORY_TABLE, write_disposition="merge", parallelized=True)
    def point_history() -> Iterator[Any]:
        for tables in extract_batches(job, api, point_history_batches):
            yield from _hinted(tables)

    return point_history
