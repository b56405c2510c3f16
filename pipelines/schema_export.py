"""The dlt schema as a YAML file for readers (`schemas/loyalty_raw.schema.yaml`), the same bytes for the same schema.

dlt's own export (`export_schema_path`) writes tables and columns in the order it first met them. Both sources load
in parallel and workers finish chunks in varying order, so two runs of the same data produced files that differ
in order only, and `make demo` left the committed file modified. This writes the schema dlt holds in a canonical
form instead: tables sorted by name; in each table the primary/merge key columns first, then the others, each
group sorted by name; and without `version`, `version_hash` and `previous_hashes`, which tell the history of one
warehouse's schema (how many times, in which order it grew), not the schema.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

HISTORY_KEYS = ("version", "version_hash", "previous_hashes", "imported_version_hash")
HEADER = ("# The dlt schema of the raw dataset, written by loyalty-etl after each load of the project's warehouse\n"
          "# (pipelines/schema_export.py): tables and columns in a fixed order, no version history.\n")


def canonical_schema(stored: dict[str, Any]) -> dict[str, Any]:
    """A `Schema.to_dict()` in canonical order, without its version history."""
    out: dict[str, Any] = {}
    for key, value in stored.items():
        if key in HISTORY_KEYS:
            continue
        if key == "tables":
            value = {name: _table(value[name]) for name in sorted(value)}
        elif key == "normalizers":
            value = _sorted_propagation(value)
        out[key] = value
    return out


def _table(table: dict[str, Any]) -> dict[str, Any]:
    out = dict(table)
    columns = table.get("columns") or {}
    keys = sorted(n for n, c in columns.items() if c.get("primary_key") or c.get("merge_key"))
    rest = sorted(n for n in columns if n not in keys)
    out["columns"] = {n: columns[n] for n in keys + rest}
    return out


def _sorted_propagation(normalizers: dict[str, Any]) -> dict[str, Any]:
    tables = normalizers.get("json", {}).get("config", {}).get("propagation", {}).get("tables")
    if not isinstance(tables, dict):
        return normalizers
    out = {**normalizers, "json": {**normalizers["json"], "config": {**normalizers["json"]["config"]}}}
    propagation = dict(out["json"]["config"]["propagation"])
    propagation["tables"] = {name: tables[name] for name in sorted(tables)}
    out["json"]["config"]["propagation"] = propagation
    return out


def schema_yaml(schema: Any) -> str:
    return HEADER + yaml.dump(canonical_schema(schema.to_dict(remove_defaults=True)), allow_unicode=True,
                              default_flow_style=False, sort_keys=False)


def export_schema(schema: Any, directory: str | Path) -> Path:
    """Writes `<directory>/<schema name>.schema.yaml` when its content changed (atomically: a reader never sees
    half a file)."""
    path = Path(directory) / f"{schema.name}.schema.yaml"
    text = schema_yaml(schema)
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
