"""CareCloud records -> Arrow tables, in batches spanning many customers.

Per record only what cannot be vectorised runs in Python: the record key (a hash of the fields as sent plus the
occurrence number among identical records) and the orjson parse of `extended_data`. Time parsing, the UTC
conversion, the window filter, the flattening of `extended_data` (parsed dicts -> one Arrow struct array -> leaf
columns and list children) and all column building are Arrow compute over the whole batch. The tables go to dlt as
Arrow, so dlt's row-by-row normalizer never runs.

If Arrow cannot put a batch's `extended_data` into one struct type (a key that is a number in one record and a
string in another), the batch is split key by key (`_leaves_by_key`): every key whose values Arrow can type still
goes through Arrow, and only the values of a key whose type drifts are typed one by one, by the rules of
`pipelines.columns` (coerce or null, and record it), exactly as the plain-Python path would type them. Only list
items that Arrow cannot unify send a batch to that plain-Python path, which has the same column names and rules.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.carecloud.settings import CHILD_TABLE_PREFIX, KEY_FIELDS, POINT_HISTORY_TABLE, TEXT_FIELDS
from pipelines.columns import (
    ARROW_TYPES, BOOL, DOUBLE, TEXT, ColumnTypes, Problem, build_sparse_columns, child_name, column_name, convert,
    problem_message,
)
from pipelines.state import Issue
from pipelines.windows import Window, local_to_utc

SOURCE = "carecloud"
TS_UTC = pa.timestamp("us", tz="UTC")
EXT = "extended_data"
_KNOWN = frozenset(KEY_FIELDS)
_AMOUNT, _TIME, _EXT = KEY_FIELDS.index("point_amount"), KEY_FIELDS.index("point_history_record_time"), \
    KEY_FIELDS.index("extended_data")
_TEXT_POS = [(f, KEY_FIELDS.index(f)) for f in TEXT_FIELDS]
_FIXED_COLUMNS = frozenset(("record_key", "customer_id", "point_amount", "point_history_record_time", "recorded_at",
                            "extended_data_raw", "_loaded_run_id", *TEXT_FIELDS))
MAX_ISSUES_PER_CODE = 200  # per batch and code; more are summarised in one issue (a flood helps nobody)
MAX_DEPTH = 4              # nested objects deeper than this are kept as JSON text
CONFLICT = "extended_data_conflict"

Leaf = tuple[tuple[str, ...], Any]  # (key path as sent, values): one spelling's contribution to a column
# (row, column, kept key path, kept value, other key path, its value): two spellings in one record disagree
Conflict = tuple[int, str, tuple[str, ...], Any, tuple[str, ...], Any]


def record_key(customer_id: str, canonical: bytes, occurrence: int) -> str:
    """32 hex chars of sha256 over customer, the key fields as sent (JSON) and the occurrence number."""
    return _sha256(b"%s\x1f%s\x1f%d" % (customer_id.encode(), canonical, occurrence)).hexdigest()[:32]


_sha256 = hashlib.sha256


def key_amount(value: Any) -> Any:
    """`point_amount` as it counts for a record's identity: 50, 50.0, "50" and "50.0" are one value. Without this a
    vendor release that starts sending the number as a string gives every record re-fetched in the lookback a new
    key, and merge loads it a second time (tests/test_reliability_input.py)."""
    if type(value) is int or type(value) is bool:
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    if number != number or number in (float("inf"), float("-inf")):
        return value
    return int(number) if number.is_integer() else number


# ---------------------------------------------------------------------------------------------- key collisions
# Keys that differ only in case, spacing, accents or camelCase ("purchase_value", "Purchase Value", "PurchaseValue";
# "poznámka", "Poznámka ") get ONE column name from dlt's snake_case, so existing warehouses keep their columns. Every
# row's column then holds the value of whichever of those keys the record carries. When one record carries several
# with non-null values, the rule (docs/architecture.md) is: the key spelled exactly as its column name wins, else
# the key that sorts first by code point; key order inside the JSON does not count (JSON objects are unordered and
# a vendor may re-serialise them). Every other value that differs is recorded as `extended_data_conflict`; the raw
# JSON keeps all of them.
def collision_rank(path: tuple[str, ...]) -> tuple[bool, tuple[str, ...]]:
    """Sort key of a spelling among colliding ones: exact spellings first, then code point order of the path."""
    return any(k != column_name(k) for k in path), path


def same_value(a: Any, b: Any) -> bool:
    """JSON equality: 1 == 1.0, but neither is true or "1"."""
    return a == b and (type(a) is bool) == (type(b) is bool) and (type(a) is str) == (type(b) is str)


def leaf_values(obj: dict, prefix: str = EXT, depth: int = 0, path: tuple[str, ...] = ()
                ) -> Iterator[tuple[str, tuple[str, ...], Any, bool]]:
    """(column name, key path, value, is a list) for every leaf of a parsed extended_data object, the way both
    flattening paths name them. For the rare records with colliding keys and for the warehouse check
    (`pipelines.carecloud.audit`); the hot loops inline the same walk."""
    for k, v in obj.items():
        name = child_name(prefix, k) if prefix else column_name(k)
        here = (*path, k)
        t = type(v)
        if t is dict and depth < MAX_DEPTH:
            yield from leaf_values(v, name, depth + 1, here)
        elif t is list:
            yield name, here, v, True
        elif t is dict:
            yield name, here, orjson.dumps(v).decode(), False
        else:
            yield name, here, v, False


def _at(obj: Any, path: tuple[str, ...]) -> Any:
    for k in path:
        obj = obj[k]
    return obj


def _resolve_rows(name: str, cells: list[tuple[int, Any]], obj_of: Callable[[int], dict], prefix: str,
                  is_list: bool, conflicts: list[Conflict]) -> list[tuple[int, Any]]:
    """The Python path's collision rule: cells of one column whose rows repeat (two spellings in one record)
    become one cell per row; the record is walked again to learn each value's key path."""
    out: list[tuple[int, Any]] = []
    j = 0
    while j < len(cells):
        row = cells[j][0]
        end = j + 1
        while end < len(cells) and cells[end][0] == row:
            end += 1
        if end - j == 1:
            out.append(cells[j])
        else:
            found = sorted(((p, v) for n, p, v, lst in leaf_values(obj_of(row), prefix) if n == name and lst == is_list),
                           key=lambda c: collision_rank(c[0]))
            present = [(p, v) for p, v in found if v is not None]
            if present:
                kept_path, kept = present[0]
                for p, v in present[1:]:
                    if not same_value(kept, v):
                        conflicts.append((row, name, kept_path, kept, p, v))
                out.append((row, kept))
            else:
                out.append((row, None))
        j = end
    return out


