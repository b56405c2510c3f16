"""Fault storm: 10 % 429 (half with Retry-After), 5 % 503, 2 % dropped connections, 1 % truncated bodies, the
CareCloud token expiring every few dozen requests, and a maintenance window of 503s, longer than the retry budget,
for a share of the customers.

The first run must finish with exit code 2, list exactly the customers that exhausted their retries (in
`sync_issues`, the customer state and the run report) and have loaded everyone else exactly; one rerun after the
maintenance window must make the whole warehouse (raw tables and ledger) equal to the truth.
"""

from __future__ import annotations

import pytest

from tests.chaos.fixtures import chaos_seed, record_figures, rig_factory, source_settings  # noqa: F401  (fixture)
from tests.chaos.harness import query, runs, sync_issues
from pipelines.sandbox import FaultConfig

# The outcome is bounded by retries and state, never by wall time (issue 15: the fast variant failed once under the
# load of its neighbours). The maintenance window has no wall-clock end the first run could outlast however slow the
# machine: it lasts until the test ends it after the first run. In the first run a request has 6 attempts, so the
# customers in maintenance exhaust them. The rerun keeps the random storm (about a quarter of the attempts fail in
# the fast variant) and gets RERUN_ATTEMPTS attempts per request: with 6, one of its ~70 requests exhausted them by
# chance in about 1.5 % of runs (0.25 ** 6 each), with 12 that is about 6e-8 per request. A customer that exhausts its
# attempts by chance in the first run is failed and listed like the ones in maintenance, which the checks allow.
SETTINGS = {"max_attempts": 6, "retry_backoff": 0.2}
RERUN_ATTEMPTS = 12
UNTIL_ENDED = 30 * 86400.0  # maintenance_seconds: ended by the test, not by the clock
STORM = dict(random_429_share=0.10, retry_after_share=0.5, error_503_share=0.05, drop_share=0.02,
             truncate_share=0.01, token_max_requests=36, maintenance_share=0.12, maintenance_after_seconds=0.0)
FAILURE_CODES = {"retries_exhausted", "http_error"}


def _storm(rig_factory, name: str, customers: int, seed: int, data_seed: int, models: bool = True, **extra) -> dict:
    faults = FaultConfig(**{**STORM, **extra}, maintenance_seconds=UNTIL_ENDED, seed=seed)
    rig = rig_factory(name, customers=customers, seed=data_seed, faults=faults, settings=SETTINGS)
    first = rig.run(models=models)
    down = {s: set(rig.sb.customers_in_maintenance(s)) for s in ("carecloud", "capillary")}
    # the maintenance ends now, by state: the first run saw it for its whole duration
    rig.sb.update_faults(maintenance_seconds=0)
    assert down["carecloud"] and down["capillary"], f"seed {seed}: no customer in maintenance: {down}"
    assert first.returncode == 2, f"seed {seed}: expected a partial run\n{first.describe()}"

    run_id = runs(rig.warehouse)[-1]["run_id"]
    issues = sync_issues(rig.warehouse, run_id)
    failed_issues = {(i["source"], i["customer_id"]) for i in issues if i["code"] in FAILURE_CODES}
    failing_state = set(query(rig.warehouse, "select source, customer_id from loyalty_raw._customer_sync_state "
                                             "where consecutive_failures > 0"))
    run_row = runs(rig.warehouse)[-1]
    failed = {s: {c for src, c in failing_state if src == s} for s in ("carecloud", "capillary")}
    for source in ("carecloud", "capillary"):
        missing = down[source] - failed[source]
        assert not missing, f"seed {seed}: {source} customers in maintenance not marked failed: {sorted(missing)}"
    assert failing_state == failed_issues, (
        f"seed {seed}: failing customers in the state and in sync_issues differ: "
        f"{sorted(failing_state ^ failed_issues)[:10]}")
    assert run_row["exit_code"] == 2 and run_row["customers_failed"] == len(failing_state), run_row
    for source in ("carecloud", "capillary"):
        named = [c for c in failed[source] if c in first.stdout]
        assert len(named) >= min(10, len(failed[source])), f"the summary should name the failed {source} customers"
    for issue in issues:
        if issue["code"] in FAILURE_CODES:
            assert issue["message"] and ("503" in issue["message"] or "attempt" in issue["message"]), issue

    # everyone else is loaded exactly; the failed ones are not half-loaded as "done"
    cmp = rig.compare(ledger=False)
    from tests.chaos.compare import Checker
    ch = Checker(rig.warehouse, rig.truth(), until=rig.until(), initial_start=rig.initial_start)
    try:
        ok_cc = [c for c in rig.sb.customer_ids("carecloud") if c not in failed["carecloud"]]
        ok_cap = [c for c in rig.sb.customer_ids("capillary") if c not in failed["capillary"]]
        partial = ch.carecloud(ok_cc) + ch.capillary(ok_cap)
    finally:
        ch.close()
    bad = [d for d in partial if not d.ok]
    assert not bad, f"seed {seed}: customers that succeeded differ from the truth:\n" + "\n".join(map(str, bad))
    inv = rig.invariant()
    assert inv.ok, f"seed {seed}: {inv}"

    # the rerun after the window: nothing left failing, everything equal to the truth, nothing doubled
    second = rig.run(models=models, env=source_settings(max_attempts=RERUN_ATTEMPTS))
    assert second.returncode == 0, f"seed {seed}: the rerun did not recover\n{second.describe()}"
    final = rig.compare(ledger=models)
    assert final.ok, f"seed {seed}: after one rerun the warehouse differs from the truth:\n{final}"
    left = query(rig.warehouse, "select count(*) from loyalty_raw._customer_sync_state where consecutive_failures > 0")
    assert left == [(0,)]

    stats = rig.sb.stats()
    faults = stats["faults"]
    for kind in ("429_random", "503_random", "dropped_connection", "truncated_body", "503_maintenance",
                 "token_expired"):
        assert faults.get(kind, 0) > 0, f"seed {seed}: no {kind} was injected: {faults}"
    figures = {"seed": seed, "customers": customers, "runs": 2, "faults": faults,
               "requests": stats["requests_total"], "failed_first_run": len(failing_state),
               "rows_compared": final.rows_compared + cmp.rows_compared, "mismatches": final.mismatches}
    record_figures(name, **figures)
    return figures


def test_fault_storm_converges_after_one_rerun(rig_factory):
    """Fast subset: 20 customers make only ~60 data requests, so the first ones are scripted to be one of each
    random kind (the dice alone left a kind out now and then) and the token lasts 12 requests; the chaos variant
    uses the issue's shares alone."""
    # data seed 7 puts 1 CareCloud and 3 Capillary customers of 20 in maintenance; the fault dice vary per run
    _storm(rig_factory, "storm_fast", customers=20, seed=chaos_seed(), data_seed=7, models=False,
           drop_share=0.05, truncate_share=0.05, token_max_requests=12,
           scripted="dropped_connection,truncated_body,429_random,503_random,dropped_connection,truncated_body")


@pytest.mark.chaos
@pytest.mark.parametrize("n", range(2))
def test_fault_storm_large(rig_factory, n):
    """Bigger customer lists, a sandbox rate limit on top (the pipeline's limiter must keep 429s rare)."""
    seed = chaos_seed() + n
    _storm(rig_factory, f"storm_{n}", customers=200, seed=seed, data_seed=seed % 1000,
           rate_limit_rps=60.0)
