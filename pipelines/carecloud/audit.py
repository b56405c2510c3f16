"""Warehouse-wide check of the `extended_data` flattening: every non-null value a record's raw JSON carries has a
non-null value in its flattened column (and every non-empty list has rows in its child table).

Reads `extended_data_raw` back, walks it the way the pipeline names columns (`normalize.leaf_values`) and looks at
the row's columns. A null cell beside a non-null raw value is one of two things:
- `not_loadable`: the column's type cannot hold the value (a word in a double column); the pipeline stored null
  and recorded `type_mismatch` in `sync_issues`, by design;
- `lost`: anything else. That is a bug (or a row loaded by a version before key collisions were merged); the raw
  JSON still holds the value.

Used by `loyalty-etl check` and by the tests. It reads every row with a JSON object, so it takes about as long as
reading the table once; run it after a load, not inside one (it needs the warehouse for reading only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from pipelines.carecloud.normalize import EXT, leaf_values
from pipelines.carecloud.settings import CHILD_TABLE_PREFIX, POINT_HISTORY_TABLE
from pipelines.columns import BOOL, DOUBLE, TEXT, convert

SCHEMA = "loyalty_raw"
_KINDS = {"DOUBLE": DOUBLE, "FLOAT": DOUBLE, "DECIMAL": DOUBLE, "BIGINT": DOUBLE, "INTEGER": DOUBLE,
          "BOOLEAN": BOOL}
FETCH_ROWS = 10_000


@dataclass
class FlatteningCheck:
    rows: int = 0                 # rows whose extended_data_raw is a JSON object
    values: int = 0               # non-null scalar values and non-empty lists in them
    lost: int = 0
    not_loadable: int = 0
    lost_by_column: dict[str, int] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)  # the first lost values

    @property
    def ok(self) -> bool:
        return self.lost == 0

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "rows": self.rows, "values": self.values, "lost": self.lost,
                "not_loadable": self.not_loadable, "lost_by_column": self.lost_by_column, "examples": self.examples}


def check_flattening(con: Any, schema: str = SCHEMA, examples: int = 20) -> FlatteningCheck:
    """Runs the check on an open DuckDB connection (read-only is enough)."""
    out = FlatteningCheck()
    columns = {name: _KINDS.get(str(dtype).split("(")[0].upper(), TEXT) for name, dtype in con.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = ? AND table_name = ?",
        [schema, POINT_HISTORY_TABLE]).fetchall() if name.startswith(EXT + "__")}
    if not con.execute("SELECT count(*) FROM information_schema.columns WHERE table_schema = ? AND table_name = ? "
                       "AND column_name = 'extended_data_raw'", [schema, POINT_HISTORY_TABLE]).fetchone()[0]:
        return out
    children = _child_counts(con, schema)
    names = sorted(columns)
    select = "".join(f', "{c}"' for c in names)
    cur = con.execute(f'SELECT record_key, extended_data_raw{select} FROM "{schema}"."{POINT_HISTORY_TABLE}" '
                      "WHERE extended_data_raw LIKE '{%'")
    while True:
        batch = cur.fetchmany(FETCH_ROWS)
        if not batch:
            break
        for row in batch:
            try:
                obj = orjson.loads(row[1])
            except orjson.JSONDecodeError:
                continue
            if type(obj) is not dict:
                continue
            out.rows += 1
            cells = dict(zip(names, row[2:]))
            for name, path, value, is_list in leaf_values(obj):
                if value is None or (is_list and not value):
                    continue
                out.values += 1
                if is_list:
                    if children.get(CHILD_TABLE_PREFIX + name[len(EXT) + 2:], {}).get(row[0]):
                        continue
                elif cells.get(name) is not None:
                    continue
                elif name in columns and _unloadable(value, columns[name]):
                    out.not_loadable += 1
                    continue
                out.lost += 1
                out.lost_by_column[name] = out.lost_by_column.get(name, 0) + 1
                if len(out.examples) < examples:
                    out.examples.append({"record_key": row[0], "column": name, "key": list(path),
                                         "value": value, "column_exists": is_list or name in columns})
    return out


def _unloadable(value: Any, kind: str) -> bool:
    problems: list = []
    return convert([value], kind, "", problems)[0].as_py() is None


def _child_counts(con: Any, schema: str) -> dict[str, dict[str, int]]:
    tables = [r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = ? AND table_name LIKE ?",
        [schema, CHILD_TABLE_PREFIX + "%"]).fetchall()
        if r[0].startswith(CHILD_TABLE_PREFIX)]
    return {t: dict(con.execute(f'SELECT record_key, count(*) FROM "{schema}"."{t}" GROUP BY record_key').fetchall())
            for t in tables}
