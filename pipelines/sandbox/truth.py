"""Ground truth: everything the API shows at a given sandbox instant, as Arrow tables.

Tests compare the warehouse with these tables row for row (multisets of API-visible fields), so they are built
from the same generator the server pages from, never from what the server happened to send.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.sandbox.data import CARECLOUD_FIELDS, EXTRA_FIELDS, DataGenerator, local_to_utc
from pipelines.sandbox.listing import Listings

TS = pa.timestamp("us", tz="UTC")


@dataclass
class Truth:
    carecloud_point_history: pa.Table
    capillary_customer_transfers: pa.Table

    def tables(self) -> dict[str, pa.Table]:
        return {"carecloud_point_history": self.carecloud_point_history,
                "capillary_customer_transfers": self.capillary_customer_transfers}

    def __getitem__(self, name: str) -> pa.Table:
        return self.tables()[name]

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name, table in self.tables().items():
            paths[name] = out / f"{name}.parquet"
            pq.write_table(table, paths[name])
        return paths


def _ts(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, timezone.utc)


def _amount(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def carecloud_truth(gen: DataGenerator, now: float, indices: Iterable[int]) -> pa.Table:
    cols: dict[str, list] = {k: [] for k in CARECLOUD_FIELDS}
    extra = list(EXTRA_FIELDS) if gen.config.extra_fields else []
    for k in extra:
        cols[k] = []
    cols.update(recorded_at=[], visible_from=[], anomaly=[])
    for i in indices:
        h = gen.carecloud(i)
        for rec, vis, anomaly in zip(h.records, h.visible, h.anomalies):
            if vis > now:
                continue
            for k in CARECLOUD_FIELDS:
                cols[k].append(rec[k])
            for k in extra:
                cols[k].append(rec.get(k))
            recorded = local_to_utc(rec["point_history_record_time"], gen.zone)
            cols["recorded_at"].append(recorded)
            cols["visible_from"].append(_ts(vis))
            cols["anomaly"].append(anomaly)
    cols["point_amount"] = [_amount(v) for v in cols["point_amount"]]
    schema = pa.schema([(k, pa.float64() if k == "point_amount" else pa.string()) for k in CARECLOUD_FIELDS]
                       + [(k, pa.string()) for k in extra]
                       + [("recorded_at", TS), ("visible_from", TS), ("anomaly", pa.string())])
    return pa.table(cols, schema=schema)


_CAP_SCHEMA = pa.schema([
    ("customer_id", pa.string()), ("transfer_id", pa.int64()), ("transfer_type", pa.string()),
    ("to_entity_id", pa.int64()), ("to_entity_type", pa.string()),
    ("from_entity_id", pa.int64()), ("from_entity_type", pa.string()),
    ("points_transfer_date", pa.string()), ("points_transfer_date_iso", pa.string()),
    ("points_transferred", pa.float64()), ("transferred_at", TS),
    ("from_user_id", pa.int64()), ("from_first_name", pa.string()), ("from_last_name", pa.string()),
    ("from_external_id", pa.string()), ("from_group_id", pa.int64()),
    ("to_user_id", pa.int64()), ("to_first_name", pa.string()), ("to_last_name", pa.string()),
    ("to_external_id", pa.string()), ("to_group_id", pa.int64()),
    ("notes", pa.string()), ("program_name", pa.string()), ("visible_from", TS),
])


def capillary_truth(gen: DataGenerator, now: float, indices: Iterable[int], identifier_name: str = "id") -> pa.Table:
    rows: dict[str, list] = {f.name: [] for f in _CAP_SCHEMA}
    for i in indices:
        ident = gen.capillary_identifiers(i)[identifier_name]
        for vis, r in gen.capillary_view(i):
            if vis > now:
                continue
            rows["customer_id"].append(ident)
            rows["transfer_id"].append(r["transferId"])
            rows["transfer_type"].append(r["transferType"])
            rows["to_entity_id"].append(r["toEntityId"])
            rows["to_entity_type"].append(r["toEntityType"])
            rows["from_entity_id"].append(r["fromEntityId"])
            rows["from_entity_type"].append(r["fromEntityType"])
            rows["points_transfer_date"].append(r["pointsTransferDate"])
            rows["points_transfer_date_iso"].append(r["pointsTransferDateISO"])
            rows["points_transferred"].append(float(r["pointsTransferred"]))
            rows["transferred_at"].append(datetime.fromisoformat(r["pointsTransferDateISO"].replace("Z", "+00:00")))
            for side, key in (("from", "transferredFrom"), ("to", "transferredTo")):
                party = r.get(key)
                group = r.get(key + "UserGroup2")
                rows[f"{side}_user_id"].append(party["userId"] if party else None)
                rows[f"{side}_first_name"].append(party["firstName"] if party else None)
                rows[f"{side}_last_name"].append(party["lastName"] if party else None)
                rows[f"{side}_external_id"].append(party.get("externalId") if party else None)
                rows[f"{side}_group_id"].append(group["id"] if group else None)
            rows["notes"].append(r["notes"])
            rows["program_name"].append(r["programName"])
            rows["visible_from"].append(_ts(vis))
    return pa.table(rows, schema=_CAP_SCHEMA)


def carecloud_listing_truth(listings: Listings, now: float, indices: Iterable[int]) -> dict[str, pa.Table]:
    """What the cross-customer listings show at `now`, as sent (GET /customers over every customer the vendor
    knows; /points and /purchases of the `indices` customers), and `carecloud_point_history_trace`: each visible
    history record of those customers with the listing that names it (`trace`: point_record, purchase, expiry,
    none), in the order of `carecloud_truth`."""
    gen = listings.gen
    members, last, states = listings.roster_view(now)
    customers = pa.table({
        "customer_id": [gen.carecloud_id(i) for i in members],
        "state": pa.array([states[i] for i in members], pa.int64()),
        "last_change": [listings.local_text(last[i]) for i in members],
        "created_at": pa.array([_ts(gen.joined_at(i)) for i in members], TS),
    })
    points, purchases = [], []
    trace_cols: dict[str, list] = {k: [] for k in ("customer_id", "point_amount", "point_operation_type",
                                                   "point_history_record_time", "extended_data", "visible_from",
                                                   "trace")}
    for i in indices:
        cl, h = listings.customer(i), gen.carecloud(i)
        points += [listings.lot_as_sent(lot, exp, now)
                   for lot, exp, vis in zip(cl.lots, cl.lot_expires, cl.lot_visible) if vis <= now]
        purchases += [p for p, vis in zip(cl.purchases, cl.purchase_visible) if vis <= now]
        for rec, vis, trace in zip(h.records, h.visible, cl.traces):
            if vis > now:
                continue
            for k in ("customer_id", "point_operation_type", "point_history_record_time", "extended_data"):
                trace_cols[k].append(rec[k])
            trace_cols["point_amount"].append(_amount(rec["point_amount"]))
            trace_cols["visible_from"].append(_ts(vis))
            trace_cols["trace"].append(trace)
    point_schema = pa.schema([("point_id", pa.string()), ("customer_id", pa.string()),
                              ("assigned_points", pa.float64()), ("available_points", pa.float64()),
                              ("point_type_id", pa.string()), ("partner_id", pa.string()), ("valid_to", pa.string()),
                              ("state", pa.int64()), ("created_at", pa.string()), ("note", pa.string())])
    purchase_schema = pa.schema([("purchase_id", pa.string()), ("customer_id", pa.string()),
                                 ("store_id", pa.string()), ("external_purchase_id", pa.string()),
                                 ("payment_time", pa.string()), ("items_count", pa.int64()),
                                 ("type_id", pa.string()), ("total_price", pa.float64()),
                                 ("currency_id", pa.string()), ("card_number", pa.string()),
                                 ("cashdesk_number", pa.string()), ("last_change", pa.string())])
    return {
        "carecloud_customers": customers,
        "carecloud_points": pa.Table.from_pylist(points, schema=point_schema),
        "carecloud_purchases": pa.Table.from_pylist(purchases, schema=purchase_schema),
        "carecloud_point_history_trace": pa.table(trace_cols, schema=pa.schema(
            [(k, pa.float64() if k == "point_amount" else TS if k == "visible_from" else pa.string())
             for k in trace_cols])),
    }
