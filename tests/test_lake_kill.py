"""kill -9 of a run loading a lake (tests/chaos/lake_rig.py), before, inside and after a load, then a clean rerun:
after each kill the lake holds nothing doubled and no customer marked done without its rows; the rerun equals the
sandbox's truth row for row. Set LOYALTY_CHAOS_SEED to replay (the seed is in every failure message)."""

from __future__ import annotations

import os
import random
import subprocess
import time

import pytest

from tests.chaos.fixtures import Rig, chaos_seed, record_figures, rig_factory  # noqa: F401  (fixture)
from tests.chaos.harness import EtlRun
from tests.chaos.lake_rig import lake_rig  # noqa: F401  (fixture)


def _check_after_crash(rig: Rig, run: EtlRun, ctx: str) -> None:
    assert run.crashed, f"{ctx}: the run was not killed:\n{run.describe()}"
    assert not run.leftovers, f"{ctx}: processes of the killed run were still alive: {run.leftovers}"
    inv = rig.invariant()
    assert inv.ok, f"{ctx}: after the crash the lake is inconsistent:\n{inv}\n{run.describe()}"


def _kill_during_load(rig: Rig, delay: float) -> EtlRun:
    """Hold the run just before its first load, release it and SIGKILL the whole run `delay` s later: inside dlt's
    load into the lake (its copy jobs, the merge, the commits to the catalog) or just after it."""
    sp, release = rig.spawn_held("load")
    release.touch()
    try:
        sp.proc.wait(delay)
    except subprocess.TimeoutExpired:
        sp.kill()
    return sp.wait(600)


def test_kill_9_mid_load_then_rerun_loses_and_doubles_nothing(lake_rig):
    """One round of 8 customers (a round's load into the lake has a fixed cost of several seconds, so `make test`
    keeps to one): killed inside its load into the lake (dlt's copy jobs, merge and catalog commits), then killed
    after the load but before its bookkeeping; after each the lake holds nothing doubled and no customer marked done
    without its rows; the clean rerun then equals the truth row for row. Several rounds and nights: the chaos
    storm below."""
    seed = chaos_seed()
    rng = random.Random(seed)
    rig = lake_rig("kill", customers=8, seed=rng.randrange(1000))
    delay = rng.uniform(0.2, 4.0)       # a round's load into the lake takes several seconds here
    killed = _kill_during_load(rig, delay)
    in_load = killed.crashed and "round committed" not in killed.stderr
    if killed.crashed:
        _check_after_crash(rig, killed, f"seed {seed}: kill {delay:.2f} s into the load")
    else:  # a fast machine finished the whole run first: then it must have succeeded
        assert killed.returncode == 0, f"seed {seed}: {killed.describe()}"
    _check_after_crash(rig, rig.run(crash_at="state"), f"seed {seed}: crash before the bookkeeping")
    rerun = rig.run()
    assert rerun.returncode == 0, f"seed {seed}: {rerun.describe()}"
    cmp = rig.compare()
    assert cmp.ok, f"seed {seed}: after the crashes and a rerun the lake differs from the truth:\n{cmp}"
    record_figures("lake_kill_fast", seed=seed, kill_delay_s=round(delay, 2), killed_in_load=in_load,
                   rows_compared=cmp.rows_compared, mismatches=cmp.mismatches)


@pytest.mark.chaos
def test_kill_9_storm_on_the_lake(lake_rig):
    """Many kills over several incremental nights (new and late records between them): crash points at every stage,
    kills at random moments inside the load and kills while a later round is fetched (a round already committed;
    a reader attaches the lake at that moment: `Rig.kill_while_fetching`), then the clean rerun each night equals
    the truth."""
    from pipelines.faultpoints import STAGES

    seed = chaos_seed()
    rng = random.Random(seed)
    customers, per_round = 60, 15    # 4 rounds per run
    rig = lake_rig("storm", customers=customers, chunk_customers=per_round, seed=rng.randrange(1000),
                   random_429_share=0.02)
    budget_s = float(os.environ.get("LOYALTY_CHAOS_MINUTES", "5")) * 60
    started = time.monotonic()
    tally = {"runs": 0, "crashes": 0, "rows_compared": 0, "by_kind": {}}
    night = 0
    kinds: list[str] = []
    while time.monotonic() - started < budget_s or night < 2:
        for k in range(rng.randint(2, 4)):
            ctx = f"seed {seed} night {night} crash {k + 1}"
            if not kinds:  # every kind in turn (shuffled), the kill while fetching first
                kinds = [*STAGES, "in load", "in load"]
                rng.shuffle(kinds)
                kinds.append("fetch, later round")
            kind = kinds.pop()
            if kind == "in load":
                run = _kill_during_load(rig, rng.uniform(0.05, 3.0))
            elif kind == "fetch, later round":
                # past round 1's fetches (`per_round` customers of each source; every customer is fetched each run)
                run, _ = rig.kill_while_fetching(rng.randint(2 * per_round + 1, 2 * customers),
                                                 models=False)
            else:
                spec = f"{kind}:{rng.randint(1, 3)}" if kind in ("normalize", "load", "state") else kind
                run = rig.run(models=kind == "models", crash_at=spec)
            tally["runs"] += 1
            if run.crashed:
                tally["crashes"] += 1
                tally["by_kind"][kind] = tally["by_kind"].get(kind, 0) + 1
                _check_after_crash(rig, run, f"{ctx} ({kind})")
            else:
                assert run.returncode == 0, f"{ctx} ({kind}): {run.describe()}"
        rerun = rig.run(models=True)
        assert rerun.returncode == 0, f"seed {seed} night {night}: {rerun.describe()}"
        cmp = rig.compare(ledger=True)
        tally["rows_compared"] += cmp.rows_compared
        assert cmp.ok, f"seed {seed} night {night}: the rerun differs from the truth:\n{cmp}"
        night += 1
        rig.sb.advance(rng.uniform(6, 40) * 3600)
    record_figures("lake_kill_storm", seed=seed, nights=night, **tally)
