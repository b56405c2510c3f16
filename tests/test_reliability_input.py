"""Bad input: invalid `extended_data`, new unexpected fields, a number sent as a string, null and malformed record
times, 100 KB notes, unicode everywhere, unknown customers, duplicate and blank ids in the customer lists.

Each bad thing must be recorded clearly in `sync_issues` (which customer, what, a message a person understands) and
in the run report; every other record must load exactly; the run must not crash.
"""

from __future__ import annotations

import re
from collections import Counter

import pytest

from tests.chaos.compare import Checker
from tests.chaos.fixtures import record_figures, rig_factory  # noqa: F401  (fixture)
from tests.chaos.harness import runs, sync_issues

QUIRKS = dict(extra_fields=True, type_drift=True, bad_times=True, huge_notes=True)
BAD_LINES = dict(unknown=2, duplicates=2, blanks=2)


def _bad_input(rig_factory, name: str, customers: int, seed: int, models: bool) -> dict:
    rig = rig_factory(name, customers=customers, seed=seed, files=BAD_LINES, **QUIRKS)
    truth = rig.truth()
    cc = truth.carecloud_point_history.to_pylist()
    anomalies = Counter(k for r in cc for k in (r["anomaly"] or "").split(",") if k)
    for kind in ("invalid_json", "type_drift", "bad_time", "huge_note"):
        assert anomalies[kind], f"the sandbox data has no {kind} record; pick another seed/size ({anomalies})"

    run = rig.run(models=models)
    assert run.returncode == 2, f"expected a partial run (unknown customers):\n{run.describe()}"
    assert "Traceback" not in run.output, run.describe()

    run_row = runs(rig.warehouse)[-1]
    issues = sync_issues(rig.warehouse, run_row["run_id"])
    by_code: dict[str, list[dict]] = {}
    for i in issues:
        by_code.setdefault(i["code"], []).append(i)
        assert i["message"] and len(i["message"]) > 10, f"an issue without a clear message: {i}"

    def customers_with(code: str, source: str) -> Counter:
        return Counter(i["customer_id"] for i in by_code.get(code, []) if i["source"] == source)

    problems = []
    # the customer lists
    for source in ("carecloud", "capillary"):
        unknown = rig.sb.unknown_customer_ids(source, BAD_LINES["unknown"])
        nf = customers_with("not_found", source)
        problems += [f"{source} unknown customer {c} not recorded as not_found" for c in unknown if not nf[c]]
        dup_ids = rig.sb.customer_ids(source)[:BAD_LINES["duplicates"]]
        dups = customers_with("duplicate_customer_id", source)
        problems += [f"{source} duplicate id {c} not recorded" for c in dup_ids if not dups[c]]
        blanks = [i for i in by_code.get("blank_customer_id", []) if i["source"] == source]
        if not blanks or str(BAD_LINES["blanks"]) not in blanks[0]["message"]:
            problems.append(f"{source}: blank ids not recorded with their count: {blanks}")
    # the records: one issue per bad record, naming its customer; past a cap per batch the rest are counted in
    # one summary issue ("N more <code> issues"), which is accepted when the counts add up
    per_record = {"invalid_json": "invalid_extended_data", "bad_time": "bad_record_time",
                  "type_drift": "type_coerced"}
    for kind, code in per_record.items():
        expected = Counter(r["customer_id"] for r in cc if kind in (r["anomaly"] or ""))
        got = customers_with(code, "carecloud")
        summarised = sum(int(m.group(1)) for i in by_code.get(code, []) if i["customer_id"] is None
                         for m in [re.match(r"(\d+) more ", i["message"])] if m)
        if summarised:
            total = sum(got.values()) + summarised
            if total < sum(expected.values()):
                problems.append(f"{sum(expected.values())} {kind} records, {total} `{code}` issues counted")
            continue
        for cid, n in expected.items():
            if got[cid] < n:
                problems.append(f"{n} {kind} record(s) of {cid}, {got[cid]} `{code}` issue(s)")
    extra = [i for i in by_code.get("unknown_field", []) if i["source"] == "carecloud"]
    text = " ".join(f"{i['message']} {i['detail'] or ''}" for i in extra)
    if not extra or "record_source" not in text or "loyalty_tier" not in text:
        problems.append(f"the new fields record_source / loyalty_tier were not recorded: {extra[:3]}")
    assert not problems, "bad input not recorded clearly:\n" + "\n".join(problems)

    # the run report says it too
    failed = 2 * BAD_LINES["unknown"]
    skipped = 2 * (BAD_LINES["duplicates"] + BAD_LINES["blanks"])
    assert run_row["customers_failed"] == failed and run_row["customers_skipped"] == skipped, run_row
    for source in ("carecloud", "capillary"):
        assert rig.sb.unknown_customer_ids(source, 1)[0] in run.stdout, "the summary should name the unknown ids"

    # every other record loads, exactly (huge notes and unicode included in the compared fields)
    if models:
        assert "models: ok" in run.stdout, f"the marts did not build on bad input:\n{run.describe()}"
    cmp = rig.compare(ledger=models, bad_time_rows="skip")
    assert cmp.ok, f"good records did not load exactly:\n{cmp}"
    ch = Checker(rig.warehouse, truth, until=rig.until(), initial_start=rig.initial_start)
    try:
        notime = ch.carecloud(bad_time_rows="loaded")[1]
    finally:
        ch.close()
    # a record with a broken time is either kept (without its time) or left out; left out only with its issue
    assert notime.extra == 0, f"records with a broken time doubled or altered:\n{notime}"
    assert notime.missing in (0, anomalies["bad_time"]), f"some records with a broken time lost:\n{notime}"
    huge = [r for r in cc if "huge_note" in (r["anomaly"] or "")]
    assert all(len(r["point_operation_note"]) >= 100_000 for r in huge)

    figures = {"customers": customers, "runs": 1, "anomalies": dict(anomalies), "bad_lines": BAD_LINES,
               "issues_by_code": {k: len(v) for k, v in by_code.items()},
               "bad_time_rows": "kept" if notime.missing == 0 else "left out, recorded",
               "rows_compared": cmp.rows_compared + notime.truth_rows, "mismatches": cmp.mismatches}
    record_figures(name, **figures)
    return figures


