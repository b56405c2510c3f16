"""Issue 18 end to end through the real `loyalty-etl run` (subprocess): Capillary with `selection = "changed"` over
simulated nights while the sandbox delivers its event notifications live to the real receiver (duplicates,
reordering, hours-late and lost events).

- customers Capillary announced (`customerAdded`) that the configured CSV lacks are queried, the night their event
  arrives (changes.customer_list + `EventChanges.listed`);
- once the data stops and a sweep period has passed, the changed-mode Capillary tables equal an all-mode warehouse's
  and the sandbox's truth (customers only lost events named are the sweep's);
- an all-mode run ingests the events too and marks them used (`capillary_events` fills in both modes);
- a run with no event for longer than `events_silence` warns: summary, sync_issues and the alert hook, exit 0.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipelines.sandbox.events import CUSTOMER, EventDelivery, EventDeliveryConfig
from pipelines.sandbox.truth import capillary_truth
from tests.chaos.compare import compare
from tests.helpers.cli import cli_env, query, run_cli
from tests.helpers.receiver import SECRET, Receiver

UTC = dt.timezone.utc
NIGHT0 = dt.datetime(2026, 11, 20, 1, 0, tzinfo=UTC)
LAG = dt.timedelta(minutes=10)
SWEEP_DAYS = 2
NIGHTS = 6            # transfers stop after night 3 (data_end); nights 4-5 complete a sweep period
CAP_TABLES = ("capillary_customer_transfers", "capillary_points_transfers", "capillary_transfer_parties")


def _night(k: int) -> dt.datetime:
    return NIGHT0 + dt.timedelta(days=k)


def _run(env: dict[str, str], sb, k: int, *args: str, expect: int = 0) -> str:
    sb.set_now(_night(k) + LAG)
    proc = run_cli(env, "run", "--source", "capillary", "--no-models", "--until",
                   _night(k).strftime("%Y-%m-%dT%H:%M:%SZ"), *args)
    assert proc.returncode == expect, f"night {k}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _last_run(wh: Path) -> dict:
    (sources,) = query(wh, "SELECT sources FROM loyalty_raw.runs ORDER BY started_at DESC LIMIT 1")[0]
    return json.loads(sources)["capillary"]


def _table(wh: Path, table: str) -> list[tuple]:
    """The rows without dlt's load bookkeeping, sorted (so two warehouses compare row for row)."""
    cols = [c for (c,) in query(wh, "SELECT column_name FROM information_schema.columns WHERE table_schema = "
                                    "'loyalty_raw' AND table_name = ? ORDER BY column_name", [table])
            if not c.startswith(("_dlt", "_loaded"))]
    return sorted(query(wh, f"SELECT {', '.join(cols)} FROM loyalty_raw.{table}"), key=repr)


@pytest.fixture
def receiver(tmp_path):
    r = Receiver(tmp_path).start()
    yield r
    r.kill()