# ---------------------------------------------------------------------------------------------- Arrow flattening
def _arrow_kind(t: pa.DataType) -> str | None:
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return DOUBLE
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return TEXT
    if pa.types.is_boolean(t):
        return BOOL
    return None


def _json_text(arr: pa.Array) -> pa.Array:
    return pa.array([None if v is None else orjson.dumps(v).decode() for v in arr.to_pylist()], pa.string())


_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError)


def _leaves(arr: pa.StructArray, prefix: str, cols: dict[str, list[Leaf]], lists: dict[str, list[Leaf]],
            depth: int = 0, path: tuple[str, ...] = ()) -> None:
    """Struct -> {column: [(key path, array), ...]} for scalar leaves (nested objects joined with `__`, dlt style)
    and {name: [(key path, list array), ...]} for list-valued keys (child tables). A name gets several arrays when
    several spellings of a key normalise to it; `_merge_leaves` makes them one."""
    for f, child in zip(arr.type, arr.flatten()):
        name = child_name(prefix, f.name) if prefix else column_name(f.name)
        _leaf(child, name, (*path, f.name), depth, cols, lists)


def _leaf(arr: pa.Array, name: str, here: tuple[str, ...], depth: int, cols: dict[str, list[Leaf]],
          lists: dict[str, list[Leaf]]) -> None:
    """One key's array (a struct field at `depth`) into `cols` / `lists`, as `_leaves` describes."""
    t = arr.type
    if pa.types.is_struct(t) and depth < MAX_DEPTH:
        _leaves(arr, name, cols, lists, depth + 1, here)
    elif pa.types.is_list(t) or pa.types.is_large_list(t):
        lists.setdefault(name, []).append((here, arr))
    elif pa.types.is_null(t):
        return
    elif _arrow_kind(t) is not None:
        cols.setdefault(name, []).append((here, arr))
    else:
        cols.setdefault(name, []).append((here, _json_text(arr)))


