"""CareCloud normalisation: record keys, extended_data flattening (Arrow path and its Python fallback agree),
type drift, window filtering. Pure functions, no HTTP."""

from __future__ import annotations

import orjson
import pendulum
import pyarrow as pa

from pipelines.carecloud.normalize import PointHistoryBatch
from pipelines.columns import ColumnTypes
from pipelines.windows import LOCAL_TIMEZONE, Window

TZ = LOCAL_TIMEZONE
ALL = Window(pendulum.parse("2020-01-01T00:00:00Z"), pendulum.parse("2030-01-01T00:00:00Z"))  # type: ignore[arg-type]


def rec(t: str = "2026-01-10 10:00:00", amount: object = 10, ext: object = None, **kw: object) -> dict:
    r = {"customer_id": "c1", "point_amount": amount, "point_operation_type": "Purchase",
         "point_operation_note": "note", "point_type_id": "pt", "partner_id": "pa", "store_id": "st",
         "point_history_record_time": t, "extended_data": ext}
    r.update(kw)
    return r


def build(records: list[dict], window: Window = ALL, python: bool = False, types: ColumnTypes | None = None,
          arrow_only: bool = False):
    batch = PointHistoryBatch(TZ, "run1", types or ColumnTypes())
    if python:
        batch._extended_arrow = lambda *a, **k: None  # type: ignore[method-assign]
    if arrow_only:
        def no_fallback(*a, **k):
            raise AssertionError("the batch left the Arrow path")
        batch._extended_python = no_fallback  # type: ignore[method-assign]
    batch.add("c1", window, records)
    tables, issues = batch.build()
    return {name: t for name, t in tables}, issues


def rows(table: pa.Table) -> list[dict]:
    return sorted(table.to_pylist(), key=lambda r: (r["record_key"], r.get("_idx", 0)))


SAMPLE = [
    rec(ext=orjson.dumps({"purchase_value": 23.5, "external_purchase_id": "X1", "date_of_points_expiration": None,
                          "purchase_items": [{"sku": "A", "quantity": 2, "unit_price": 1.5, "tags": ["x"]},
                                             {"sku": "B", "quantity": 1, "unit_price": 3}],
                          "meta": {"channel": "pos", "flags": {"vip": True}}}).decode()),
    rec(t="2026-01-10 10:00:01", ext=orjson.dumps({"purchase_value": 10, "codes": [1, 2, 3]}).decode()),
    rec(t="2026-01-10 10:00:02", ext=""),
    rec(t="2026-01-10 10:00:03", ext='{"broken": '),
    rec(t="2026-01-10 10:00:04", ext={"purchase_value": 5.0}),   # an object instead of a string
    rec(t="2026-01-10 10:00:05", ext="[1, 2]"),
]


def test_arrow_and_python_flattening_agree() -> None:
    fast, fast_issues = build(SAMPLE)
    slow, slow_issues = build(SAMPLE, python=True)
    assert set(fast) == set(slow) == {
        "carecloud_point_history", "carecloud_point_history__extended_data__purchase_items",
        "carecloud_point_history__extended_data__codes"}
    for name in fast:
        f, s = fast[name], slow[name]
        assert set(f.column_names) == set(s.column_names), name
        assert rows(f) == rows(s.select(f.column_names)), name
    main = {r["extended_data_raw"]: r for r in fast["carecloud_point_history"].to_pylist()}
    first = main[SAMPLE[0]["extended_data"]]
    assert first["extended_data__purchase_value"] == 23.5 and first["extended_data__meta__channel"] == "pos"
    assert first["extended_data__meta__flags__vip"] is True
    assert main['{"broken": ']["extended_data__purchase_value"] is None
    assert main['{"purchase_value":5.0}']["extended_data__purchase_value"] == 5.0
    items = rows(fast["carecloud_point_history__extended_data__purchase_items"])
    assert [(i["_idx"], i["sku"], i["quantity"], i["tags"]) for i in items] == [(0, "A", 2.0, '["x"]'),
                                                                               (1, "B", 1.0, None)]
    codes = {i.code for i in fast_issues}
    assert codes == {i.code for i in slow_issues} == {"invalid_extended_data", "unexpected_extended_data"}


