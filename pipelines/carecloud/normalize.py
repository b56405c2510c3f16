"""CareCloud records -> Arrow tables, in batches spanning many customers.

Per record only what cannot be vectorised runs in Python: the record key (a hash of the fields as sent plus the
occurrence number among identical records) and the parse of `extended_data`. Time parsing, the UTC conversion, the
window filter and all column building are Arrow compute over the whole batch. The tables go to dlt as Arrow, so
dlt's row-by-row normalizer never runs.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.carecloud.settings import CHILD_TABLE_PREFIX, KEY_FIELDS, POINT_HISTORY_TABLE, TEXT_FIELDS
from pipelines.columns import ColumnTypes, Problem, build_sparse_columns, column_name, convert
from pipelines.state import Issue
from pipelines.windows import Window, local_to_utc

SOURCE = "carecloud"
TS_UTC = pa.timestamp("us", tz="UTC")
TS_LOCAL = pa.timestamp("us")
_KNOWN = frozenset(KEY_FIELDS)
_FIXED_COLUMNS = frozenset(("record_key", "customer_id", "point_amount", "point_history_record_time", "recorded_at",
                            "extended_data_raw", "_loaded_run_id", *TEXT_FIELDS))
MAX_ISSUES_PER_CODE = 200  # per batch and code; more are summarised in one issue (a flood helps nobody)


def record_key(customer_id: str, canonical: bytes, occurrence: int) -> str:
    return hashlib.sha256(b"%s\x1f%s\x1f%d" % (customer_id.encode(), canonical, occurrence)).hexdigest()[:32]


def _flatten(obj: dict, prefix: str, row: int, sparse: dict[str, list], children: dict[str, list], key_ref: list,
             depth: int = 0) -> None:
    for k, v in obj.items():
        name = f"{prefix}__{column_name(k)}"
        if isinstance(v, dict) and depth < 4:
            _flatten(v, name, row, sparse, children, key_ref, depth + 1)
        elif isinstance(v, list):
            children[name].append((row, v))
        else:
            sparse[name].append((row, v))


@dataclass
class PointHistoryBatch:
    """Accumulates customers' records; `build()` returns the Arrow tables of the rows inside their windows."""

    timezone: str
    run_id: str
    types: ColumnTypes
    n: int = 0
    customer_ids: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    amounts: list[Any] = field(default_factory=list)
    texts: dict[str, list[Any]] = field(default_factory=lambda: {f: [] for f in TEXT_FIELDS})
    times: list[Any] = field(default_factory=list)
    ext_raw: list[str | None] = field(default_factory=list)
    # per customer: (first row, row count, window start us, window end us)
    spans: list[tuple[int, int, int, int]] = field(default_factory=list)
    sparse: dict[str, list[tuple[int, Any]]] = field(default_factory=lambda: defaultdict(list))
    children: dict[str, list[tuple[int, list]]] = field(default_factory=lambda: defaultdict(list))
    row_issues: list[tuple[int, str, str, str | None]] = field(default_factory=list)
    unknown_seen: set[str] = field(default_factory=set)

    def __len__(self) -> int:
        return self.n

    def add(self, customer_id: str, window: Window, records: list[Any]) -> None:
        first = self.n
        seen: dict[bytes, int] = {}
        for rec in records:
            if not isinstance(rec, dict):
                self.row_issues.append((-1, "bad_record", f"record is not an object: {str(rec)[:200]}", customer_id))
                continue
            row = self.n
            canonical = orjson.dumps([rec.get(f) for f in KEY_FIELDS])
            occurrence = seen.get(canonical, 0)
            seen[canonical] = occurrence + 1
            self.keys.append(record_key(customer_id, canonical, occurrence))
            self.customer_ids.append(customer_id)
            self.amounts.append(rec.get("point_amount"))
            for f, col in self.texts.items():
                col.append(rec.get(f))
            t = rec.get("point_history_record_time")
            self.times.append(t if type(t) is str else None)
            ext = rec.get("extended_data")
            if ext is None or type(ext) is str:
                self.ext_raw.append(ext)
                parsed: Any = None
                if ext:
                    try:
                        parsed = orjson.loads(ext)
                    except orjson.JSONDecodeError:
                        self.row_issues.append((row, "invalid_extended_data",
                                                "extended_data is not valid JSON; kept raw in extended_data_raw",
                                                ext[:500]))
            else:
                # an object sent as-is (the readme renders the field as json): keep its JSON text as the raw value
                self.ext_raw.append(orjson.dumps(ext).decode())
                parsed = ext
            if isinstance(parsed, dict):
                _flatten(parsed, "extended_data", row, self.sparse, self.children, self.keys)
            elif parsed is not None:
                self.row_issues.append((row, "unexpected_extended_data",
                                        f"extended_data is JSON but not an object ({type(parsed).__name__}); kept raw",
                                        None))
            if len(rec) > len(KEY_FIELDS) or not _KNOWN.issuperset(rec):
                for k in rec.keys() - _KNOWN:
                    name = column_name(k)
                    if name in _FIXED_COLUMNS or name.startswith("extended_data"):
                        name = f"extra__{name}"
                    v = rec[k]
                    self.sparse[name].append((row, v if not isinstance(v, (dict, list)) else orjson.dumps(v).decode()))
                    if k not in self.unknown_seen:
                        self.unknown_seen.add(k)
                        self.row_issues.append((row, "unknown_field", f"new field {k!r} loaded as column {name!r}",
                                                None))
            self.n += 1
        count = self.n - first
        if count:
            self.spans.append((first, count, _us(window.start), _us(window.end)))

    # ------------------------------------------------------------------ build
    def build(self) -> tuple[list[tuple[str, pa.Table]], list[Issue]]:
        issues: list[Issue] = []
        for row, code, message, detail in self.row_issues:
            if row < 0:
                issues.append(Issue(SOURCE, detail, code, message))
        if not self.n:
            return [], issues
        times = pa.array(self.times, pa.string())
        local = pc.strptime(pc.replace_substring(times, "T", " "), format="%Y-%m-%d %H:%M:%S", unit="us",
                            error_is_null=True)
        recorded = self._utc(local, times)
        for row in np.flatnonzero(local.is_null().to_numpy(zero_copy_only=False)).tolist():
            raw = self.times[row]
            self.row_issues.append((row, "bad_record_time",
                                    "point_history_record_time missing or not a valid time; row kept with null times",
                                    repr(raw)[:100]))
        keep_mask = self._window_mask(recorded)
        keep = np.flatnonzero(keep_mask)
        kept = keep.tolist()
        take = pa.array(keep, pa.int64())

        problems: list[Problem] = []
        base = {
            "record_key": pa.array(self.keys, pa.string()),
            "customer_id": pa.array(self.customer_ids, pa.string()),
        }
        table = pa.table(base).take(take)
        cols: dict[str, pa.Array] = {"record_key": table["record_key"], "customer_id": table["customer_id"]}
        amounts = [self.amounts[i] for i in kept]
        cols["point_amount"] = convert(amounts, "double", "point_amount", problems)
        for f, values in self.texts.items():
            cols[f] = convert([values[i] for i in kept], "text", f, problems)
        cols["point_history_record_time"] = local.take(take)
        cols["recorded_at"] = recorded.take(take)
        cols["extended_data_raw"] = pa.array(self.ext_raw, pa.string()).take(take)
        dynamic = build_sparse_columns(POINT_HISTORY_TABLE, self.n, self.sparse, self.types, kept, problems)
        cols.update(dynamic)
        cols["_loaded_run_id"] = pa.array([self.run_id] * len(kept), pa.string())
        out = [(POINT_HISTORY_TABLE, pa.table(cols))]

        kept_rows = set(kept)
        keep_pos = {row: i for i, row in enumerate(kept)}
        kept_customers = cols["customer_id"].to_pylist() if (problems or self.row_issues) else []
        for row, code, message, detail in self.row_issues:
            if row >= 0 and row in kept_rows:
                issues.append(Issue(SOURCE, self.customer_ids[row], code, message,
                                    _detail(self.keys[row], detail)))
        for i, name, code, raw in problems:
            issues.append(Issue(SOURCE, kept_customers[i], code,
                                f"{name}: {type(raw).__name__} value {'coerced' if code == 'type_coerced' else 'not loadable, stored null'}",
                                _detail(cols["record_key"][i].as_py(), repr(raw)[:200])))

        for name, lists in self.children.items():
            child = self._child_table(CHILD_TABLE_PREFIX + name[len("extended_data__"):], lists, keep_pos, issues)
            if child is not None:
                out.append(child)
        # parent rows were dropped (outside window) for the child rows too; summarise floods
        return out, _cap(issues)

    def _utc(self, local: pa.Array, times: pa.Array) -> pa.Array:
        """Local wall time -> UTC with fold=0 (earlier instant in the repeated hour). Arrow's 'earliest' for a
        nonexistent time differs from zoneinfo's reading, so the rare spring-gap rows go through the reference
        function (`windows.local_to_utc`) to keep one documented convention."""
        early = pc.assume_timezone(local, timezone=self.timezone, ambiguous="earliest", nonexistent="earliest")
        late = pc.assume_timezone(local, timezone=self.timezone, ambiguous="earliest", nonexistent="latest")
        early = early.cast(TS_UTC)
        gap = pc.fill_null(pc.not_equal(early, late.cast(TS_UTC)), False)
        if pc.any(gap).as_py():
            values = early.to_pylist()
            texts = times.to_pylist()
            for i in np.flatnonzero(gap.to_numpy(zero_copy_only=False)).tolist():
                values[i] = local_to_utc(texts[i], self.timezone)
            early = pa.array(values, TS_UTC)
        return early

    def _window_mask(self, recorded: pa.Array) -> np.ndarray:
        """True for rows inside their customer's window; rows without a usable time are kept (they are recorded
        as issues; dropping them would lose them, and their key makes a re-fetch harmless)."""
        starts = np.empty(self.n, dtype=np.int64)
        ends = np.empty(self.n, dtype=np.int64)
        for first, count, s, e in self.spans:
            starts[first:first + count] = s
            ends[first:first + count] = e
        us = recorded.cast(pa.int64()).to_numpy(zero_copy_only=False)
        valid = ~np.asarray(recorded.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        us = np.where(valid, us, 0)
        return np.where(valid, (us >= starts) & (us < ends), True)

    def _child_table(self, table_name: str, lists: list[tuple[int, list]], keep_pos: dict[int, int],
                     issues: list[Issue]) -> tuple[str, pa.Table] | None:
        keys: list[str] = []
        idx: list[int] = []
        sparse: dict[str, list[tuple[int, Any]]] = defaultdict(list)
        nested: dict[str, list] = defaultdict(list)
        for row, items in lists:
            if row not in keep_pos:
                continue
            key = self.keys[row]
            for j, item in enumerate(items):
                r = len(keys)
                keys.append(key)
                idx.append(j)
                if isinstance(item, dict):
                    _flatten(item, "", r, sparse, nested, keys)
                else:
                    sparse["__value"].append((r, item))
        if not keys:
            return None
        for name, cells in nested.items():  # lists inside list items: kept as JSON text
            sparse[name].extend((r, orjson.dumps(v).decode()) for r, v in cells)
        problems: list[Problem] = []
        renamed = {name[2:]: cells for name, cells in sparse.items()}
        dynamic = build_sparse_columns(table_name, len(keys), renamed, self.types, None, problems)
        for i, name, code, raw in problems:
            issues.append(Issue(SOURCE, None, code, f"{table_name}.{name}: {type(raw).__name__} value",
                                _detail(keys[i], repr(raw)[:200])))
        cols: dict[str, pa.Array] = {"record_key": pa.array(keys, pa.string()), "_idx": pa.array(idx, pa.int64())}
        cols.update(dynamic)
        cols["_loaded_run_id"] = pa.array([self.run_id] * len(keys), pa.string())
        return table_name, pa.table(cols)


def _us(instant: Any) -> int:
    return int(instant.timestamp() * 1_000_000)


def _detail(record_key: str, detail: str | None) -> str:
    return f"record_key={record_key}" + (f"; {detail}" if detail else "")


def _cap(issues: list[Issue]) -> list[Issue]:
    by_code: dict[str, int] = defaultdict(int)
    out = []
    for issue in issues:
        by_code[issue.code] += 1
        if by_code[issue.code] <= MAX_ISSUES_PER_CODE:
            out.append(issue)
    for code, count in by_code.items():
        if count > MAX_ISSUES_PER_CODE:
            out.append(Issue(SOURCE, None, code, f"{count - MAX_ISSUES_PER_CODE} more {code} issues in this batch"))
    return out