def test_changed_mode_with_live_events_equals_all_mode_and_truth(sandbox_factory, sandbox_env, receiver,
                                                                tmp_path: Path) -> None:
    customers = 300
    sb = sandbox_factory(customers=customers, now=_night(0) + LAG, data_start="2026-10-01",
                         data_end="2026-11-23T02:00:00", seed=5)
    gen = sb.app.data
    changed_wh = tmp_path / "changed" / "loyalty_warehouse.duckdb"
    all_wh = tmp_path / "all" / "loyalty_warehouse.duckdb"
    base = dict(LOYALTY__EXTRACT_PROCESSES="0", SOURCES__CAPILLARY__WEBHOOK__STORE=str(receiver.store))
    changed = cli_env(sandbox_env(sb, changed_wh), **base, SOURCES__CAPILLARY__SELECTION="changed",
                      SOURCES__CAPILLARY__SWEEP_DAYS=str(SWEEP_DAYS))
    everything = cli_env(sandbox_env(sb, all_wh), **base)
    cfg = EventDeliveryConfig(url=receiver.url, secret=SECRET, customer_added_share=0.3, duplicate_share=0.2,
                              duplicate_max_seconds=86_400, reorder_share=0.3, late_share=0.15,
                              late_min_seconds=3 * 3600, late_max_seconds=20 * 3600, lost_share=0.15, seed=9)
    ident = {i: gen.capillary_identifiers(i)["id"] for i in range(customers)}
    with EventDelivery(sb, cfg) as d:
        # the customers who register after the webhook was set up: the CSV does not list them, only their
        # customerAdded event can (`_registered` is the sandbox's own registration time per customer)
        announced = {i for i, at in d._registered.items() if at > sb.now()}
        assert announced
        csv = tmp_path / "capillary.csv"
        csv.write_text("customer_id\n" + "".join(f"{ident[i]}\n" for i in range(customers) if i not in announced))
        changed["SOURCES__CAPILLARY__CUSTOMERS"] = everything["SOURCES__CAPILLARY__CUSTOMERS"] = str(csv)

        by = {"customers_by_discovery": 0, "customers_by_sweep": 0}
        for k in range(NIGHTS):
            sb.set_now(_night(k) + LAG)
            assert d.wait_idle(60)
            _run(changed, sb, k)
            report = _last_run(changed_wh)
            assert report["selection"] == "changed"
            for key in by:
                by[key] += report[key]
            if k:
                assert report["customers_not_due"] > 0, "a changed night must not query every customer"
            # every customer whose customerAdded event has arrived is on the list and was queried
            delivered_added = {ident[i] for e, (kind, i) in d.generated.items()
                               if kind == CUSTOMER and e in d.delivered}
            loaded = {c for (c,) in query(changed_wh, "SELECT customer_id FROM loyalty_raw._customer_sync_state "
                                                      "WHERE source = 'capillary' AND last_success_end IS NOT NULL")}
            assert delivered_added <= loaded, f"night {k}: announced customers not queried"
        assert by["customers_by_discovery"] and by["customers_by_sweep"]
        stats = d.stats()
        lost, generated = set(d.lost), dict(d.generated)
        lost_added = {i for e, (kind, i) in generated.items() if kind == CUSTOMER and e in lost}
    assert stats["lost"] > 0 and stats["duplicates_sent"] > 0 and d.late
    # customers whose only events were lost: only the sweep can have loaded their transfers
    named_ok = d.customers_named(set(generated) - lost)
    assert d.customers_named(lost) - named_ok, "some customer must be named only by lost events"

    # the all-mode warehouse, at the same night: it reads the same event store for the announced customers
    _run(everything, sb, NIGHTS - 1)
    assert _last_run(all_wh)["selection"] == "all"
    for table in CAP_TABLES:
        assert _table(changed_wh, table) == _table(all_wh, table), f"{table}: changed != all"
    # ... and both equal the truth: the CSV's customers plus those a delivered customerAdded event announced
    expected = [i for i in range(customers) if i not in announced or i not in lost_added]
    assert len(expected) > customers - len(announced)
    truth = SimpleNamespace(carecloud_point_history=sb.truth().carecloud_point_history,
                            capillary_customer_transfers=capillary_truth(gen, sb.now(), expected, "id"))
    for wh in (changed_wh, all_wh):
        cmp = compare(wh, truth, until=_night(NIGHTS - 1), sources=("capillary",), ledger=False)
        assert cmp.ok, str(cmp)
    # both modes ingested every stored event once and used them
    for wh in (changed_wh, all_wh):
        n, unused, distinct = query(wh, "SELECT count(*), count(*) FILTER (WHERE selected_at IS NULL), "
                                        "count(DISTINCT event_id) FROM loyalty_raw.capillary_events")[0]
        assert n == distinct == len(set(generated) - lost - {e for e, due in d.due.items() if due > sb.now()})
        assert unused == 0

    # the webhook goes silent: the next run warns (exit 0), records it and calls the alert hook
    alert = tmp_path / "alert.txt"
    time.sleep(1.5)
    out = _run(cli_env({}, **{**changed, "SOURCES__CAPILLARY__EVENTS_SILENCE": "1s",
                              "LOYALTY__ALERT_COMMAND": f"(cat; echo status=$LOYALTY_RUN_STATUS) > {alert}"}),
               sb, NIGHTS)
    assert "OK with 1 warning(s)" in out and "WARNING events_silent" in out
    # silent: the first night (no event received yet) and this one; none while events flowed
    silent = query(changed_wh, "SELECT r.status, r.exit_code FROM loyalty_raw.sync_issues i JOIN loyalty_raw.runs r "
                               "USING (run_id) WHERE i.code = 'events_silent' ORDER BY r.started_at")
    assert silent == [("ok", 0), ("ok", 0)]
    assert any(w.startswith("events_silent") for w in _last_run(changed_wh)["warnings"])
    sent = alert.read_text()
    assert "events_silent" in sent and "status=ok" in sent and SECRET not in sent