def _leaves_by_key(objs: list[dict | None], prefix: str, cols: dict[str, list[Leaf | tuple[tuple[str, ...], list]]],
                   lists: dict[str, list[Leaf]], depth: int = 0, path: tuple[str, ...] = ()) -> None:
    """`_leaves` for objects Arrow cannot put into one struct type, one key at a time: each key's values are one
    `pa.array` when Arrow can type them (nearly all keys); a key whose values drift is split into its objects
    (flattened the same way, one level down), its lists (a child table) and its scalars, which stay a plain list
    that `_typed` types value by value with the column's rules, as the Python path does. Costs one Python step
    per key and record (the split into columns) instead of the Python path's flattening, naming and typing of
    every value. Raises _NeedsPython for list items Arrow cannot unify."""
    n = len(objs)
    columns: dict[str, list[Any]] = {}  # key -> its value in every row (None where absent), keys in order seen
    for i, obj in enumerate(objs):
        if obj is not None:
            for k, v in obj.items():
                values = columns.get(k)
                if values is None:
                    values = columns[k] = [None] * n
                values[i] = v
    for k, values in columns.items():
        name = child_name(prefix, k) if prefix else column_name(k)
        here = (*path, k)
        try:
            arr = pa.array(values)
        except _ARROW_ERRORS:
            pass
        else:
            _leaf(arr, name, here, depth, cols, lists)
            continue
        objects: list[Any] = [None] * len(values)
        items: list[Any] = [None] * len(values)
        scalars: list[Any] = [None] * len(values)
        for i, v in enumerate(values):
            t = type(v)
            if t is dict:
                if depth < MAX_DEPTH:
                    objects[i] = v
                else:  # deeper than flattened: its JSON text, like any scalar of the column
                    scalars[i] = orjson.dumps(v).decode()
            elif t is list:
                items[i] = v
            else:
                scalars[i] = v
        if any(o is not None for o in objects):
            _leaves_by_key(objects, name, cols, lists, depth + 1, here)
        if any(v is not None for v in items):
            try:
                lists.setdefault(name, []).append((here, pa.array(items)))
            except _ARROW_ERRORS:
                raise _NeedsPython(name) from None
        if any(v is not None for v in scalars):
            try:
                arr = pa.array(scalars)
            except _ARROW_ERRORS:
                cols.setdefault(name, []).append((here, scalars))  # typed value by value in `_typed`
            else:
                _leaf(arr, name, here, depth, cols, lists)


class _NeedsPython(Exception):
    """List items Arrow cannot put into one type (under one key or colliding ones): the batch takes the Python
    path."""


