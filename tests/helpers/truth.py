"""Warehouse vs sandbox ground truth, row for row, as multisets of API-visible fields.

Independent of the pipeline's key function: rows are compared by the values the API sent (and the UTC instant
derived by the documented convention), so a dropped, doubled or altered record shows up as a difference.
Used by the pipeline tests and the reliability suite:

    diff = compare_warehouse(warehouse_path, sandbox.truth(), until)
    assert diff.ok, diff.report()
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

CARECLOUD_TEXT = ["customer_id", "point_operation_type", "point_operation_note", "point_type_id", "partner_id",
                  "store_id"]
CAPILLARY_FIELDS = ["customer_id", "transfer_id", "transfer_type", "to_entity_id", "to_entity_type",
                    "from_entity_id", "from_entity_type", "points_transfer_date", "points_transferred",
                    "transferred_at", "from_user_id", "from_first_name", "from_last_name", "from_external_id",
                    "from_group_id", "to_user_id", "to_first_name", "to_last_name", "to_external_id",
                    "to_group_id", "notes", "program_name"]


@dataclass
class TableDiff:
    table: str
    expected: int
    actual: int
    missing: list[tuple] = field(default_factory=list)   # in the truth, not in the warehouse (with multiplicity)
    extra: list[tuple] = field(default_factory=list)     # in the warehouse, not in the truth

    @property
    def ok(self) -> bool:
        return not self.missing and not self.extra

    def report(self, limit: int = 5) -> str:
        lines = [f"{self.table}: expected {self.expected} rows, warehouse has {self.actual}; "
                 f"{len(self.missing)} missing, {len(self.extra)} extra"]
        lines += [f"  missing {r}" for r in self.missing[:limit]]
        lines += [f"  extra   {r}" for r in self.extra[:limit]]
        return "\n".join(lines)


@dataclass
class Diff:
    tables: list[TableDiff]

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tables)

    @property
    def rows_compared(self) -> int:
        return sum(t.expected for t in self.tables)

    def report(self) -> str:
        return "\n".join(t.report() for t in self.tables)


def _norm_time(text: Any) -> str | None:
    if not isinstance(text, str):
        return None
    try:
        return dt.datetime.strptime(text.replace("T", " "), "%Y-%m-%d %H:%M:%S").strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None


def _utc(value: Any) -> str | None:
    if value is None:
        return None
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _multiset_diff(name: str, expected: list[tuple], actual: list[tuple]) -> TableDiff:
    e, a = Counter(expected), Counter(actual)
    return TableDiff(name, len(expected), len(actual), missing=sorted((e - a).elements(), key=repr),
                     extra=sorted((a - e).elements(), key=repr))


def _before(table: pa.Table, column: str, until: dt.datetime | None) -> pa.Table:
    if until is None:
        return table
    mask = pc.or_kleene(pc.less(table[column], pa.scalar(until, table.schema.field(column).type)),
                        pc.is_null(table[column]))
    return table.filter(mask)


def carecloud_expected(truth: pa.Table, until: dt.datetime | None, customers: set[str] | None = None) -> list[tuple]:
    truth = _before(truth, "recorded_at", until)
    extra_cols = [c for c in ("record_source", "loyalty_tier") if c in truth.column_names]
    rows = []
    for r in truth.to_pylist():
        if customers is not None and r["customer_id"] not in customers:
            continue
        rows.append((*(r[c] for c in CARECLOUD_TEXT), r["point_amount"], _norm_time(r["point_history_record_time"]),
                     _utc(r["recorded_at"]), r["extended_data"], *(r[c] for c in extra_cols)))
    return rows


def carecloud_actual(conn: duckdb.DuckDBPyConnection, extra_cols: list[str]) -> list[tuple]:
    extra = "".join(f", {c}" for c in extra_cols)
    rows = conn.execute(
        f"""SELECT {', '.join(CARECLOUD_TEXT)}, point_amount,
                   strftime(point_history_record_time, '%Y-%m-%d %H:%M:%S'), recorded_at, extended_data_raw {extra}
            FROM loyalty_raw.carecloud_point_history""").fetchall()
    return [(*r[:8], _utc(r[8]), *r[9:]) for r in rows]


def capillary_expected(truth: pa.Table, until: dt.datetime | None) -> list[tuple]:
    truth = _before(truth, "transferred_at", until)
    return [tuple(_utc(r[c]) if c == "transferred_at" else r[c] for c in CAPILLARY_FIELDS)
            for r in truth.to_pylist()]


def capillary_actual(conn: duckdb.DuckDBPyConnection) -> list[tuple]:
    rows = conn.execute(
        """SELECT c.customer_id, c.transfer_id, c.transfer_type, t.to_entity_id, t.to_entity_type,
                  t.from_entity_id, t.from_entity_type, t.points_transfer_date, t.points_transferred, t.transferred_at,
                  t.from_user_id, pf.first_name, pf.last_name, pf.external_id, t.from_group_id,
                  t.to_user_id, pt.first_name, pt.last_name, pt.external_id, t.to_group_id, t.notes, t.program_name
           FROM loyalty_raw.capillary_customer_transfers c
           LEFT JOIN loyalty_raw.capillary_points_transfers t USING (transfer_id)
           LEFT JOIN loyalty_raw.capillary_transfer_parties pf ON pf.user_id = t.from_user_id
           LEFT JOIN loyalty_raw.capillary_transfer_parties pt ON pt.user_id = t.to_user_id""").fetchall()
    return [tuple(_utc(v) if i == 9 else v for i, v in enumerate(r)) for r in rows]


def _tables(conn: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'loyalty_raw'").fetchall()}


def compare_warehouse(warehouse: str | Path, truth: Any, until: dt.datetime | None,
                      sources: tuple[str, ...] = ("carecloud", "capillary")) -> Diff:
    """Compare the raw tables of a warehouse with a sandbox `Truth` as of `until` (the run's window end)."""
    conn = duckdb.connect(str(warehouse), read_only=True)
    try:
        present = _tables(conn)
        diffs = []
        if "carecloud" in sources:
            cc = truth["carecloud_point_history"]
            extra_cols = [c for c in ("record_source", "loyalty_tier") if c in cc.column_names]
            actual = carecloud_actual(conn, extra_cols) if "carecloud_point_history" in present else []
            diffs.append(_multiset_diff("carecloud_point_history", carecloud_expected(cc, until), actual))
        if "capillary" in sources:
            actual = capillary_actual(conn) if "capillary_customer_transfers" in present else []
            diffs.append(_multiset_diff("capillary_customer_transfers",
                                        capillary_expected(truth["capillary_customer_transfers"], until), actual))
        return Diff(diffs)
    finally:
        conn.close()


def duplicate_keys(warehouse: str | Path) -> dict[str, int]:
    """Primary keys that occur more than once per raw table (must be empty)."""
    keys = {"carecloud_point_history": "record_key", "capillary_points_transfers": "transfer_id",
            "capillary_transfer_parties": "user_id", "capillary_customer_transfers": "customer_id, transfer_id"}
    conn = duckdb.connect(str(warehouse), read_only=True)
    try:
        present = _tables(conn)
        out = {}
        for table, key in keys.items():
            if table in present:
                n = conn.execute(f"SELECT count(*) FROM (SELECT {key} FROM loyalty_raw.{table} "
                                 f"GROUP BY ALL HAVING count(*) > 1)").fetchone()[0]
                if n:
                    out[table] = n
        return out
    finally:
        conn.close()