# spellings of one column across records and inside one record (issue 15); the comment names what the row keeps
COLLIDING = [
    ({"purchase_value": 12.5}, 12.5),
    ({"Purchase Value": 99.9}, 99.9),                                    # alone: the column gets its value
    ({"purchase value": 7, "purchase_value": 7}, 7.0),                   # twice, same value: no conflict
    ({"Purchase Value": 1.0, "purchase_value": 2.0}, 2.0),               # exact spelling wins, 1.0 recorded
    ({"PURCHASE_VALUE": None, "PurchaseValue": 3.5}, 3.5),               # a null never beats a value
    ({"poznámka": "a", "Poznámka ": "b"}, None),                         # neither exact: code point order
    ({"Poznámka ": None, "poznámka": "c"}, None),
    ({"customer": {"segment": "A"}, "Customer": {"Segment ": "B"}}, None),  # one level down, exact path wins
    ({"Customer": {"Segment ": "S"}}, None),
    ({"purchase_items": [{"sku": "A"}], "Purchase Items": [{"SKU": "B"}, {"sku": "X"}]}, None),  # lists
    ({"Purchase Items": [{"sku": "C", "SKU": "C"}]}, None),              # inside a list item, same value
]


def _colliding_batch(mixed_kinds: bool) -> list[dict]:
    objs = [o for o, _ in COLLIDING]
    if mixed_kinds:  # a string under one spelling, a number under another: Arrow merges value by value
        objs = objs + [{"Purchase_Value": "13.5"}, {"purchase_value": 4.0, "Purchase_Value": "four"}]
    return [rec(t=f"2026-01-10 10:00:{n:02d}", ext=orjson.dumps(o).decode()) for n, o in enumerate(objs)]


def test_colliding_keys_never_lose_a_value_on_both_paths() -> None:
    for mixed in (False, True):
        records = _colliding_batch(mixed)
        fast, fast_issues = build(records, arrow_only=True)
        slow, slow_issues = build(records, python=True)
        assert set(fast) == set(slow), mixed
        for name in fast:
            assert set(fast[name].column_names) == set(slow[name].column_names), (mixed, name)
            assert rows(fast[name]) == rows(slow[name].select(fast[name].column_names)), (mixed, name)
        main = {r["extended_data_raw"]: r for r in fast["carecloud_point_history"].to_pylist()}
        by_obj = [main[r["extended_data"]] for r in records]
        for (obj, want), row in zip(COLLIDING, by_obj):
            if want is not None:
                assert row["extended_data__purchase_value"] == want, obj
        assert [r["extended_data__pozn_mka"] for r in by_obj[5:7]] == ["b", "c"]
        assert [r["extended_data__customer__segment"] for r in by_obj[7:9]] == ["A", "S"]
        items = fast["carecloud_point_history__extended_data__purchase_items"].to_pylist()
        assert sorted((i["record_key"] == by_obj[9]["record_key"], i["_idx"], i["sku"]) for i in items) == \
            [(False, 0, "C"), (True, 0, "A")]
        if mixed:
            assert [r["extended_data__purchase_value"] for r in by_obj[-2:]] == [13.5, 4.0]
        for issues in (fast_issues, slow_issues):
            conflicts = sorted((i.detail for i in issues if i.code == "extended_data_conflict"), key=str)
            got = []
            for detail in conflicts:
                key, _, body = detail.partition("; ")
                d = orjson.loads(body)
                got.append((key, d["column"], tuple(d["kept_key"]), d["kept_value"], tuple(d["other_key"]),
                            d["other_value"]))
            want = [
                (by_obj[3]["record_key"], "extended_data__purchase_value", ("purchase_value",), 2.0,
                 ("Purchase Value",), 1.0),
                (by_obj[5]["record_key"], "extended_data__pozn_mka", ("Poznámka ",), "b", ("poznámka",), "a"),
                (by_obj[7]["record_key"], "extended_data__customer__segment", ("customer", "segment"), "A",
                 ("Customer", "Segment "), "B"),
                (by_obj[9]["record_key"], "extended_data__purchase_items", ("purchase_items",), [{"sku": "A"}],
                 ("Purchase Items",), [{"SKU": "B"}, {"sku": "X"}]),
            ]
            if mixed:
                want.append((main[records[-1]["extended_data"]]["record_key"], "extended_data__purchase_value",
                             ("purchase_value",), 4.0, ("Purchase_Value",), "four"))
            want = [(f"record_key={k}", *rest) for k, *rest in want]
            assert sorted(got, key=str) == sorted(want, key=str), (mixed, got)
            assert all(i.customer_id == "c1" for i in issues if i.code == "extended_data_conflict")