def _merge_leaves(found: dict[str, list[Leaf]], conflicts: list[Conflict], lists: bool = False
                  ) -> dict[str, pa.Array | list]:
    """One array per column. A single spelling (the usual case) is taken as it is; several spellings of one column
    are merged row by row in `collision_rank` order: a row gets the best-ranked non-null value, and every other
    non-null value that differs is recorded in `conflicts`. Only batches that carry collisions pay for this. A
    spelling whose values Arrow could not type comes as a plain list (`_leaves_by_key`) and is merged as values."""
    out: dict[str, pa.Array | list] = {}
    for name, leaves in found.items():
        if len(leaves) == 1:
            out[name] = leaves[0][1]
            continue
        leaves = sorted(leaves, key=lambda leaf: collision_rank(leaf[0]))
        arrays = [a for _, a in leaves]
        if lists:
            if len({a.type for a in arrays}) > 1:  # item types differ: merge as values, Arrow unifies the items
                merged_values = _merge_values(name, leaves, conflicts)
                try:
                    out[name] = pa.array(merged_values)
                except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
                    raise _NeedsPython(name) from None
                continue
        else:
            kinds = {TEXT, DOUBLE} if any(type(a) is list for a in arrays) else \
                {_arrow_kind(a.type) or TEXT for a in arrays}
            if len(kinds) == 1:
                target = ARROW_TYPES[kinds.pop()]
                arrays = [a if a.type == target else a.cast(target) for a in arrays]
            else:  # e.g. a number under one spelling, a string under another: merged as values
                out[name] = _merge_values(name, leaves, conflicts)
                continue
        merged = arrays[0]
        for j in range(1, len(arrays)):
            other = arrays[j]
            both = pc.and_(merged.is_valid(), other.is_valid())
            if pc.any(both).as_py():
                # the rows two spellings share, as Python values once (not one Arrow scalar per cell)
                rows = np.flatnonzero(both.to_numpy(zero_copy_only=False))
                at = pa.array(rows, pa.int64())
                values = other.take(at).to_pylist()
                earlier = [a.take(at).to_pylist() for a in arrays[:j]]
                for r, i in enumerate(rows.tolist()):
                    winner = next(k for k in range(j) if earlier[k][r] is not None)
                    kept = earlier[winner][r]
                    if not same_value(kept, values[r]):
                        conflicts.append((i, name, leaves[winner][0], kept, leaves[j][0], values[r]))
            merged = pc.if_else(merged.is_valid(), merged, other)
        out[name] = merged
    return out


def _merge_values(name: str, candidates: list[tuple[tuple[str, ...], pa.Array | list]], conflicts: list[Conflict]
                  ) -> list:
    """`_merge_leaves` for spellings whose values are of different kinds, as Python values, best rank first; each
    later spelling is visited at its non-null rows only."""
    first = candidates[0][1]
    merged = list(first) if type(first) is list else first.to_pylist()
    source: dict[int, int] = {}  # rows a later spelling filled -> that spelling
    for j in range(1, len(candidates)):
        rows, values = _present(candidates[j][1])
        for i, value in zip(rows, values):
            kept = merged[i]
            if kept is None:
                merged[i] = value
                source[i] = j
            elif not same_value(kept, value):
                conflicts.append((i, name, candidates[source.get(i, 0)][0], kept, candidates[j][0], value))
    return merged


def _present(values: pa.Array | list) -> tuple[list[int], list]:
    """(rows, values) of a column's non-null cells."""
    if type(values) is list:
        rows = [i for i, v in enumerate(values) if v is not None]
        return rows, [values[i] for i in rows]
    at = np.flatnonzero(values.is_valid().to_numpy(zero_copy_only=False))
    return at.tolist(), values.take(pa.array(at, pa.int64())).to_pylist()


def _typed(table: str, cols: dict[str, pa.Array | list], types: ColumnTypes, problems: list[Problem]
           ) -> dict[str, pa.Array]:
    """Arrow-inferred columns cast to the kind the warehouse column already has (or gets now); a plain list (a
    column merged from spellings of different kinds) is typed value by value."""
    out = {}
    for name, arr in cols.items():
        if isinstance(arr, list):
            present = [v for v in arr if v is not None]
            out[name] = convert(arr, types.kind(table, name, present), name, problems)
            continue
        kind = _arrow_kind(arr.type) or TEXT
        want = types.kind_for(table, name, kind)
        if want == kind:
            out[name] = arr.cast(pa.float64()) if kind == DOUBLE and arr.type != pa.float64() else arr
        else:
            out[name] = convert(arr.to_pylist(), want, name, problems)
    return out


def _list_children(lists: pa.Array) -> tuple[pa.Array, pa.Array, pa.Array]:
    """(parent row, position in the list, item) for every item of a list array."""
    parent = pc.list_parent_indices(lists)
    items = pc.list_flatten(lists)
    p = parent.to_numpy(zero_copy_only=False)
    if len(p):
        starts = np.concatenate([[0], np.flatnonzero(np.diff(p)) + 1])
        counts = np.diff(np.concatenate([starts, [len(p)]]))
        idx = np.arange(len(p)) - np.repeat(starts, counts)
    else:
        idx = np.zeros(0, dtype=np.int64)
    return parent, pa.array(idx, pa.int64()), items


