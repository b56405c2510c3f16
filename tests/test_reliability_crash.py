"""Crashes: SIGKILL the pipeline during extraction, normalization, load, the state commit and the SQL models (at the
pipeline's crash points, and at random moments from outside), then rerun. After every crash the warehouse must hold
nothing doubled or invented and no customer's window may be marked done before its rows are committed; after the
rerun the raw tables and the ledger equal the sandbox's truth row for row.

`make test` runs a few crashes; `make chaos` runs many, over several incremental nights with new and late records.
Set LOYALTY_CHAOS_SEED to replay a failing sequence (the seed is in every failure message).
"""

from __future__ import annotations

import os
import random
import time

import pytest

from tests.chaos.fixtures import chaos_seed, record_figures, rig_factory  # noqa: F401  (fixture)
from tests.chaos.harness import CRASH_STAGES, EtlRun


def _check_after_crash(rig, run: EtlRun, ctx: str) -> None:
    assert not run.leftovers, f"{ctx}: processes of the killed run were still alive: {run.leftovers}"
    inv = rig.invariant()
    assert inv.ok, f"{ctx}: after the crash the warehouse is inconsistent:\n{inv}\n{run.describe()}"


class Crasher:
    """Chooses the next crash: the crash points in a shuffled round-robin (so every stage is hit), with a timed
    kill from outside, a kill inside dbt and a kill while a later round is fetched (the file released, a round
    already committed: `Rig.kill_while_fetching`) in every round. A timed kill lands anywhere in a run's expected
    duration. `per_round`, `customers`: customers per source per round and in all."""

    def __init__(self, rng: random.Random, per_round: int, customers: int) -> None:
        self.rng = rng
        self.per_round = per_round
        self.customers = customers
        self.queue: list[str] = []

    def next(self) -> str:
        if not self.queue:
            self.queue = list(CRASH_STAGES) + ["timed kill", "kill in models", RELEASED]
            self.rng.shuffle(self.queue)
        return self.queue.pop()

    def crash(self, rig, ctx: str, clean_seconds: float) -> tuple[str, str, EtlRun]:
        kind = self.next()
        if kind == "timed kill":
            delay = self.rng.uniform(0.3, max(1.0, clean_seconds))
            run = rig.run(models=True, kill_after=delay)
            how = f"timed kill after {delay:.1f}s"
        elif kind == "kill in models":
            delay = self.rng.uniform(0.2, max(1.0, clean_seconds / 2))
            run = rig.run(models=True, kill_in_models_after=delay)
            how = f"kill {delay:.1f}s into dbt"
        elif kind == RELEASED:
            # past round 1's fetches (both sources, `per_round` each; fewer when a customer's window is already
            # done this night): while a later round is fetched with the file released
            nth = self.rng.randint(2 * self.per_round + 1, 2 * self.customers)
            run, done = rig.kill_while_fetching(nth)
            how = f"kill at extract:{nth} (file released, {done} customers done)"
            if done is None:
                kind = "fetch, never reached"
        else:
            # extract fires once per customer fetched; normalize and load once per round of customers (one round
            # per source chunk here), so only their first call is sure to come
            spec = f"{kind}:{self.rng.randint(1, 20)}" if kind == "extract" else kind
            run = rig.run(models=True, crash_at=spec)
            how = f"crash point {spec}"
        # a crash point never reached (fewer calls than N) or a kill after the end is a normal, complete run
        assert run.crashed or run.returncode == 0, f"{ctx} {how}: {run.describe()}"
        return kind, how, run


RELEASED = "fetch, file released"


def _night(rig, crasher: Crasher, crashes: int, seed: int, night: int, clean_seconds: float,
           tally: dict) -> float:
    """`crashes` crashed attempts at one night's run, then the clean rerun; returns the clean run's duration."""
    for k in range(crashes):
        ctx = f"seed {seed} night {night} crash {k + 1}"
        kind, how, run = crasher.crash(rig, ctx, clean_seconds)
        tally["runs"] += 1
        if run.crashed:
            tally["crashes"] += 1
            tally["by_kind"][kind] = tally["by_kind"].get(kind, 0) + 1
            _check_after_crash(rig, run, f"{ctx} ({how})")
    return _rerun_equals_truth(rig, f"seed {seed} night {night}", tally).seconds


def _rerun_equals_truth(rig, ctx: str, tally: dict) -> EtlRun:
    """The clean rerun after crashes: exit 0, raw tables and ledger equal to the truth."""
    rerun = rig.run(models=True)
    tally["runs"] += 1
    assert rerun.returncode == 0, f"{ctx}: the rerun failed\n{rerun.describe()}"
    cmp = rig.compare(ledger=True)
    tally["rows_compared"] += cmp.rows_compared
    tally["mismatches"] += cmp.mismatches
    assert cmp.ok, f"{ctx}: after crashes and a rerun the warehouse differs from the truth:\n{cmp}"
    return rerun


def _tally() -> dict:
    return {"runs": 0, "crashes": 0, "by_kind": {}, "rows_compared": 0, "mismatches": 0}


