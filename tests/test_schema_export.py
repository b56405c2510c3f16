"""The exported dlt schema YAML is the same bytes whatever order dlt met tables and columns in (issue 15: `make demo`
left `schemas/loyalty_raw.schema.yaml` modified because parallel resources finish in varying order)."""

from __future__ import annotations

from pathlib import Path

import yaml
from dlt.common.schema import Schema
from dlt.common.schema.utils import new_column, new_table

from pipelines.schema_export import export_schema, schema_yaml

COMMITTED = Path(__file__).resolve().parents[1] / "schemas" / "loyalty_raw.schema.yaml"
TABLES = {
    "carecloud_point_history": [("record_key", "text", True), ("customer_id", "text", False),
                                ("point_amount", "double", False), ("extended_data__purchase_value", "double", False),
                                ("extended_data__pozn_mka", "text", False), ("_loaded_run_id", "text", False)],
    "capillary_points_transfers": [("transfer_id", "bigint", True), ("notes", "text", False)],
    "carecloud_point_history__extended_data__purchase_items": [("record_key", "text", True), ("_idx", "bigint", True),
                                                               ("sku", "text", False), ("quantity", "double", False)],
}


def _schema(table_order: list[str], reverse_columns: bool) -> Schema:
    schema = Schema("loyalty_raw")
    for name in table_order:
        cols = TABLES[name][::-1] if reverse_columns else TABLES[name]
        columns = []
        for cname, dtype, key in cols:
            col = new_column(cname, dtype, nullable=not key)
            if key:
                col["primary_key"] = True
            columns.append(col)
        schema.update_table(new_table(name, write_disposition="merge", columns=columns))
        schema._bump_version()  # each table in its own version: the history differs between the two
    return schema


def test_export_is_the_same_bytes_whatever_the_order(tmp_path: Path) -> None:
    names = list(TABLES)
    a = _schema(names, reverse_columns=False)
    b = _schema(names[::-1], reverse_columns=True)
    assert list(a.tables) != list(b.tables) and a.version_hash != b.version_hash
    assert schema_yaml(a) == schema_yaml(b)
    doc = yaml.safe_load(schema_yaml(a))
    assert "version" not in doc and "previous_hashes" not in doc
    assert list(doc["tables"]) == sorted(doc["tables"])
    assert list(doc["tables"]["carecloud_point_history"]["columns"]) == [
        "record_key", "_loaded_run_id", "customer_id", "extended_data__pozn_mka", "extended_data__purchase_value",
        "point_amount"]
    assert list(doc["tables"]["carecloud_point_history__extended_data__purchase_items"]["columns"])[:2] == \
        ["_idx", "record_key"]
    path = export_schema(a, tmp_path)
    first = path.stat().st_mtime_ns, path.read_bytes()
    export_schema(b, tmp_path)  # same content: the file is left alone
    assert (path.stat().st_mtime_ns, path.read_bytes()) == first


def test_committed_schema_is_in_canonical_form() -> None:
    text = COMMITTED.read_text(encoding="utf-8")
    doc = yaml.safe_load(text)
    assert text.startswith("# The dlt schema") and "version_hash" not in doc
    assert list(doc["tables"]) == sorted(doc["tables"])
    for table in doc["tables"].values():
        cols = list(table.get("columns", {}))
        keys = sorted(c for c in cols if table["columns"][c].get("primary_key") or table["columns"][c].get("merge_key"))
        assert cols == keys + sorted(c for c in cols if c not in keys)