def test_identical_records_distinct_keys_stable_across_fetches() -> None:
    same = [rec(), rec(), rec(amount=11)]
    a, _ = build(same)
    b, _ = build(list(reversed(same)))
    ka = sorted(a["carecloud_point_history"]["record_key"].to_pylist())
    assert len(set(ka)) == 3
    assert ka == sorted(b["carecloud_point_history"]["record_key"].to_pylist())
    # a new field from the vendor does not change keys (the lookback would otherwise double rows)
    c, issues = build([rec(loyalty_tier="gold"), rec(loyalty_tier="gold"), rec(amount=11, loyalty_tier="x")])
    assert sorted(c["carecloud_point_history"]["record_key"].to_pylist()) == ka
    assert c["carecloud_point_history"]["loyalty_tier"].to_pylist().count("gold") == 2
    assert [i.code for i in issues] == ["unknown_field"]


def test_type_drift_coerced_or_nulled_and_recorded() -> None:
    types = ColumnTypes()
    build([rec(ext='{"v": 1.5, "s": "a"}')], types=types)   # fixes v: double, s: text
    tables, issues = build([rec(amount="12.5", ext='{"v": "2.5", "s": 7}'),
                            rec(t="2026-01-10 10:00:09", amount="n/a", ext='{"v": "lots", "s": "b"}')], types=types)
    got = [(r["point_amount"], r["extended_data__v"], r["extended_data__s"])
           for r in tables["carecloud_point_history"].to_pylist()]
    assert sorted(got, key=repr) == sorted([(12.5, 2.5, "7"), (None, None, "b")], key=repr)
    codes = sorted(i.code for i in issues)
    assert codes.count("type_coerced") == 3 and codes.count("type_mismatch") == 2


def test_window_filter_keeps_only_inside_and_bad_times() -> None:
    w = Window(pendulum.parse("2026-01-10T09:00:00Z"), pendulum.parse("2026-01-10T09:00:02Z"))  # type: ignore[arg-type]
    recs = [rec(t="2026-01-10 09:59:59"), rec(t="2026-01-10 10:00:00"), rec(t="2026-01-10 10:00:01"),
            rec(t="2026-01-10 10:00:02"), rec(t=None), rec(t="2025-13-45 25:61:00")]  # type: ignore[arg-type]
    tables, issues = build(recs, window=w)
    kept = tables["carecloud_point_history"]["point_history_record_time"].to_pylist()
    assert [str(k) if k else None for k in kept] == ["2026-01-10 10:00:00", "2026-01-10 10:00:01", None, None]
    assert sum(i.code == "bad_record_time" for i in issues) == 2


def test_customer_lists_csv_and_sql(tmp_path) -> None:
    import duckdb
    import pytest

    from pipelines.config import ConfigError
    from pipelines.customers import load_customers

    path = tmp_path / "c.csv"
    path.write_text("customer_id,name\na,x\n,y\n b ,z\na,again\n  ,blank\nc,w\n", encoding="utf-8")
    listed = load_customers(str(path))
    assert listed.ids == ["a", "b", "c"] and listed.blank == 2 and listed.duplicates == ["a"]
    assert {i.code for i in listed.issues("carecloud")} == {"blank_customer_id", "duplicate_customer_id"}
    conn = duckdb.connect()
    conn.execute("create table t as select * from (values ('x'), ('y'), ('x'), (null)) v(id)")
    listed = load_customers("sql: select id from t order by id nulls last", conn)
    assert listed.ids == ["x", "y"] and listed.blank == 1 and listed.duplicates == ["x"]
    with pytest.raises(ConfigError, match="no customer_id column"):
        (tmp_path / "bad.csv").write_text("id\n1\n")
        load_customers(str(tmp_path / "bad.csv"))
    with pytest.raises(ConfigError, match="not found"):
        load_customers(str(tmp_path / "missing.csv"))


