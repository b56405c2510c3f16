"""dlt source for Capillary points transfers: one unpaginated `GET /v2/points/transfer` per customer, transfers kept
when they fall in the customer's window, three merged tables built as Arrow batches:

- `capillary_points_transfers` (one row per `transfer_id`; both parties of an internal transfer see the same one),
- `capillary_transfer_parties` (the `transferredFrom`/`transferredTo` people, one row per `user_id`, latest values;
  no change history: dlt's scd2 hashes whole rows in Python and would cost more than the rest of the load),
- `capillary_customer_transfers` (the per-customer view: `points_signed` + for ADDITION, - for DEDUCTION).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Sequence

import dlt
import pyarrow as pa

from pipelines.capillary.config import CapillaryConfiguration
from pipelines.capillary.helpers import CapillaryApi
from pipelines.capillary.settings import CUSTOMER_TRANSFERS_TABLE, PARTIES_TABLE, TRANSFERS_TABLE
from pipelines.columns import convert
from pipelines.extraction import ExtractJob, Extraction, source_resource
from pipelines.spec import SourceSpec
from pipelines.state import Issue
from pipelines.windows import Window, local_to_utc

SOURCE = "capillary"
TS_UTC = pa.timestamp("us", tz="UTC")

TRANSFER_FIELDS = [  # (column, API field, kind)
    ("from_entity_id", "fromEntityId", "int"), ("from_entity_type", "fromEntityType", "text"),
    ("to_entity_id", "toEntityId", "int"), ("to_entity_type", "toEntityType", "text"),
    ("points_transferred", "pointsTransferred", "double"),
    ("points_transfer_date", "pointsTransferDate", "text"),
    ("points_transfer_date_iso", "pointsTransferDateISO", "text"),
    ("notes", "notes", "text"), ("program_name", "programName", "text"),
]


def _int(value: Any) -> int | None:
    if value is None or type(value) is bool:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def transferred_at(rec: dict, server_timezone: str) -> dt.datetime | None:
    iso = rec.get("pointsTransferDateISO")
    if isinstance(iso, str) and iso:
        try:
            value = dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
            if value.tzinfo is None:
                value = value.replace(tzinfo=dt.timezone.utc)
            return value.astimezone(dt.timezone.utc)
        except ValueError:
            pass
    local = rec.get("pointsTransferDate")
    return local_to_utc(local, server_timezone) if isinstance(local, str) else None


class TransferBatch:
    def __init__(self, run_id: str, server_timezone: str) -> None:
        self.run_id = run_id
        self.tz = server_timezone
        self.transfers: dict[int, dict] = {}
        self.parties: dict[int, tuple[dt.datetime | None, dict]] = {}
        self.views: dict[tuple[str, int], tuple[str | None, float | None]] = {}
        self.issues: list[Issue] = []
        self.rows = 0

    def __len__(self) -> int:
        return self.rows

    def add(self, customer_id: str, window: Window, records: list[Any]) -> int:
        kept = 0
        for rec in records:
            if not isinstance(rec, dict):
                self.issues.append(Issue(SOURCE, customer_id, "bad_record", "transfer is not an object",
                                         str(rec)[:200]))
                continue
            transfer_id = _int(rec.get("transferId"))
            if transfer_id is None:
                self.issues.append(Issue(SOURCE, customer_id, "bad_record", "transfer without a usable transferId",
                                         str(rec)[:500]))
                continue
            at = transferred_at(rec, self.tz)
            if at is None:
                self.issues.append(Issue(SOURCE, customer_id, "bad_record_time",
                                         "transfer date missing or invalid; row kept with null transferred_at",
                                         f"transferId={transfer_id}"))
            elif not window.contains(at):
                continue
            kept += 1
            row = {col: rec.get(api) for col, api, _ in TRANSFER_FIELDS}
            row["transfer_id"] = transfer_id
            row["transferred_at"] = at
            for side, key in (("from", "transferredFrom"), ("to", "transferredTo")):
                party = rec.get(key)
                group = rec.get(key + "UserGroup2")
                user_id = _int(party.get("userId")) if isinstance(party, dict) else None
                row[f"{side}_user_id"] = user_id
                row[f"{side}_group_id"] = _int(group.get("id")) if isinstance(group, dict) else None
                if user_id is not None:
                    prev = self.parties.get(user_id)
                    if prev is None or (at is not None and (prev[0] is None or at >= prev[0])):
                        self.parties[user_id] = (at, party)
            self.transfers[transfer_id] = row
            ttype = rec.get("transferType")
            amount = rec.get("pointsTransferred")
            try:
                signed = float(amount) * (-1.0 if ttype == "DEDUCTION" else 1.0) if amount is not None else None
            except (TypeError, ValueError):
                signed = None
            if ttype not in ("ADDITION", "DEDUCTION"):
                self.issues.append(Issue(SOURCE, customer_id, "unknown_transfer_type",
                                         f"transferType {ttype!r}; points_signed taken as positive",
                                         f"transferId={transfer_id}"))
            self.views[(customer_id, transfer_id)] = (ttype if isinstance(ttype, str) else None, signed)
        self.rows += kept
        return kept

    def build(self) -> tuple[list[tuple[str, pa.Table]], list[Issue]]:
        out: list[tuple[str, pa.Table]] = []
        problems: list = []
        if self.transfers:
            rows = list(self.transfers.values())
            cols: dict[str, pa.Array] = {"transfer_id": pa.array([r["transfer_id"] for r in rows], pa.int64())}
            for col, _, kind in TRANSFER_FIELDS:
                values = [r[col] for r in rows]
                if kind == "int":
                    cols[col] = pa.array([_int(v) for v in values], pa.int64())
                else:
                    cols[col] = convert(values, kind, col, problems)
            cols["transferred_at"] = pa.array([r["transferred_at"] for r in rows], TS_UTC)
            for c in ("from_user_id", "to_user_id", "from_group_id", "to_group_id"):
                cols[c] = pa.array([r[c] for r in rows], pa.int64())
            cols["_loaded_run_id"] = pa.array([self.run_id] * len(rows), pa.string())
            out.append((TRANSFERS_TABLE, pa.table(cols)))
        if self.parties:
            ids = list(self.parties)
            objs = [self.parties[i][1] for i in ids]
            pcols = {"user_id": pa.array(ids, pa.int64())}
            for col, key in (("first_name", "firstName"), ("last_name", "lastName"), ("external_id", "externalId")):
                pcols[col] = convert([o.get(key) for o in objs], "text", col, problems)
            pcols["_loaded_run_id"] = pa.array([self.run_id] * len(ids), pa.string())
            out.append((PARTIES_TABLE, pa.table(pcols)))
        if self.views:
            keys = list(self.views)
            vals = [self.views[k] for k in keys]
            out.append((CUSTOMER_TRANSFERS_TABLE, pa.table({
                "customer_id": pa.array([k[0] for k in keys], pa.string()),
                "transfer_id": pa.array([k[1] for k in keys], pa.int64()),
                "transfer_type": pa.array([v[0] for v in vals], pa.string()),
                "points_signed": pa.array([v[1] for v in vals], pa.float64()),
                "_loaded_run_id": pa.array([self.run_id] * len(keys), pa.string()),
            })))
        for _, name, code, raw in problems:
            self.issues.append(Issue(SOURCE, None, code, f"{name}: {type(raw).__name__} value", repr(raw)[:200]))
        return out, self.issues


HINTS = {
    TRANSFERS_TABLE: dict(primary_key="transfer_id", columns={
        "transfer_id": {"data_type": "bigint", "nullable": False},
        "transferred_at": {"data_type": "timestamp", "timezone": True}}),
    PARTIES_TABLE: dict(primary_key="user_id", columns={"user_id": {"data_type": "bigint", "nullable": False}}),
    CUSTOMER_TRANSFERS_TABLE: dict(primary_key=["customer_id", "transfer_id"], columns={
        "customer_id": {"data_type": "text", "nullable": False},
        "transfer_id": {"data_type": "bigint", "nullable": False}}),
}


def table_hints(table: str) -> dict[str, Any]:
    return {"write_disposition": "merge", **HINTS[table]}


def new_batch(api: CapillaryApi, job: ExtractJob) -> TransferBatch:
    return TransferBatch(job.run_id, api.server_timezone)


@dlt.source(name="capillary", max_table_nesting=0)
def capillary_source(customer_ids: Sequence[str] | None = None, start: Any = None, end: Any = None,
                     extraction: Extraction | None = None) -> Any:
    """Capillary points transfers of `customer_ids` (values of `identifier_name`) made in [`start`, `end`) (ISO
    instants or datetimes; default `initial_start` to now - `safety_lag`), with the settings of
    `[sources.capillary]`. The runner passes `extraction` instead: its API client and the round's job."""
    return source_resource(SPEC, customer_ids, start, end, extraction)


SPEC = SourceSpec(
    name=SOURCE,
    make_api=CapillaryApi,
    new_batch=new_batch,
    table_hints=table_hints,
    resource_name="capillary_transfers",
    source=capillary_source,
    configspec=CapillaryConfiguration,
    sandbox="pipelines.capillary.sandbox:PART",
    observe_in_all_mode=True,
)
