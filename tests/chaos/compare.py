"""Compare a warehouse with the sandbox's ground truth, row for row, as multisets of API-visible fields.

The one truth comparison of the test suite: the pipeline tests (tests/test_pipeline.py), the ops tests and the
reliability suite all use it:

    cmp = compare(warehouse, sandbox.truth(), until=until, ledger=False)
    assert cmp.ok, str(cmp)

The comparison never uses the pipeline's own keys to decide what matches (a wrong key function would then hide its
own bugs): CareCloud rows are compared on every field the API sent (new top-level fields too, when the sandbox sends
them), with their list items (child tables) and scalar `extended_data` keys (extended columns); Capillary rows per
(customer, transfer), per transfer and per party; the ledger when asked. Keys are checked separately for uniqueness
(nothing doubled). Both sides are put in one in-memory DuckDB and compared with `EXCEPT ALL` in both directions,
which is a multiset difference. `warehouse` is the DuckDB file's path or a DuckLake (`tests/helpers/lake.py`
`Lake`), attached read-only either way.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from pipelines.sandbox.data import EXTRA_FIELDS

from .harness import is_lock_error

# CareCloud fields as the API sends them; the warehouse side casts its typed columns back to these.
CC_WH = """
    customer_id, point_amount::double as point_amount, point_operation_type, point_operation_note, point_type_id,
    partner_id, store_id, strftime(point_history_record_time, '%Y-%m-%d %H:%M:%S') as record_time,
    extended_data_raw as extended_data, epoch_ms(recorded_at) as recorded_ms"""
CC_TRUTH = """
    customer_id, point_amount, point_operation_type, point_operation_note, point_type_id,
    partner_id, store_id, point_history_record_time as record_time, extended_data,
    epoch_ms(recorded_at) as recorded_ms"""
# records whose time the API sent broken: compared without their time (the warehouse cannot hold "2025-13-45"),
# which must then be empty in the warehouse, not some guess
CC_WH_NOTIME = """customer_id, point_amount::double as point_amount, point_operation_type, point_operation_note,
    point_type_id, partner_id, store_id, strftime(point_history_record_time, '%Y-%m-%d %H:%M:%S') as record_time,
    extended_data_raw as extended_data"""
CC_TRUTH_NOTIME = """customer_id, point_amount, point_operation_type, point_operation_note, point_type_id,
    partner_id, store_id, null::varchar as record_time, extended_data"""

CAP_TRANSFER_FIELDS = ("transfer_id, from_entity_id, from_entity_type, to_entity_id, to_entity_type, "
                       "points_transferred::double as points_transferred, points_transfer_date, "
                       "epoch_ms(transferred_at) as transferred_ms, notes, program_name, from_user_id, to_user_id, "
                       "points_transfer_date_iso, from_group_id, to_group_id")


@dataclass
class Diff:
    """One comparison: how many rows each side had, and samples of what differs."""

    name: str
    truth_rows: int
    warehouse_rows: int
    missing: int = 0          # in the truth, not in the warehouse (as many times as it should be)
    extra: int = 0            # in the warehouse, not in the truth (or more often than in the truth)
    missing_sample: list = field(default_factory=list)
    extra_sample: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.missing == 0 and self.extra == 0

    def __str__(self) -> str:
        s = (f"{self.name}: truth {self.truth_rows}, warehouse {self.warehouse_rows}, missing {self.missing}, "
             f"extra {self.extra}")
        if self.missing_sample:
            s += "\n    missing e.g. " + "\n      ".join(_short(r) for r in self.missing_sample)
        if self.extra_sample:
            s += "\n    extra e.g. " + "\n      ".join(_short(r) for r in self.extra_sample)
        return s


def _short(row: Any) -> str:
    return str(tuple(v[:80] + "..." if isinstance(v, str) and len(v) > 80 else v for v in row))


@dataclass
class Comparison:
    diffs: list[Diff]
    duplicates: dict[str, int]            # key description -> number of keys seen more than once

    @property
    def ok(self) -> bool:
        return all(d.ok for d in self.diffs) and not any(self.duplicates.values())

    @property
    def rows_compared(self) -> int:
        return sum(max(d.truth_rows, d.warehouse_rows) for d in self.diffs)

    @property
    def mismatches(self) -> int:
        return sum(d.missing + d.extra for d in self.diffs) + sum(self.duplicates.values())

    def diff(self, name: str) -> Diff:
        return next(d for d in self.diffs if d.name == name)

    def __str__(self) -> str:
        lines = [str(d) for d in self.diffs]
        lines += [f"duplicate keys {k}: {n}" for k, n in self.duplicates.items() if n]
        return "\n".join(lines)


def attach_read_only(con: duckdb.DuckDBPyConnection, warehouse: Any, alias: str) -> None:
    """`warehouse`: the DuckDB file's path; a test's lake (tests/helpers/lake.py `Lake`: an analyst's plain ATTACH);
    or the project's `pipelines.warehouse.LakeWarehouse` (its own ATTACH statement)."""
    if hasattr(warehouse, "attach"):
        warehouse.attach(con, alias, read_only=True)
    elif hasattr(warehouse, "config") and hasattr(warehouse.config, "attach_sql"):
        from pipelines import lake

        lake.load_extensions(con)
        con.execute(warehouse.config.attach_sql(read_only=True, alias=alias))
    else:
        con.execute(f"attach '{warehouse}' as {alias} (read_only)")


def warehouse_exists(warehouse: Any) -> bool:
    return Path(warehouse).exists() if isinstance(warehouse, (str, Path)) else warehouse.exists()


class Checker:
    """Holds one in-memory DuckDB with the truth registered and the warehouse attached read-only."""

    def __init__(self, warehouse: Any, truth: Any, *, until: datetime, initial_start: datetime | None = None,
                 wait_s: float = 60.0) -> None:
        self.con = duckdb.connect()
        self.con.execute("set TimeZone = 'UTC'")
        deadline = time.monotonic() + wait_s
        while True:
            try:
                attach_read_only(self.con, warehouse, "wh")
                break
            except duckdb.Error as exc:
                if not is_lock_error(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.con.register("truth_cc_all", truth.carecloud_point_history)
        self.con.register("truth_cap_all", truth.capillary_customer_transfers)
        # what the run should have loaded: every visible record inside [initial_start, until) (no lower bound when
        # initial_start is None); a record whose time is unparseable has no instant, so it is kept (the sandbox
        # serves it inside its real window)
        self.con.execute(f"""create temp view truth_cc as select * from truth_cc_all
                             where recorded_at is null or ({_window("recorded_at", initial_start, until)})""")
        self.con.execute(f"""create temp view truth_cap as select * from truth_cap_all
                             where {_window("transferred_at", initial_start, until)}""")
        # top-level fields the sandbox adds beyond the documented ones (extra_fields=True) are compared too
        self.cc_extra = "".join(f", {c}" for c in EXTRA_FIELDS if c in truth.carecloud_point_history.column_names)
        self.wh_tables = {r[0] for r in self.con.execute(
            "select schema_name || '.' || table_name from duckdb_tables() where database_name = 'wh'").fetchall()}
        self.wh_views = {r[0] for r in self.con.execute(
            "select schema_name || '.' || view_name from duckdb_views() where database_name = 'wh'").fetchall()}

    def close(self) -> None:
        self.con.close()

    def has(self, rel: str) -> bool:
        return rel in self.wh_tables or rel in self.wh_views

    # -- generic multiset difference
    def multiset(self, name: str, truth_sql: str, wh_sql: str, sample: int = 5) -> Diff:
        c = self.con
        n_truth = c.execute(f"select count(*) from ({truth_sql})").fetchone()[0]
        n_wh = c.execute(f"select count(*) from ({wh_sql})").fetchone()[0]
        missing = c.execute(f"select count(*) from (({truth_sql}) except all ({wh_sql}))").fetchone()[0]
        extra = c.execute(f"select count(*) from (({wh_sql}) except all ({truth_sql}))").fetchone()[0]
        d = Diff(name, n_truth, n_wh, missing, extra)
        if missing:
            d.missing_sample = c.execute(f"({truth_sql}) except all ({wh_sql}) limit {sample}").fetchall()
        if extra:
            d.extra_sample = c.execute(f"({wh_sql}) except all ({truth_sql}) limit {sample}").fetchall()
        return d

    def dup_count(self, rel: str, key: str) -> int:
        return self.con.execute(
            f"select count(*) from (select {key} from {rel} group by all having count(*) > 1)").fetchone()[0]

    # -- the tables
    def carecloud(self, customers: list[str] | None = None, *, bad_time_rows: str = "loaded") -> list[Diff]:
        """`bad_time_rows`: "loaded" (they must be in the warehouse, compared without their time) or
        "skip" (left out of the comparison; the caller checks they were recorded as issues)."""
        cust = _in("customer_id", customers)
        wh = "wh.loyalty_raw.carecloud_point_history"
        extra = self.cc_extra
        good_truth = f"select {CC_TRUTH}{extra} from truth_cc where recorded_at is not null {cust}"
        good_wh = f"select {CC_WH}{extra} from {wh} where recorded_at is not null {cust}"
        diffs = [self.multiset("carecloud_point_history", good_truth, good_wh)]
        if bad_time_rows == "loaded":
            diffs.append(self.multiset(
                "carecloud_point_history (unparseable record time)",
                f"select {CC_TRUTH_NOTIME}{extra} from truth_cc where recorded_at is null {cust}",
                f"select {CC_WH_NOTIME}{extra} from {wh} where recorded_at is null {cust}"))
        return diffs

    def _truth_objects(self, like: str):
        """(customer_id, extended_data text, parsed object) of the truth's records whose extended_data is a JSON
        object and matches `like`; invalid JSON is skipped (it is kept raw, compared with the row)."""
        for cid, ext in self.con.execute(
                "select customer_id, extended_data from truth_cc where extended_data like ?", [like]).fetchall():
            try:
                obj = json.loads(ext)
            except ValueError:
                continue
            if isinstance(obj, dict):
                yield cid, ext, obj

    def children(self) -> Diff:
        """List-valued keys of `extended_data` (e.g. purchase items) against their child tables: every item of every
        record, at its position, with its fields, linked to a parent row with the same customer and extended_data."""
        prefix = "carecloud_point_history__extended_data__"
        expected: Counter = Counter()
        for cid, ext, obj in self._truth_objects("%[%"):
            for key, value in obj.items():
                if isinstance(value, list):
                    for idx, item in enumerate(value):
                        expected[(prefix + _snake(key), cid, ext, idx, _item(item))] += 1
        found: Counter = Counter()
        for rel in sorted(t for t in self.wh_tables if t.startswith("loyalty_raw." + prefix)):
            table = rel.split(".", 1)[1]
            cur = self.con.execute(
                f"""select p.customer_id as "#cid", p.extended_data_raw as "#ext", c.* exclude (record_key, _loaded_run_id)
                    from wh.{rel} c join wh.loyalty_raw.carecloud_point_history p using (record_key)""")
            names = [d[0] for d in cur.description]
            for row in cur.fetchall():
                rec = dict(zip(names, row))
                cid, ext, idx = rec.pop("#cid"), rec.pop("#ext"), rec.pop("_idx")
                item = {k: v for k, v in rec.items() if not k.startswith("_dlt") and v is not None}
                found[(table, cid, ext, idx, _item(item, flat=True))] += 1
            orphans = self.con.execute(f"""select count(*) from wh.{rel} c anti join
                                           wh.loyalty_raw.carecloud_point_history p using (record_key)""").fetchone()[0]
            if orphans:
                found[(table, "ORPHAN child rows without a parent", None, orphans, "")] += 1
        return _counter_diff("carecloud extended_data list items (child tables)", expected, found, 5)

    def scalars(self) -> Diff:
        """Scalar keys of `extended_data` against their `extended_data__<key>` columns, record by record (linked by
        customer and the raw extended_data text)."""
        expected: Counter = Counter()
        for cid, ext, obj in self._truth_objects("{%"):
            flat = json.loads(_item({k: v for k, v in obj.items() if not isinstance(v, list)}))
            expected[(cid, ext, json.dumps({"extended_data__" + k: v for k, v in sorted(flat.items())},
                                           ensure_ascii=False))] += 1
        cols = [r[0] for r in self.con.execute(
            "select column_name from duckdb_columns() where database_name = 'wh' and schema_name = 'loyalty_raw' "
            "and table_name = 'carecloud_point_history' and column_name like 'extended\\_data\\_\\_%' escape '\\'"
        ).fetchall()]
        found: Counter = Counter()
        if cols:
            select = ", ".join(f'"{c}"' for c in cols)
            for row in self.con.execute(
                    f"""select customer_id, extended_data_raw, {select} from wh.loyalty_raw.carecloud_point_history
                        where extended_data_raw like '{{%' and json_valid(extended_data_raw)""").fetchall():
                values = {c: _scalar(v) for c, v in zip(cols, row[2:]) if v is not None}
                found[(row[0], row[1], json.dumps(dict(sorted(values.items())), ensure_ascii=False))] += 1
        return _counter_diff("carecloud extended_data scalar columns", expected, found, 3)

    def capillary(self, customers: list[str] | None = None) -> list[Diff]:
        cust = _in("customer_id", customers)
        per_customer = self.multiset(
            "capillary_customer_transfers",
            f"""select customer_id, transfer_id, transfer_type,
                       case when transfer_type = 'DEDUCTION' then -points_transferred else points_transferred end
                from truth_cap where true {cust}""",
            f"""select customer_id, transfer_id, transfer_type, points_signed::double
                from wh.loyalty_raw.capillary_customer_transfers where true {cust}""")
        if customers is not None:
            tids = f"transfer_id in (select transfer_id from truth_cap where true {cust})"
            wh_tids = (f"transfer_id in (select transfer_id from wh.loyalty_raw.capillary_customer_transfers "
                       f"where true {cust})")
        else:
            tids = wh_tids = "true"
        transfers = self.multiset(
            "capillary_points_transfers",
            f"select distinct {CAP_TRANSFER_FIELDS} from truth_cap where {tids}",
            f"select {CAP_TRANSFER_FIELDS} from wh.loyalty_raw.capillary_points_transfers where {wh_tids}")
        diffs = [per_customer, transfers]
        if customers is None:
            parties_truth = """
                select distinct from_user_id as user_id, from_first_name as first_name, from_last_name as last_name,
                       from_external_id as external_id from truth_cap where from_user_id is not null
                union
                select distinct to_user_id, to_first_name, to_last_name, to_external_id
                from truth_cap where to_user_id is not null"""
            parties_wh = ("select user_id, first_name, last_name, external_id "
                          "from wh.loyalty_raw.capillary_transfer_parties"
                          if self.has("loyalty_raw.capillary_transfer_parties") else  # none loaded: all missing
                          "select null::bigint, null::varchar, null::varchar, null::varchar where false")
            diffs.append(self.multiset("capillary_transfer_parties", parties_truth, parties_wh))
        return diffs

    def ledger(self) -> list[Diff]:
        """fct_points_ledger against the truth: every CareCloud record once (same customer, instant and amount up
        to the sign convention), every unique transfer twice (out of the sender, into the receiver)."""
        led = "wh.loyalty.fct_points_ledger"
        cc = self.multiset(
            "fct_points_ledger (carecloud)",
            # a record whose time the API sent broken has no instant to place it at; it is checked in the raw table
            "select customer_id, epoch_ms(recorded_at), abs(point_amount) from truth_cc where recorded_at is not null",
            f"select customer_id, epoch_ms(occurred_at), abs(points::double) from {led} "
            "where source_system = 'carecloud' and occurred_at is not null")
        cap = self.multiset(
            "fct_points_ledger (capillary)",
            """with t as (select distinct transfer_id, points_transferred, transferred_at from truth_cap)
               select transfer_id, 'transfer_out', -points_transferred, epoch_ms(transferred_at) from t
               union all
               select transfer_id, 'transfer_in', points_transferred, epoch_ms(transferred_at) from t""",
            f"select transfer_id, movement_type, points::double, epoch_ms(occurred_at) from {led} "
            "where source_system = 'capillary'")
        return [cc, cap]

    def duplicates(self) -> dict[str, int]:
        keys = {
            "loyalty_raw.carecloud_point_history": "record_key",
            "loyalty_raw.capillary_customer_transfers": "customer_id, transfer_id",
            "loyalty_raw.capillary_points_transfers": "transfer_id",
            "loyalty_raw.capillary_transfer_parties": "user_id",
            "loyalty.fct_points_ledger": "ledger_key",
        }
        for rel in self.wh_tables:
            if rel.startswith("loyalty_raw.carecloud_point_history__"):
                keys[rel] = "record_key, _idx"
        return {f"{rel}({key})": self.dup_count(f"wh.{rel}", key) for rel, key in keys.items() if self.has(rel)}


def _counter_diff(name: str, expected: Counter, found: Counter, sample: int) -> Diff:
    missing, extra = expected - found, found - expected
    return Diff(name, sum(expected.values()), sum(found.values()), sum(missing.values()), sum(extra.values()),
                list(missing)[:sample], list(extra)[:sample])


def _snake(key: str) -> str:
    from dlt.common.normalizers.naming.snake_case import NamingConvention

    return NamingConvention().normalize_identifier(key)


def _item(item: Any, flat: bool = False) -> str:
    """One list item as comparable text: numbers as floats, nested objects flattened the way dlt names columns."""
    if not isinstance(item, dict):
        item = {"value": item}
    out: dict[str, Any] = {}

    def walk(obj: dict, prefix: str) -> None:
        for k, v in obj.items():
            name = k if flat else (prefix + "__" if prefix else "") + _snake(k)
            if isinstance(v, dict) and not flat:
                walk(v, name)
            elif v is None:
                continue
            elif isinstance(v, bool) or not isinstance(v, (int, float)):
                out[name] = v if isinstance(v, (bool, str)) else str(v)
            else:
                out[name] = float(v)

    walk(item, "")
    return json.dumps(out, sort_keys=True, ensure_ascii=False, default=str)


def _scalar(value: Any) -> Any:
    """A warehouse cell as the JSON value it came from: numbers as floats, dates as ISO text."""
    if isinstance(value, bool) or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _ts(value: datetime) -> str:
    """A timestamptz literal (views cannot take parameters)."""
    if value.year >= 9999:
        return "'infinity'::timestamptz"
    return f"'{value.isoformat()}'::timestamptz"


def _window(column: str, start: datetime | None, until: datetime) -> str:
    """`column` in [start, until); no lower bound when `start` is None."""
    upper = f"{column} < {_ts(until)}"
    return upper if start is None else f"{column} >= {_ts(start)} and {upper}"


def _in(column: str, values: list[str] | None) -> str:
    if values is None:
        return ""
    if not values:
        return " and false"
    quoted = ", ".join("'" + v.replace("'", "''") + "'" for v in values)
    return f" and {column} in ({quoted})"


def compare(warehouse: Any, truth: Any, *, until: datetime, initial_start: datetime | None = None,
            sources: tuple[str, ...] = ("carecloud", "capillary"), ledger: bool = True,
            bad_time_rows: str = "loaded") -> Comparison:
    """The whole warehouse against the truth: raw tables of `sources` (with child tables and extended columns),
    the ledger when `ledger`, key uniqueness. The truth is what has an instant in [initial_start, until); without
    `initial_start`, everything before `until` (then a record the run left out for being too old is missing)."""
    ch = Checker(warehouse, truth, until=until, initial_start=initial_start)
    try:
        diffs: list[Diff] = []
        if "carecloud" in sources:
            diffs += ch.carecloud(bad_time_rows=bad_time_rows)
            diffs.append(ch.children())
            diffs.append(ch.scalars())
        if "capillary" in sources:
            diffs += ch.capillary()
        if ledger:
            diffs += ch.ledger()
        return Comparison(diffs, ch.duplicates())
    finally:
        ch.close()


def state_not_ahead_of_data(warehouse: Any, truth: Any, *, initial_start: datetime) -> Comparison:
    """The invariant that must hold after any crash, before the rerun: the warehouse holds nothing the API does not
    have (no doubles), and for every customer the bookkeeping calls done up to `last_success_end` = E, every truth
    row before E that the API showed at E is loaded (a window is never marked done before its rows are committed).
    Runs here pass `--until` = the sandbox's frozen now, so E is also the instant the API was read at; a late record
    that appeared after E is the next lookback's job, not a missing row."""
    if not warehouse_exists(warehouse):
        return Comparison([], {})
    ch = Checker(warehouse, truth, until=datetime.max.replace(tzinfo=initial_start.tzinfo),
                 initial_start=initial_start)
    try:
        diffs: list[Diff] = []
        if not ch.has("loyalty_raw._customer_sync_state"):
            done = "select null::varchar as source, null::varchar as customer_id, null::timestamptz as e where false"
        else:
            done = ("select source, customer_id, last_success_end as e from wh.loyalty_raw._customer_sync_state "
                    "where last_success_end is not null")
        ch.con.execute(f"create temp view done as {done}")
        start = _ts(initial_start)
        wh_cc = "wh.loyalty_raw.carecloud_point_history"
        if ch.has("loyalty_raw.carecloud_point_history"):
            # nothing doubled or invented, anywhere
            diffs.append(_subset(ch, "carecloud rows not in the truth (doubled or invented)",
                                 f"select {CC_WH} from {wh_cc} where recorded_at is not null",
                                 f"select {CC_TRUTH} from truth_cc_all where recorded_at is not null"))
            diffs.append(_subset(ch, "carecloud rows without a time not in the truth (doubled or invented)",
                                 f"select {CC_WH_NOTIME} from {wh_cc} where recorded_at is null",
                                 f"select {CC_TRUTH_NOTIME} from truth_cc_all where recorded_at is null"))
            # every truth row before the customer's recorded end is there
            diffs.append(_subset(ch, "carecloud rows before last_success_end missing",
                                 f"""select {CC_TRUTH} from truth_cc_all t where t.recorded_at >= {start}
                                     and t.recorded_at < (select d.e from done d where d.source = 'carecloud'
                                                          and d.customer_id = t.customer_id)
                                     and t.visible_from <= (select d.e from done d where d.source = 'carecloud'
                                                            and d.customer_id = t.customer_id)""",
                                 f"select {CC_WH} from {wh_cc}"))
        if ch.has("loyalty_raw.capillary_customer_transfers"):
            wh_ct = ("select customer_id, transfer_id, transfer_type, points_signed::double "
                     "from wh.loyalty_raw.capillary_customer_transfers")
            t_ct = """select customer_id, transfer_id, transfer_type,
                      case when transfer_type = 'DEDUCTION' then -points_transferred else points_transferred end
                      from truth_cap_all t"""
            diffs.append(_subset(ch, "capillary rows not in the truth (doubled or invented)", wh_ct, t_ct))
            diffs.append(_subset(ch, "capillary rows before last_success_end missing",
                                 t_ct + f""" where t.transferred_at >= {start}
                                     and t.transferred_at < (select d.e from done d where d.source = 'capillary'
                                                             and d.customer_id = t.customer_id)
                                     and t.visible_from <= (select d.e from done d where d.source = 'capillary'
                                                            and d.customer_id = t.customer_id)""",
                                 wh_ct))
        return Comparison(diffs, ch.duplicates())
    finally:
        ch.close()


def _subset(ch: Checker, name: str, sub_sql: str, sup_sql: str, params: dict | None = None) -> Diff:
    """Rows of `sub_sql` that `sup_sql` lacks, as a multiset (reported as `missing`)."""
    c = ch.con
    n_sub = c.execute(f"select count(*) from ({sub_sql})", params or {}).fetchone()[0]
    n_sup = c.execute(f"select count(*) from ({sup_sql})", params or {}).fetchone()[0]
    q = f"({sub_sql}) except all ({sup_sql})"
    missing = c.execute(f"select count(*) from ({q})", params or {}).fetchone()[0]
    d = Diff(name, n_sub, n_sup, missing=missing)
    if missing:
        d.missing_sample = c.execute(q + " limit 5", params or {}).fetchall()
    return d