def test_bad_input_is_recorded_and_everything_else_loads(rig_factory):
    _bad_input(rig_factory, "bad_input", customers=30, seed=7, models=False)


@pytest.mark.chaos
@pytest.mark.parametrize("seed", [3, 11])
def test_bad_input_other_seeds(rig_factory, seed):
    _bad_input(rig_factory, f"bad_input_{seed}", customers=200, seed=seed, models=True)


def _vendor_changes_types(sb) -> dict:
    """From now on the API sends every third record's `point_amount` as a string and adds a new field to every
    record, as a vendor release might. The values do not change, so the truth does not either."""
    import orjson

    app = sb.app
    original = app.point_history
    seen = {"changed": 0}

    def changed(req):
        resp = original(req)
        if resp.status != 200:
            return resp
        body = orjson.loads(resp.body)
        for rec in body["data"]["point_history"]:
            rec["channel"] = "pos"
            amount = rec.get("point_amount")
            if isinstance(amount, (int, float)) and int(abs(amount) * 10) % 3 == 0:
                rec["point_amount"] = str(amount)
                seen["changed"] += 1
        resp.body = orjson.dumps(body)
        return resp

    app.point_history = changed
    return seen


def test_a_field_changing_type_between_runs_doubles_nothing(rig_factory):
    """Records already loaded come again in the next run's lookback with `point_amount` now a string (and a new
    field): they are the same records and must not be loaded a second time."""
    rig = rig_factory("drift", customers=12, seed=7)
    first = rig.run()
    assert first.returncode == 0, first.describe()
    rig.sb.advance(86400)
    seen = _vendor_changes_types(rig.sb)
    second = rig.run()
    assert second.returncode == 0, second.describe()
    assert seen["changed"] > 0
    issues = sync_issues(rig.warehouse, runs(rig.warehouse)[-1]["run_id"])
    codes = Counter(i["code"] for i in issues)
    assert codes["type_coerced"] and codes["unknown_field"], f"the change should be recorded: {codes}"
    cmp = rig.compare(ledger=False)
    assert cmp.ok, f"a type change in the lookback doubled or lost rows:\n{cmp}"
    record_figures("type_change_between_runs", runs=2, changed_values=seen["changed"],
                   rows_compared=cmp.rows_compared, mismatches=cmp.mismatches)
