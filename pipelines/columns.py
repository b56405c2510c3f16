"""Typed Arrow columns for data whose keys and types the vendor may change without notice (CareCloud
`extended_data`, new top-level fields): one stable type per warehouse column, values that drift coerced or nulled
and reported, never a crash.

A column's type is fixed the first time it is seen (from the dlt schema of earlier loads, else inferred from the
first batch) and kept: JSON numbers are always `double` (an integer today and a fraction tomorrow must not
conflict), strings `text`, booleans `bool`; anything else, or a first batch mixing incompatible kinds, `text`.
Later values of another kind are coerced when lossless (a number sent as a string into a double column, a number
into a text column) and recorded as `type_coerced`; values that cannot be coerced become null and are recorded as
`type_mismatch`. The raw JSON string is always kept beside (`extended_data_raw`), so nothing is lost.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any

import orjson
import pyarrow as pa
from dlt.common.normalizers.naming.snake_case import NamingConvention

DOUBLE, TEXT, BOOL = "double", "text", "bool"
ARROW_TYPES = {DOUBLE: pa.float64(), TEXT: pa.string(), BOOL: pa.bool_()}
# dlt data types of existing columns -> our kinds (anything else is read as text)
FROM_DLT = {"double": DOUBLE, "decimal": DOUBLE, "bigint": DOUBLE, "text": TEXT, "bool": BOOL}

_naming = NamingConvention()


@lru_cache(maxsize=65536)
def column_name(key: str) -> str:
    """dlt's own snake_case naming, so the names we build are the names dlt would give."""
    return _naming.normalize_identifier(str(key)) or "_"


@lru_cache(maxsize=65536)
def child_name(prefix: str, key: str) -> str:
    return f"{prefix}__{column_name(key)}"


_KIND_BY_TYPE = {bool: BOOL, int: DOUBLE, float: DOUBLE, str: TEXT}


def infer_kind(values: list[Any]) -> str:
    kinds = {_KIND_BY_TYPE.get(t, TEXT) for t in set(map(type, values)) if t is not type(None)}
    if kinds == {BOOL}:
        return BOOL
    if kinds == {DOUBLE}:
        return DOUBLE
    if kinds == {DOUBLE, TEXT} and all(_to_double(v)[1] for v in values if type(v) is str):
        return DOUBLE
    return TEXT


def _to_double(v: Any) -> tuple[float | None, bool]:
    try:
        return float(v), True
    except (TypeError, ValueError):
        return None, False


def _text(v: Any) -> str:
    return orjson.dumps(v).decode() if not isinstance(v, str) else v


_CLEAN = {DOUBLE: frozenset((int, float, type(None))), TEXT: frozenset((str, type(None))),
          BOOL: frozenset((bool, type(None)))}

# (row index, column name, code, raw value) for each value that was coerced or dropped
Problem = tuple[int, str, str, Any]


def problem_message(name: str, code: str, value: Any) -> str:
    """The `sync_issues` message of one Problem (column `name`)."""
    what = "coerced" if code == "type_coerced" else "not loadable as the column's type, stored null"
    return f"{name}: {type(value).__name__} value {what}"


def convert(values: list[Any], kind: str, name: str, problems: list[Problem]) -> pa.Array:
    """Values of one column to an Arrow array of `kind`; appends to `problems` for every drift."""
    if _CLEAN[kind].issuperset(set(map(type, values))):  # the common case, at C speed
        return pa.array(values, ARROW_TYPES[kind])
    if kind == DOUBLE:
        out: list[Any] = values
        for i, v in enumerate(values):
            t = type(v)
            if v is None or t is float or t is int:
                continue
            if out is values:
                out = list(values)
            if t is not bool and t is not dict and t is not list:
                f, ok = _to_double(v)
                if ok:
                    out[i] = f
                    problems.append((i, name, "type_coerced", v))
                    continue
            out[i] = None
            problems.append((i, name, "type_mismatch", v))
        return pa.array(out, pa.float64())
    if kind == BOOL:
        out = values
        for i, v in enumerate(values):
            if v is None or type(v) is bool:
                continue
            if out is values:
                out = list(values)
            if isinstance(v, str) and v.lower() in ("true", "false"):
                out[i] = v.lower() == "true"
                problems.append((i, name, "type_coerced", v))
            else:
                out[i] = None
                problems.append((i, name, "type_mismatch", v))
        return pa.array(out, pa.bool_())
    out = values
    for i, v in enumerate(values):
        if v is None or type(v) is str:
            continue
        if out is values:
            out = list(values)
        out[i] = _text(v)
        problems.append((i, name, "type_coerced", v))
    return pa.array(out, pa.string())


class ColumnTypes:
    """The kind of every dynamic column per table, shared by all batches of a run (thread-safe)."""

    def __init__(self, known: dict[str, dict[str, str]] | None = None) -> None:
        self._kinds: dict[str, dict[str, str]] = {t: dict(c) for t, c in (known or {}).items()}
        self._lock = threading.Lock()

    @classmethod
    def from_dlt_schema(cls, schema: Any) -> "ColumnTypes":
        known: dict[str, dict[str, str]] = {}
        if schema is not None:
            for tname, table in schema.tables.items():
                cols = {}
                for cname, col in table.get("columns", {}).items():
                    dtype = col.get("data_type")
                    if dtype:
                        cols[cname] = FROM_DLT.get(dtype, TEXT)
                known[tname] = cols
        return cls(known)

    def snapshot(self) -> dict[str, dict[str, str]]:
        """A copy of every known kind (what a worker process starts a chunk with)."""
        with self._lock:
            return {t: dict(c) for t, c in self._kinds.items()}

    def kind_for(self, table: str, column: str, kind: str) -> str:
        """The column's kind; `kind` (what this batch holds) becomes it when the column is new."""
        with self._lock:
            return self._kinds.setdefault(table, {}).setdefault(column, kind)

    def kind(self, table: str, column: str, values: list[Any]) -> str:
        with self._lock:
            cols = self._kinds.setdefault(table, {})
            kind = cols.get(column)
            if kind is None:
                kind = cols[column] = infer_kind(values)
            return kind


def build_sparse_columns(table: str, n_rows: int, sparse: dict[str, list[tuple[int, Any]]], types: ColumnTypes,
                         keep: list[int] | None, problems: list[Problem]) -> dict[str, pa.Array]:
    """Dense typed columns from {name: [(row, value), ...]} for the rows listed in `keep` (all rows when None);
    row numbers in `problems` refer to the kept rows."""
    if keep is None:
        n = n_rows
        remap = None
    else:
        n = len(keep)
        remap = {row: i for i, row in enumerate(keep)}
    out: dict[str, pa.Array] = {}
    for name, cells in sparse.items():
        dense: list[Any] = [None] * n
        if remap is None:
            for row, value in cells:
                dense[row] = value
        else:
            for row, value in cells:
                i = remap.get(row)
                if i is not None:
                    dense[i] = value
        present = [v for v in dense if v is not None]
        if not present:
            continue
        kind = types.kind(table, name, present)
        out[name] = convert(dense, kind, name, problems)
    return out


def with_required(table: pa.Table, columns: list[str] | tuple[str, ...]) -> pa.Table:
    """Mark key columns non-nullable in the Arrow schema, matching the dlt hints (dlt warns on every batch
    otherwise). The keys are never null here, so this is a schema change only."""
    fields = [f.with_nullable(False) if f.name in columns else f for f in table.schema]
    return table.cast(pa.schema(fields, metadata=table.schema.metadata))
