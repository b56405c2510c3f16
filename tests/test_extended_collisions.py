"""Heterogeneous `extended_data` end to end (issue 15): the real CLI against the sandbox with
`extended_data_variety` on loads every value into its flattened column, whatever spelling the record used; two
spellings in one record with different values keep one by the documented rule and record the other in
sync_issues; `loyalty-etl check` finds nothing lost.

The expected values are computed here independently of pipelines/carecloud/normalize.py: from the truth's raw JSON,
with dlt's naming convention and the documented rule (the key spelled exactly as its column wins, else the key path
that sorts first by code point; a null never beats a value)."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from tests.helpers.cli import cli_env, query, run_cli

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 11, 20, tzinfo=UTC)
DEPTH = 4  # nested objects below this depth arrive as JSON text (docs/architecture.md)


def _snake(key: str) -> str:
    from dlt.common.normalizers.naming.snake_case import NamingConvention

    return NamingConvention().normalize_identifier(key)


def _scalars(obj: dict, prefix: str = "extended_data", depth: int = 0, path: tuple = ()) -> list[tuple]:
    out = []
    for k, v in obj.items():
        name, here = f"{prefix}__{_snake(k)}", (*path, k)
        if isinstance(v, dict) and depth < DEPTH:
            out += _scalars(v, name, depth + 1, here)
        elif not isinstance(v, list):
            out.append((name, here, v))
    return out


def _rank(path: tuple) -> tuple:
    return any(k != _snake(k) for k in path), path


def _loose(v: Any) -> Any:
    """A JSON value and the warehouse cell it became, compared loosely (the column's type may have coerced it)."""
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True)
    if isinstance(v, str):
        if v in ("true", "false"):
            return v == "true"
        try:
            return float(v)
        except ValueError:
            pass
        if v.startswith("{"):
            try:
                return json.dumps(json.loads(v), sort_keys=True)
            except ValueError:
                return v
    return v


def test_heterogeneous_extended_data_every_value_in_its_column(sandbox_factory, sandbox_env, tmp_path: Path) -> None:
    sb = sandbox_factory(customers=40, now=NOW, extended_data_variety=0.5)
    wh = tmp_path / "loyalty_warehouse.duckdb"
    # small batches: some hold a type change (Python path), others not (Arrow path)
    env = cli_env(sandbox_env(sb, wh), LOYALTY__BATCH_ROWS=30)
    proc = run_cli(env, "run", "--until", NOW.strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}"

    truth = [r for r in sb.truth().carecloud_point_history.to_pylist()
             if r["recorded_at"] is None or r["recorded_at"] < NOW]
    tags = Counter(t for r in truth for t in r["anomaly"].split(",") if t)
    assert {"ext_respelled", "ext_twin", "ext_conflict", "ext_type_change", "ext_nested", "ext_unicode",
            "ext_nulls", "ext_empty", "ext_not_object", "invalid_json"} <= set(tags), tags

    cols = [r[0] for r in query(wh, "select column_name from information_schema.columns where table_schema = "
                                    "'loyalty_raw' and table_name = 'carecloud_point_history' "
                                    "and column_name like 'extended_data__%'") if r[0] != "extended_data_raw"]
    select = ", ".join(f'"{c}"' for c in cols)
    rows = query(wh, f"select customer_id, extended_data_raw, record_key, {select} "
                     f"from loyalty_raw.carecloud_point_history")
    assert len(rows) == len(truth)
    assert Counter((r[0], r[1]) for r in rows) == Counter((r["customer_id"], r["extended_data"]) for r in truth)
    by_raw: dict[tuple, list] = {}  # identical records (same second, every field) share their raw text
    for r in rows:
        by_raw.setdefault((r[0], r[1]), []).append((r[2], dict(zip(cols, r[3:]))))
    mismatches = {(i[0], i[1]) for i in query(
        wh, "select split_part(split_part(detail, ';', 1), '=', 2), split_part(message, ':', 1) "
            "from loyalty_raw.sync_issues where code = 'type_mismatch'")}

    expected_conflicts: dict[str, tuple] = {}
    checked = Counter()
    seen: Counter = Counter()
    for r in truth:
        twins = by_raw[(r["customer_id"], r["extended_data"])]
        key, cells = twins[seen[(r["customer_id"], r["extended_data"])]]
        seen[(r["customer_id"], r["extended_data"])] += 1
        try:
            obj = orjson.loads(r["extended_data"]) if r["extended_data"] else None
        except orjson.JSONDecodeError:
            continue
        if not isinstance(obj, dict):
            continue
        by_column: dict[str, list] = {}
        for name, path, value in _scalars(obj):
            by_column.setdefault(name, []).append((path, value))
        for name, found in by_column.items():
            present = sorted(((p, v) for p, v in found if v is not None), key=lambda c: _rank(c[0]))
            if not present:
                continue
            kept_path, kept = present[0]
            cell = cells.get(name)
            if cell is None:  # only a value the column's type cannot hold may be null, and it is recorded
                assert (key, name) in mismatches, (name, kept_path, kept, r["extended_data"])
                checked["not loadable"] += 1
                continue
            assert _loose(cell) == _loose(kept), (name, kept_path, kept, cell, r["extended_data"])
            checked["values"] += 1
            checked["spelled otherwise" if any(k != _snake(k) for k in kept_path) else "exact"] += 1
            for p, v in present[1:]:
                if _loose(v) != _loose(kept) or type(v) is not type(kept):
                    assert key not in expected_conflicts, "the sandbox makes one conflict per record"
                    expected_conflicts[key] = (name, list(kept_path), list(p), v)
    assert checked["spelled otherwise"] > 50 and checked["values"] > 1000, checked

    conflict_records = [r for r in truth if "ext_conflict" in r["anomaly"]]
    assert len(expected_conflicts) == len(conflict_records) > 5
    found = {}
    for detail, customer in query(wh, "select detail, customer_id from loyalty_raw.sync_issues "
                                      "where code = 'extended_data_conflict'"):
        key, _, body = detail.partition("; ")
        d = json.loads(body)
        found[key.removeprefix("record_key=")] = (d["column"], d["kept_key"], d["other_key"], d["other_value"])
        assert customer
    assert found == expected_conflicts

    check = run_cli(env, "check", "--json")
    assert check.returncode == 0, check.stdout + check.stderr
    result = json.loads(check.stdout)
    assert result["lost"] == 0 and result["values"] > checked["values"] and result["not_loadable"] > 0, result