# ---------------------------------------------------------------------------------------------- Python fallback
class _Names:
    """Column names of one batch's keys, per parent object; notices names that several spellings share, so only
    those columns are checked for two spellings in one record."""

    __slots__ = ("by_key", "spelling", "shared")

    def __init__(self) -> None:
        self.by_key: dict[tuple[str, str], str] = {}
        self.spelling: dict[str, tuple[str, str]] = {}
        self.shared: set[str] = set()

    def new(self, prefix: str, key: str) -> str:
        name = child_name(prefix, key) if prefix else column_name(key)
        self.by_key[prefix, key] = name
        if self.spelling.setdefault(name, (prefix, key)) != (prefix, key):
            self.shared.add(name)
        return name


def _flatten(obj: dict, prefix: str, row: int, sparse: dict[str, list], children: dict[str, list], names: _Names,
             depth: int = 0) -> None:
    by_key = names.by_key
    for k, v in obj.items():
        name = by_key.get((prefix, k)) or names.new(prefix, k)
        t = type(v)
        if t is not dict and t is not list:
            sparse[name].append((row, v))
        elif t is dict and depth < MAX_DEPTH:
            _flatten(v, name, row, sparse, children, names, depth + 1)
        elif t is list:
            children[name].append((row, v))
        else:
            sparse[name].append((row, orjson.dumps(v).decode()))


def _resolve_shared(names: _Names, sparse: dict[str, list], lists: dict[str, list], obj_of: Callable[[int], dict],
                    prefix: str, conflicts: list[Conflict]) -> None:
    """Applies the collision rule to every column a shared name feeds: the name itself and, when objects collide
    ("customer" / "Customer"), every column below it."""
    below = tuple(f"{n}__" for n in names.shared)
    for cells, is_list in ((sparse, False), (lists, True)):
        for name in list(cells):
            if name in names.shared or name.startswith(below):
                cells[name] = _resolve_rows(name, cells[name], obj_of, prefix, is_list, conflicts)


