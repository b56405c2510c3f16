"""dlt source for CareCloud point history: one `GET /point-history` window per customer, many customers in flight,
records turned into Arrow batches (see `normalize.py`) and merged on `record_key`."""

from __future__ import annotations

from typing import Any, Sequence

import dlt

from pipelines.carecloud.config import CareCloudConfiguration
from pipelines.carecloud.helpers import CareCloudApi
from pipelines.carecloud.normalize import PointHistoryBatch
from pipelines.carecloud.settings import POINT_HISTORY_TABLE
from pipelines.extraction import ExtractJob, Extraction, source_resource
from pipelines.spec import SourceSpec

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


def table_hints(table: str) -> dict[str, Any]:
    """dlt hints of the point-history table and of its `extended_data` list tables."""
    if table == POINT_HISTORY_TABLE:
        return {"write_disposition": INSERT_ONLY, "primary_key": "record_key", "columns": COLUMNS}
    return {"write_disposition": INSERT_ONLY, "primary_key": CHILD_PRIMARY_KEY, "columns": CHILD_COLUMNS}


def new_batch(api: CareCloudApi, job: ExtractJob) -> PointHistoryBatch:
    return PointHistoryBatch(api.timezone, job.run_id, job.types)


@dlt.source(name="carecloud", max_table_nesting=0)
def carecloud_source(customer_ids: Sequence[str] | None = None, start: Any = None, end: Any = None,
                     extraction: Extraction | None = None) -> Any:
    """CareCloud point history of `customer_ids` recorded in [`start`, `end`) (ISO instants or datetimes; default
    `initial_start` to now - `safety_lag`), with the settings of `[sources.carecloud]`. The runner passes
    `extraction` instead: its API client and the round's job."""
    return source_resource(SPEC, customer_ids, start, end, extraction)


SPEC = SourceSpec(
    name="carecloud",
    make_api=CareCloudApi,
    new_batch=new_batch,
    table_hints=table_hints,
    resource_name=POINT_HISTORY_TABLE,
    source=carecloud_source,
    configspec=CareCloudConfiguration,
    sandbox="pipelines.carecloud.sandbox:PART",
)
