"""End to end: the real CLI loads a warehouse from the sandbox over HTTP, `loyalty-etl models` runs `dbt build`
(every model and test, the reconciliation tests included) on it, and the marts agree with the sandbox's ground
truth. A second nightly run (`loyalty-etl run`, models included) after the sandbox clock moves on writes only the
new ledger rows, and late records that landed in already-built days leave every running balance correct."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb

from pipelines.models import SQL_DIR

ROOT = Path(__file__).resolve().parent.parent
FIRST_END = datetime(2026, 11, 20, tzinfo=timezone.utc)     # the sandbox fixture's default now
SECOND_END = FIRST_END + timedelta(days=4)


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def seed_mapping() -> dict[str, str]:
    with open(SQL_DIR / "seeds" / "carecloud_operation_types.csv", encoding="utf-8") as f:
        return {row["operation_type"].strip().lower(): row["movement_type"] for row in csv.DictReader(f)}


def truth_balances(sb) -> tuple[dict[str, float], dict[str, int]]:
    """customer_key -> balance and -> ledger rows, from the sandbox's ground truth, without SQL."""
    mapping = seed_mapping()
    balance: dict[str, float] = defaultdict(float)
    rows: dict[str, int] = defaultdict(int)
    truth = sb.truth()
    for r in truth.carecloud_point_history.to_pylist():
        mt = mapping.get(r["point_operation_type"].strip().lower(), "other")
        amount = r["point_amount"]
        key = f"carecloud:{r['customer_id']}"
        balance[key] += abs(amount) if mt == "earn" else -abs(amount) if mt in ("redeem", "expire") else amount
        rows[key] += 1
    transfers = {r["transfer_id"]: r for r in truth.capillary_customer_transfers.to_pylist()}
    for t in transfers.values():
        for entity, sign in ((t["from_entity_id"], -1), (t["to_entity_id"], 1)):
            balance[f"capillary:{entity}"] += sign * abs(t["points_transferred"])
            rows[f"capillary:{entity}"] += 1
    return dict(balance), dict(rows)


def marts(warehouse: Path) -> tuple[dict[str, float], dict[str, int], dict[str, str]]:
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        dim = con.execute("SELECT customer_key, current_balance, movements FROM loyalty.dim_customers").fetchall()
        ledger = dict(con.execute("SELECT ledger_key, _dbt_invocation_id FROM loyalty.fct_points_ledger").fetchall())
    finally:
        con.close()
    return {k: b for k, b, _ in dim}, {k: n for k, _, n in dim}, ledger


def assert_matches_truth(sb, warehouse: Path) -> dict[str, str]:
    want_balance, want_rows = truth_balances(sb)
    got_balance, got_rows, ledger = marts(warehouse)
    assert got_rows == want_rows
    assert got_balance.keys() == want_balance.keys()
    off = {k: (got_balance[k], want_balance[k]) for k in want_balance if abs(got_balance[k] - want_balance[k]) > 1e-6}
    assert not off
    return ledger


def test_dbt_build_on_sandbox_warehouse(sandbox_factory, sandbox_env, tmp_path: Path) -> None:
    # every record arrives late (up to two days after its time), so the second night lands some in built days
    sb = sandbox_factory(customers=40, seed=11, late_share=1.0)
    warehouse = tmp_path / "loyalty_warehouse.duckdb"
    env = {**os.environ, **sandbox_env(sb, warehouse)}

    load = cli(env, "run", "--no-models", "--until", FIRST_END.isoformat())
    assert load.returncode == 0, load.stdout[-3000:] + load.stderr[-3000:]
    models = cli(env, "models")
    assert models.returncode == 0, models.stdout[-5000:] + models.stderr[-3000:]
    assert "assert_ledger_reconciles_with_carecloud_raw" in models.stdout   # the reconciliation tests ran
    assert "ERROR=0" in models.stdout
    first = assert_matches_truth(sb, warehouse)

    # the next night: the sandbox clock moves on; late records appear in days already built
    truth = sb.truth(now=SECOND_END).carecloud_point_history.to_pylist()
    late = [r for r in truth if "late" in (r["anomaly"] or "") and r["recorded_at"] < FIRST_END <= r["visible_from"]]
    sb.set_now(SECOND_END)
    nightly = cli(env, "run", "--until", SECOND_END.isoformat())
    assert nightly.returncode == 0, nightly.stdout[-3000:] + nightly.stderr[-3000:]
    assert "models: ok" in nightly.stdout
    second = assert_matches_truth(sb, warehouse)

    new_keys = set(second) - set(first)
    assert new_keys, "the sandbox produced no new records in four days"
    rewritten = {k for k, inv in second.items() if inv != first[next(iter(first))]}
    assert rewritten == new_keys          # only new rows were written; history untouched
    assert late, "expected the sandbox to deliver late records into already-built days"