@dataclass
class PointHistoryBatch:
    """Accumulates customers' records; `build()` returns the Arrow tables of the rows inside their windows."""

    timezone: str
    run_id: str
    types: ColumnTypes
    n: int = 0
    keys: list[str] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)          # KEY_FIELDS values as sent
    # per customer: (customer id, first row, row count, window start us, window end us)
    spans: list[tuple[str, int, int, int, int]] = field(default_factory=list)
    extra: dict[str, list[tuple[int, Any]]] = field(default_factory=lambda: defaultdict(list))  # unknown fields
    row_issues: list[tuple[int, str, str, str | None]] = field(default_factory=list)
    customer_issues: list[Issue] = field(default_factory=list)
    unknown_seen: set[str] = field(default_factory=set)

    def __len__(self) -> int:
        return self.n

    def add(self, customer_id: str, window: Window, records: list[Any]) -> None:
        first = self.n
        seen: dict[bytes, int] = {}
        keys, rows, get_fields, sha256, dumps = self.keys, self.rows, KEY_FIELDS, _sha256, orjson.dumps
        prefix = customer_id.encode() + b"\x1f"  # record_key() inlined: this loop runs once per record
        for rec in records:
            if type(rec) is not dict:
                self.customer_issues.append(Issue(SOURCE, customer_id, "bad_record",
                                                  f"record is not an object: {str(rec)[:200]}"))
                continue
            vals = list(map(rec.get, get_fields))
            if type(vals[_AMOUNT]) is int:
                canonical = dumps(vals)
            else:
                key_vals = vals.copy()
                key_vals[_AMOUNT] = key_amount(vals[_AMOUNT])
                canonical = dumps(key_vals)
            occurrence = seen.get(canonical, 0)
            seen[canonical] = occurrence + 1
            keys.append(sha256(b"%s%s\x1f%d" % (prefix, canonical, occurrence)).hexdigest()[:32])
            rows.append(vals)
            if not _KNOWN.issuperset(rec):
                self._unknown_fields(rec, len(rows) - 1)
        self.n = len(rows)
        if self.n > first:
            self.spans.append((customer_id, first, self.n - first, _us(window.start), _us(window.end)))

    def _unknown_fields(self, rec: dict, row: int) -> None:
        for k in rec.keys() - _KNOWN:
            name = column_name(k)
            if name in _FIXED_COLUMNS or name.startswith(EXT):
                name = f"extra__{name}"
            v = rec[k]
            self.extra[name].append((row, v if not isinstance(v, (dict, list)) else orjson.dumps(v).decode()))
            if k not in self.unknown_seen:
                self.unknown_seen.add(k)
                self.row_issues.append((row, "unknown_field", f"new field {k!r} loaded as column {name!r}", None))

    # ------------------------------------------------------------------ build
    def build(self) -> tuple[list[tuple[str, pa.Table]], list[Issue]]:
        issues: list[Issue] = list(self.customer_issues)
        if not self.n:
            return [], issues
        columns = list(zip(*self.rows))
        times = pa.array([t if type(t) is str else None for t in columns[_TIME]], pa.string())
        local = pc.strptime(pc.replace_substring(times, "T", " "), format="%Y-%m-%d %H:%M:%S", unit="us",
                            error_is_null=True)
        recorded = self._utc(local, times)
        for row in np.flatnonzero(local.is_null().to_numpy(zero_copy_only=False)).tolist():
            self.row_issues.append((row, "bad_record_time",
                                    "point_history_record_time missing or not a valid time; row kept with null times",
                                    repr(columns[_TIME][row])[:100]))
        keep_np = np.flatnonzero(self._window_mask(recorded))
        kept: list[int] = keep_np.tolist()
        everything = len(kept) == self.n
        take = pa.array(keep_np, pa.int64())

        def pick(values: tuple) -> list:
            return list(values) if everything else [values[i] for i in kept]

        customer_ids: list[str] = []
        for cid, _, count, _, _ in self.spans:
            customer_ids.extend([cid] * count)
        keys = pick(tuple(self.keys))
        problems: list[Problem] = []
        cols: dict[str, pa.Array] = {
            "record_key": pa.array(keys, pa.string()),
            "customer_id": pa.array(pick(tuple(customer_ids)), pa.string()),
            "point_amount": convert(pick(columns[_AMOUNT]), DOUBLE, "point_amount", problems),
        }
        for f, pos in _TEXT_POS:
            cols[f] = convert(pick(columns[pos]), TEXT, f, problems)
        cols["point_history_record_time"] = local.take(take)
        cols["recorded_at"] = recorded.take(take)

        raw, parsed = self._parse_extended(pick(columns[_EXT]), kept)
        cols["extended_data_raw"] = pa.array(raw, pa.string())
        children: list[tuple[str, pa.Table]] = []
        conflicts: list[Conflict] = []
        ext_cols = self._extended_arrow(parsed, cols["record_key"], problems, children, issues, conflicts)
        if ext_cols is None:
            ext_cols = self._extended_python(parsed, keys, problems, children, issues, conflicts)
        cols.update(ext_cols)
        if self.extra:
            cols.update(build_sparse_columns(POINT_HISTORY_TABLE, self.n, self.extra, self.types, kept, problems))
        cols["_loaded_run_id"] = pa.array([self.run_id] * len(kept), pa.string())
        out = [(POINT_HISTORY_TABLE, pa.table(cols))] + children

        position = {row: i for i, row in enumerate(kept)} if not everything else None
        for row, code, message, detail in self.row_issues:
            i = row if everything else position.get(row)  # type: ignore[union-attr]
            if i is not None:
                issues.append(Issue(SOURCE, cols["customer_id"][i].as_py(), code, message, _detail(keys[i], detail)))
        for i, name, code, value in problems:
            issues.append(Issue(SOURCE, cols["customer_id"][i].as_py(), code, problem_message(name, code, value),
                                _detail(keys[i], repr(value)[:200])))
        for c in conflicts:
            issues.append(_conflict_issue(cols["customer_id"][c[0]].as_py(), keys[c[0]], POINT_HISTORY_TABLE, c))
        return out, _cap(issues)

    def _parse_extended(self, values: list[Any], kept: list[int]) -> tuple[list[str | None], list[dict | None]]:
        raw: list[str | None] = []
        parsed: list[dict | None] = []
        for i, ext in enumerate(values):
            if ext is None or type(ext) is str:
                raw.append(ext)
                if not ext:
                    parsed.append(None)
                    continue
                try:
                    value = orjson.loads(ext)
                except orjson.JSONDecodeError:
                    self.row_issues.append((kept[i], "invalid_extended_data",
                                            "extended_data is not valid JSON; kept raw in extended_data_raw",
                                            ext[:500]))
                    parsed.append(None)
                    continue
            else:
                # an object sent as-is (the readme renders the field as json): its JSON text is the raw value
                raw.append(orjson.dumps(ext).decode())
                value = ext
            if type(value) is dict:
                parsed.append(value)
            else:
                parsed.append(None)
                self.row_issues.append((kept[i], "unexpected_extended_data",
                                        f"extended_data is JSON but not an object ({type(value).__name__}); kept raw",
                                        None))
        return raw, parsed

    def _extended_arrow(self, parsed: list[dict | None], keys: pa.Array, problems: list[Problem],
                        children: list[tuple[str, pa.Table]], issues: list[Issue],
                        conflicts: list[Conflict]) -> dict[str, pa.Array] | None:
        found: dict[str, list[Leaf]] = {}
        found_lists: dict[str, list[Leaf]] = {}
        mine: list[Conflict] = []
        try:
            try:
                struct = pa.array(parsed)
            except _ARROW_ERRORS:  # a key's type drifts inside this batch: the other keys still go through Arrow
                _leaves_by_key(parsed, EXT, found, found_lists)
            else:
                if not pa.types.is_struct(struct.type):
                    return {}
                _leaves(struct, EXT, found, found_lists)
            lists = _merge_leaves(found_lists, mine, lists=True)
        except _NeedsPython:
            return None
        leaves = _merge_leaves(found, mine)
        # the values as sent (Arrow's hold every struct field of the batch, null where the record had none)
        conflicts.extend((i, name, kp, _at(parsed[i], kp), op, _at(parsed[i], op)) for i, name, kp, _, op, _ in mine)
        for name, arr in lists.items():
            table = CHILD_TABLE_PREFIX + name[len(EXT) + 2:]
            parent, idx, items = _list_children(arr)
            if not len(items):
                continue
            child_cols: dict[str, pa.Array | list] = {}
            child_conflicts: list[Conflict] = []
            if pa.types.is_struct(items.type):
                cfound: dict[str, list[Leaf]] = {}
                nested: dict[str, list[Leaf]] = {}
                _leaves(items, "", cfound, nested)
                for nname, leaves_ in nested.items():  # lists inside list items: kept as JSON text
                    cfound.setdefault(nname, []).extend((p, _json_text(a)) for p, a in leaves_)
                child_cols = _merge_leaves(cfound, child_conflicts)
            elif _arrow_kind(items.type) is not None:
                child_cols["value"] = items
            elif not pa.types.is_null(items.type):
                child_cols["value"] = _json_text(items)
            child_problems: list[Problem] = []
            typed = _typed(table, child_cols, self.types, child_problems)
            ckeys = keys.take(parent)
            for i, cname, code, value in child_problems:
                issues.append(Issue(SOURCE, None, code, problem_message(f"{table}.{cname}", code, value),
                                    _detail(ckeys[i].as_py(), repr(value)[:200])))
            for c in child_conflicts:
                issues.append(_conflict_issue(None, ckeys[c[0]].as_py(), table, c))
            children.append((table, pa.table({"record_key": ckeys, "_idx": idx, **typed,
                                              "_loaded_run_id": pa.array([self.run_id] * len(idx), pa.string())})))
        return _typed(POINT_HISTORY_TABLE, leaves, self.types, problems)

    def _extended_python(self, parsed: list[dict | None], keys: list[str], problems: list[Problem],
                         children: list[tuple[str, pa.Table]], issues: list[Issue],
                         conflicts: list[Conflict]) -> dict[str, pa.Array]:
        sparse: dict[str, list[tuple[int, Any]]] = defaultdict(list)
        lists: dict[str, list[tuple[int, list]]] = defaultdict(list)
        names = _Names()
        for i, obj in enumerate(parsed):
            if obj is not None:
                _flatten(obj, EXT, i, sparse, lists, names)
        if names.shared:
            _resolve_shared(names, sparse, lists, parsed.__getitem__, EXT, conflicts)  # type: ignore[arg-type]
        for name, cells in lists.items():
            child = self._python_child(CHILD_TABLE_PREFIX + name[len(EXT) + 2:], cells, keys, issues)
            if child is not None:
                children.append(child)
        return build_sparse_columns(POINT_HISTORY_TABLE, len(parsed), sparse, self.types, None, problems)

    def _python_child(self, table: str, cells: list[tuple[int, list]], keys: list[str],
                      issues: list[Issue]) -> tuple[str, pa.Table] | None:
        ckeys: list[str] = []
        idx: list[int] = []
        sparse: dict[str, list[tuple[int, Any]]] = defaultdict(list)
        nested: dict[str, list[tuple[int, list]]] = defaultdict(list)
        names = _Names()
        for row, items in cells:
            if items is None:
                continue
            for j, item in enumerate(items):
                r = len(ckeys)
                ckeys.append(keys[row])
                idx.append(j)
                if type(item) is dict:
                    _flatten(item, "", r, sparse, nested, names)
                elif type(item) is list:
                    sparse["value"].append((r, orjson.dumps(item).decode()))
                else:
                    sparse["value"].append((r, item))
        if not ckeys:
            return None
        conflicts: list[Conflict] = []
        if names.shared:
            items_by_row = [item for _, items in cells if items is not None for item in items]
            _resolve_shared(names, sparse, nested, items_by_row.__getitem__, "", conflicts)
        for name, nested_cells in nested.items():
            sparse[name].extend((r, orjson.dumps(v).decode()) for r, v in nested_cells)
        problems: list[Problem] = []
        dynamic = build_sparse_columns(table, len(ckeys), sparse, self.types, None, problems)
        for i, name, code, value in problems:
            issues.append(Issue(SOURCE, None, code, problem_message(f"{table}.{name}", code, value),
                                _detail(ckeys[i], repr(value)[:200])))
        for c in conflicts:
            issues.append(_conflict_issue(None, ckeys[c[0]], table, c))
        return table, pa.table({"record_key": pa.array(ckeys, pa.string()), "_idx": pa.array(idx, pa.int64()),
                                **dynamic, "_loaded_run_id": pa.array([self.run_id] * len(ckeys), pa.string())})

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
        for _, first, count, s, e in self.spans:
            starts[first:first + count] = s
            ends[first:first + count] = e
        us = recorded.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
        valid = ~recorded.is_null().to_numpy(zero_copy_only=False)
        return np.where(valid, (us >= starts) & (us < ends), True)


def _us(instant: Any) -> int:
    return int(instant.timestamp() * 1_000_000)


def _detail(record_key: str, detail: str | None) -> str:
    return f"record_key={record_key}" + (f"; {detail}" if detail else "")


def _conflict_issue(customer_id: str | None, record_key: str, table: str, conflict: Conflict) -> Issue:
    """`extended_data_conflict`: the record key, both keys (as JSON paths) and the value not kept (the detail is
    JSON after `record_key=...; `, so it can be read back by a program)."""
    _, column, kept_path, kept, other_path, other = conflict
    detail = orjson.dumps({"column": column, "kept_key": list(kept_path), "kept_value": kept,
                           "other_key": list(other_path), "other_value": other}, default=str).decode()
    return Issue(SOURCE, customer_id, CONFLICT,
                 f"{table}.{column}: extended_data keys {'.'.join(kept_path)!r} and {'.'.join(other_path)!r} differ; "
                 f"kept {'.'.join(kept_path)!r}, the other value is only in extended_data_raw",
                 _detail(record_key, detail[:1000]))


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