def test_crash_at_each_kind_of_point_then_rerun(rig_factory):
    """Fast subset: the first load crashed in extraction, before normalization, before the load, before the state
    commit; then a complete load killed while dbt builds the marts; then the next night killed from outside at a
    random moment.
    The state is consistent after every crash, and the rerun equals the truth (raw tables and ledger)."""
    seed = chaos_seed()
    rng = random.Random(seed)
    rig = rig_factory("crash", customers=30, seed=rng.randrange(1000))
    tally = _tally()

    def crashed(run: EtlRun, what: str) -> None:
        tally["runs"] += 1
        assert run.crashed, f"seed {seed}: {what} did not crash the run\n{run.describe()}"
        tally["crashes"] += 1
        tally["by_kind"][what.split(":")[0]] = tally["by_kind"].get(what.split(":")[0], 0) + 1
        _check_after_crash(rig, run, f"seed {seed} {what}")

    # one load per round of customers (both sources share a load package), so a 30-customer run has one load
    for spec in (f"extract:{rng.randint(1, 20)}", "normalize", "load", "state"):
        crashed(rig.run(crash_at=spec), spec)
    # a complete load, then killed while dbt builds the marts (a half-built incremental ledger must not survive)
    # dbt build of the 30-customer warehouse lasts ~5 s on a fast day here (~9 s on a slow one): aim inside it
    in_models = rng.uniform(0.5, 3.5)
    crashed(rig.run(models=True, kill_in_models_after=in_models), f"kill in models:{in_models:.1f}s")
    # the load committed before dbt started: the raw tables are complete
    raw = rig.compare(ledger=False)
    assert raw.ok, f"seed {seed}: raw tables after a crash in the models:\n{raw}"

    rig.sb.advance(rng.uniform(6, 40) * 3600)
    delay = rng.uniform(0.3, 5.0)  # a night without models takes ~3-8 s here
    killed = rig.run(kill_after=delay)
    tally["runs"] += 1
    if killed.crashed:
        tally["crashes"] += 1
        tally["by_kind"]["timed kill"] = 1
        _check_after_crash(rig, killed, f"seed {seed} timed kill after {delay:.1f}s")

    _rerun_equals_truth(rig, f"seed {seed}", tally)
    record_figures("crash_fast", seed=seed, **tally)


def test_kill_while_fetching_with_the_file_released_then_rerun(rig_factory):
    """A run of three rounds killed while it fetches its second round: the warehouse writer has let go of the file
    (pipelines/writer.py) after committing round 1 (its load and its bookkeeping), and a reader opens the file
    read-only at that moment and sees round 1's customers marked done. After the kill -9 the state is never ahead
    of the data (round 1 whole, round 2's customers not done) and the clean rerun's raw tables equal the truth
    (no dbt here: the storm below kills runs with marts the same way). Held at the
    crash point (pipelines/faultpoints.py, `extract:N`), so bound by the run's state, not by timing."""
    seed = chaos_seed()
    rng = random.Random(seed)
    per_round = 5                      # customers per source per round; 15 per source -> 3 rounds
    rig = rig_factory("released", customers=15, seed=rng.randrange(1000),
                      env={"LOYALTY__CHUNK_CUSTOMERS": str(per_round)})
    # round 1 fetches exactly `per_round` customers of each source (every window is new: none is skipped);
    # the crash point counts each fetched customer once, so call 2 * per_round + k is inside round 2's fetch
    nth = 2 * per_round + rng.randint(1, 2 * per_round)
    killed, done = rig.kill_while_fetching(nth, models=False)   # no dbt: the marts under kills are the storm's
    tally = _tally()
    tally["runs"] += 1
    assert done is not None, f"seed {seed}: the run never reached extract:{nth}\n{killed.describe()}"
    assert killed.crashed, f"seed {seed}: {killed.describe()}"
    tally["crashes"] += 1
    tally["by_kind"]["fetch, file released"] = 1
    assert done == 2 * per_round, (f"seed {seed}: at extract:{nth} (round 2) the reader saw {done} customers "
                                   f"done, expected round 1's {2 * per_round}")
    _check_after_crash(rig, killed, f"seed {seed} kill at extract:{nth}, file released")
    rerun = rig.run()
    tally["runs"] += 1
    assert rerun.returncode == 0, f"seed {seed}: the rerun failed\n{rerun.describe()}"
    cmp = rig.compare()
    tally["rows_compared"] += cmp.rows_compared
    tally["mismatches"] += cmp.mismatches
    assert cmp.ok, f"seed {seed}: after the kill and a rerun the warehouse differs from the truth:\n{cmp}"
    record_figures("crash_released", seed=seed, kill_at=f"extract:{nth}", done_at_kill=done, **tally)


@pytest.mark.chaos
def test_crash_storm_over_many_nights(rig_factory):
    """Many crashes of every kind over consecutive incremental nights (new and late records between them): 2-5
    crashed attempts per night, then the clean rerun, compared with the truth. Runs for LOYALTY_CHAOS_MINUTES
    (default 5) and at least until 20 crashes happened."""
    seed = chaos_seed()
    rng = random.Random(seed)
    customers, per_round = 80, 30   # 3 rounds per run (30, 30, 20 customers of each source)
    rig = rig_factory("storm", customers=customers, seed=rng.randrange(1000), random_429_share=0.02,
                      env={"LOYALTY__CHUNK_CUSTOMERS": str(per_round)})
    tally = _tally()
    budget_s = float(os.environ.get("LOYALTY_CHAOS_MINUTES", "5")) * 60
    started = time.monotonic()
    crasher = Crasher(rng, per_round, customers)
    clean = _night(rig, crasher, 3, seed, 0, 20.0, tally)
    night = 1
    while (time.monotonic() - started < budget_s or tally["crashes"] < 20) \
            and time.monotonic() - started < 2 * budget_s:
        rig.sb.advance(rng.uniform(2, 48) * 3600)
        clean = _night(rig, crasher, rng.randint(2, 5), seed, night, clean, tally)
        night += 1
    assert tally["crashes"] >= 20, f"seed {seed}: only {tally['crashes']} crashes happened: {tally}"
    missed = {*CRASH_STAGES, RELEASED} - set(tally["by_kind"])
    assert not missed, f"seed {seed}: no crash ever happened at {missed}: {tally}"
    record_figures("crash_storm", seed=seed, nights=night, faults=rig.sb.stats()["faults"], **tally)