def test_flattening_check_finds_lost_values_and_tells_unloadable_apart() -> None:
    import duckdb

    from pipelines.carecloud.audit import check_flattening

    con = duckdb.connect()
    con.execute("create schema loyalty_raw")
    con.execute("""create table loyalty_raw.carecloud_point_history (record_key varchar, extended_data_raw varchar,
                   extended_data__purchase_value double, extended_data__customer__segment varchar)""")
    con.execute("create table loyalty_raw.carecloud_point_history__extended_data__purchase_items "
                "(record_key varchar, _idx bigint, sku varchar)")
    con.execute("""insert into loyalty_raw.carecloud_point_history values
        ('ok', '{"purchase_value": 1, "customer": {"segment": "A"}, "purchase_items": [{"sku": "x"}]}', 1, 'A', ),
        ('lost', '{"Purchase Value": 5, "Customer": {"Segment ": "B"}, "Purchase Items": [{"sku": "y"}]}', null,
         null),
        ('word', '{"purchase_value": "lots", "note": null, "empty": []}', null, null),
        ('bad', '{"purchase_value": 1', null, null),
        ('new', '{"unheard_of": true}', null, null)""")
    con.execute("insert into loyalty_raw.carecloud_point_history__extended_data__purchase_items values ('ok', 0, 'x')")
    result = check_flattening(con)
    assert (result.rows, result.values, result.lost, result.not_loadable) == (4, 8, 4, 1), result
    assert result.lost_by_column == {"extended_data__purchase_value": 1, "extended_data__customer__segment": 1,
                                     "extended_data__purchase_items": 1, "extended_data__unheard_of": 1}
    assert {(e["record_key"], tuple(e["key"])) for e in result.examples} == {
        ("lost", ("Purchase Value",)), ("lost", ("Customer", "Segment ")), ("lost", ("Purchase Items",)),
        ("new", ("unheard_of",))}
    assert not result.ok


# keys whose JSON type drifts inside one batch, at the top and one level down, beside lists, nesting and collisions
DRIFTING = [
    {"a": 1, "n": {"x": 1, "y": "s"}, "l": [1, 2], "b": True, "deep": {"l1": {"l2": {"l3": {"l4": {"l5": 1}}}}}},
    {"a": "one", "n": {"x": "two", "y": None}, "l": "", "b": 1, "deep": 7},
    {"a": 2.5, "n": "flat", "l": [3], "b": "true", "big": 1e300, "PurchaseValue": "12.5"},
    {"a": None, "n": {"x": {"deeper": 1}}, "l": None, "A": "3", "big": 1, "purchase_value": 4},
    {"a": True, "N": {"X": 5}, "n": {"x": 6}, "purchase_value": "n/a", "Purchase Value": 2.0},
    {"a": [1, 2], "l": {"not": "a list"}, "huge": 10 ** 30},
]


def _varied_batch(seed: int, n: int = 300) -> list[dict]:
    """Records whose extended_data the sandbox's variety generator made heterogeneous (pipelines/sandbox/variety.py)."""
    import random

    from pipelines.sandbox import variety

    rng = random.Random(seed)
    out = []
    for i in range(n):
        base = {"purchase_value": round(rng.random() * 100, 2), "external_purchase_id": f"X{i}",
                "date_of_points_expiration": "2026-01-01", "campaign_id": "C7"}
        if rng.random() < 0.7:
            base["purchase_items"] = [{"sku": "A", "quantity": 2, "unit_price": 1.5}]
        ext, _ = variety.vary(rng, orjson.dumps(base).decode())
        out.append(rec(t=f"2026-01-{1 + i // 60:02d} 10:{i % 60:02d}:00", ext=ext))
    return out


def test_drifting_types_stay_on_arrow_and_agree_with_the_python_path() -> None:
    """A batch whose keys change JSON type is flattened key by key with Arrow (only the drifting keys' values are
    typed one by one); every table, cell and issue equals the plain-Python path's."""
    import json

    batches = [[rec(t=f"2026-01-10 10:00:{i:02d}", ext=json.dumps(o)) for i, o in enumerate(DRIFTING)]]
    # (keys inside the deep object differ between records: its JSON text is the one thing the paths write apart)
    batches += [_varied_batch(seed) for seed in range(4)]
    for records in batches:
        fast, fast_issues = build(records, arrow_only=True)
        slow, slow_issues = build(records, python=True)
        assert set(fast) == set(slow)
        for name in fast:
            assert set(fast[name].column_names) == set(slow[name].column_names), name
            assert rows(fast[name]) == rows(slow[name].select(fast[name].column_names)), name
        assert sorted(((i.code, i.customer_id, i.detail, i.message) for i in fast_issues), key=repr) == \
            sorted(((i.code, i.customer_id, i.detail, i.message) for i in slow_issues), key=repr)
    main = {r["extended_data_raw"]: r for r in fast["carecloud_point_history"].to_pylist()}
    assert {"type_coerced", "extended_data_conflict", "invalid_extended_data"} <= {i.code for i in fast_issues}
    assert any(r["extended_data__purchase_value"] is not None for r in main.values())
