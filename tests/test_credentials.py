"""Several credentials per source (`[[sources.<name>.credentials]]`, pipelines/credentials.py, docs/credentials.md):
typed and checked like every setting; each credential with its own login and rate limiter across the worker
processes; customers assigned by the stable hash; a refused credential fails only its own customers."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import credentials
from pipelines.config import ConfigError, load_settings
from pipelines.multiplex import run_multiplexed
from pipelines.http import Pause
from pipelines.sandbox.config import api_users
from pipelines.sharding import bucket
from tests.chaos.compare import compare
from tests.helpers.cli import cli_env, query, run_cli

ROOT = Path(__file__).resolve().parents[1]
NOW = dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc)
UNTIL = "2026-11-20T00:00:00Z"
CC = "SOURCES__CARECLOUD__CREDENTIALS"


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No setting from the test run's environment; cwd = an empty directory (no .dlt files) unless a test writes
    some."""
    for name in list(os.environ):
        if name.startswith(("SOURCES__", "LOYALTY__", "DESTINATION__")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SOURCES__CARECLOUD__BASE_URL", "http://127.0.0.1:9/cc")
    monkeypatch.setenv("SOURCES__CAPILLARY__BASE_URL", "http://127.0.0.1:9")
    return monkeypatch


def _cc(name: str, login: str, **extra: object) -> dict:
    return {"name": name, "login": login, "password": f"pw-{login}-secret", "external_app_id": "app-1234", **extra}


# ---------------------------------------------------------------------------------------------- configuration
def test_single_table_is_one_credential_named_default(clean_env) -> None:
    clean_env.setenv(CC + "__LOGIN", "login-single")
    clean_env.setenv(CC + "__PASSWORD", "pw-single-secret")
    clean_env.setenv(CC + "__EXTERNAL_APP_ID", "app-1234")
    cfg = load_settings().source("carecloud")
    assert credentials.names(cfg) == ["default"] and cfg.credentials is cfg.credential_sets[0]
    assert credentials.lanes(cfg) is None and credentials.total_concurrency(cfg) == cfg.concurrency


def test_toml_array_of_tables_typed_in_list_order_and_redacted(clean_env, tmp_path: Path) -> None:
    """In a fresh process (dlt reads the .dlt files of the working directory once per process)."""
    (tmp_path / ".dlt").mkdir()
    (tmp_path / ".dlt" / "secrets.toml").write_text("""
[sources.carecloud]
rate_limit = 8

[[sources.carecloud.credentials]]
name = "zulu"
login = "login-zulu"
password = "pw-zulu-secret"
external_app_id = "app-1234"
rate_limit = "5.5"
concurrency = 3

[[sources.carecloud.credentials]]
name = "alpha"
login = "login-alpha"
password = "pw-alpha-secret"
external_app_id = "app-1234"

[[sources.capillary.credentials]]
name = "eu-oauth"
key = "key-eu-1234"
secret = "secret-eu-1234"

[[sources.capillary.credentials]]
name = "eu-basic"
till_id = "till-eu-1234"
password = "pw-till-secret"
""", encoding="utf-8")
    code = """if True:
        import json
        from pipelines import credentials
        from pipelines.config import load_settings
        from pipelines.logs import redact
        s = load_settings()
        cc, cap = s.source("carecloud"), s.source("capillary")
        print(json.dumps({
            "names": credentials.names(cc), "concurrency": cc.concurrency,
            "rates": [credentials.rate_limit(cc, c) for c in cc.credential_sets],
            "concurrencies": [credentials.concurrency(cc, c) for c in cc.credential_sets],
            "lanes": credentials.lanes(cc, processes=2), "total_rate": credentials.total_rate(cc),
            "cap": [type(c).__name__ for c in cap.credential_sets], "cap_names": credentials.names(cap),
            "redacted": redact("login-zulu pw-alpha-secret secret-eu-1234 pw-till-secret till-eu-1234 "
                               "alpha zulu eu-oauth default")}))
    """
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["names"] == ["zulu", "alpha"], "in the order of the list"
    assert got["rates"] == [5.5, 8.0] and got["concurrencies"] == [3, got["concurrency"]]
    assert got["lanes"] == [2, -(-got["concurrency"] // 2)] and got["total_rate"] == 13.5
    assert got["cap"] == ["CapillaryOAuthCredentials", "CapillaryBasicCredentials"]
    assert got["cap_names"] == ["eu-oauth", "eu-basic"]
    assert got["redacted"] == "*** *** *** *** *** alpha zulu eu-oauth default", "names are not secrets"


@pytest.mark.parametrize("entries, message", [
    ([_cc("a", "login-a"), _cc("a", "login-b")], "the name 'a' is used twice"),
    ([_cc("a", "login-a"), _cc("b", "login-a")], "'a' and 'b' are the same API user"),
    ([_cc("a", "login-a"), {"login": "login-b", "password": "pw-b-secret", "external_app_id": "x"}],
     "entry 2 (environment): set name"),
    ([_cc("a", "login-a"), {"name": "b", "login": "login-b"}], "entry 2 (environment): password, external_app_id not set"),
    ([_cc("a", "login-a"), _cc("b c", "login-b")], "credential name 'b c'"),
    ([_cc("a", "login-a", rate_limit="fast")], "rate_limit = 'fast' is not a valid float"),
    ([_cc("a", "login-a", concurrency=0)], "concurrency must be 1 or more"),
    ([], "is an empty list"),
])
def test_bad_credential_lists_stop_with_a_clear_message(clean_env, entries, message) -> None:
    clean_env.setenv(CC, json.dumps(entries))
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        load_settings()
    assert "secret" not in str(caught.value), "no password in the message"


def test_unknown_key_in_an_entry_names_the_nearest(clean_env) -> None:
    clean_env.setenv(CC, json.dumps([_cc("a", "login-a"), {**_cc("b", "login-b"), "rate_limt": 3}]))
    with pytest.raises(ConfigError, match=r"unknown setting: rate_limt in \[\[sources.carecloud.credentials\]\] "
                                          r"entry 2 \(environment\); did you mean rate_limit\?"):
        load_settings()


def test_env_json_array_is_not_a_json_string(clean_env) -> None:
    clean_env.setenv(CC, "[{name = 'a'}]")
    with pytest.raises(ConfigError, match="SOURCES__CARECLOUD__CREDENTIALS is not a JSON array"):
        load_settings()


# ---------------------------------------------------------------------------------------------- assignment
def test_shard_credential_rule() -> None:
    ids = [f"{i:026x}" for i in range(400)]
    for k in range(1, 5):
        used = {credentials.credential_index(c, 2) for c in ids if bucket(c, 4) == k - 1}
        assert used == {credentials.credential_of_shard(k, 4, 2)}
    assert credentials.credential_of_shard(2, 3, 2) is None
    assert credentials.credential_of_shard(3, 3, 1) == 0


class _Client:
    """A credential's client that records what was asked of it; `refused`: its login fails."""

    def __init__(self, refused: bool = False) -> None:
        self.refused, self.calls = refused, []

    def check(self) -> None:
        self.calls.append("check")
        if self.refused:
            from pipelines.errors import SourceUnavailable
            raise SourceUnavailable("login refused")

    def list_changes(self) -> str:
        self.calls.append("list")
        return "listed"


def test_a_shard_logs_in_and_lists_only_with_its_own_credential() -> None:
    """Shard K of N with C | N: only credential (K-1) mod C is logged in and asked for listings (a shard task sits in
    that credential's Airflow pool and must not spend another's budget); its credential refused = the source is
    unavailable for the shard even though the other works. Unsharded: every credential is logged in, as before."""
    for k in range(1, 5):
        clients = [_Client(), _Client()]
        own = credentials.credential_of_shard(k, 4, 2)
        apis = credentials.CredentialApis("carecloud", ["u1", "u2"], clients, [own])
        apis.check()
        assert apis.list_changes() == "listed"
        assert clients[own].calls == ["check", "list"] and clients[1 - own].calls == [], (k, clients)
    refused = credentials.CredentialApis("carecloud", ["u1", "u2"], [_Client(), _Client(refused=True)], [1])
    with pytest.raises(Exception, match="no credential works: u2: login refused"):
        refused.check()
    everyone = [_Client(), _Client()]
    credentials.CredentialApis("carecloud", ["u1", "u2"], everyone).check()
    assert [c.calls for c in everyone] == [["check"], ["check"]]


def test_lanes_keep_each_credential_within_its_limit_without_blocking_the_other() -> None:
    """Lane 0 items take long, lane 1 items are quick: lane 1 is never held up behind lane 0's full slots, and
    neither lane ever has more in flight than its limit."""
    in_flight, peak, order = [0, 0], [0, 0], []

    def steps(item: tuple[int, int]):
        lane, n = item
        in_flight[lane] += 1
        peak[lane] = max(peak[lane], in_flight[lane])
        try:
            yield Pause(0.05 if lane == 0 else 0.001)
        finally:
            in_flight[lane] -= 1
        return n

    items = [(0, n) for n in range(8)] + [(1, n) for n in range(8)]
    for item, result in run_multiplexed(items, steps, 99, lanes=(lambda it: it[0], [2, 3])):
        assert result == item[1]
        order.append(item)
    assert peak == [2, 3] and len(order) == 16
    assert order.index((1, 7)) < order.index((0, 7)), "lane 1 finished before the slow lane 0"


# ---------------------------------------------------------------------------------------------- real runs
def _run(env: dict[str, str], *args: str):
    return run_cli(env, "run", "--no-models", "--until", UNTIL, *args)


def _expected_requests(sb, source: str, n_credentials: int) -> list[int]:
    """Data requests per credential (list order u1, u2, ...) when every customer is one request."""
    counts = [0] * n_credentials
    for cid in sb.customer_ids(source):
        counts[bucket(cid, n_credentials)] += 1
    return counts


def test_two_credentials_load_the_truth_each_within_its_own_limit(sandbox_factory, tmp_path: Path) -> None:
    """Two CareCloud users and two Capillary keys, each limited by the sandbox to 12 requests/s (its bucket per
    credential); the client's limit per credential is 10/s, so both together send ~20/s: more than one credential
    may. Worker processes. The rows equal the truth, no 429, each customer fetched with bucket(id, 2)'s credential
    (counted by the sandbox), the run report counts per credential; a second night fetches each customer with the
    same credential again. The same run against a sandbox that counts all users of a vendor against ONE bucket
    (rate_limit_scope tenant) meets 429s: the two credentials' traffic together was above one credential's."""
    # a bucket of 5: the client spaces requests when it sends them, the sandbox counts them when it handles them;
    # on a busy machine a request handled late then bunches with the next (tests/test_airflow_dag.py SANDBOX_BURST)
    sb = sandbox_factory(customers=70, now=NOW, api_users=2, heavy_every=0, rate_limit_rps=12, rate_limit_burst=5)
    wh = tmp_path / "w" / "loyalty_warehouse.duckdb"
    env = cli_env(sb.env(wh, credentials=2), LOYALTY__EXTRACT_PROCESSES=2, SOURCES__CARECLOUD__RATE_LIMIT=10,
                  SOURCES__CAPILLARY__RATE_LIMIT=10, SOURCES__CARECLOUD__CONCURRENCY=4,
                  SOURCES__CAPILLARY__CONCURRENCY=4)
    proc = _run(env)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    cmp = compare(wh, sb.truth(), until=NOW, ledger=False)
    assert cmp.ok, str(cmp)
    counts = sb.stats()["credentials"]
    cc_expected = _expected_requests(sb, "carecloud", 2)
    cap_expected = _expected_requests(sb, "capillary", 2)
    assert [counts["carecloud:sandbox"]["requests"], counts["carecloud:sandbox-2"]["requests"]] == cc_expected
    assert [counts["capillary:sandbox-key"]["requests"], counts["capillary:sandbox-key-2"]["requests"]] == cap_expected
    assert all(c["429"] == 0 for c in counts.values()), counts
    assert min(cc_expected) > 15, "both credentials carried a real share"
    logins = sb.stats()["requests"]["carecloud.login"]["200"]
    assert logins == 2, "one login per credential, shared by the worker processes"
    report = json.loads(query(wh, "select sources from loyalty_raw.runs")[0][0])
    per = report["carecloud"]["credentials"]
    # the client counts its login request too
    assert [per["u1"]["logins"], per["u2"]["logins"]] == [1, 1] and per["u1"]["http_429"] == 0
    assert [per["u1"]["requests"] - 1, per["u2"]["requests"] - 1] == cc_expected
    assert "credentials: u1 " in proc.stdout

    # the next night: the same customers with the same credentials (another run, other worker processes)
    sb.advance(86_400)
    before = {k: v["requests"] for k, v in sb.stats()["credentials"].items()}
    proc = run_cli(env, "run", "--no-models", "--until", "2026-11-21T00:00:00Z", "--source", "carecloud")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    after = {k: v["requests"] - before[k] for k, v in sb.stats()["credentials"].items()}
    assert [after["carecloud:sandbox"], after["carecloud:sandbox-2"]] == cc_expected

    shared = sandbox_factory(customers=50, now=NOW, api_users=2, heavy_every=0, rate_limit_rps=12,
                             rate_limit_burst=2, rate_limit_scope="tenant")
    wh2 = tmp_path / "shared" / "loyalty_warehouse.duckdb"
    env2 = {**cli_env(shared.env(wh2, credentials=2), LOYALTY__EXTRACT_PROCESSES=2, SOURCES__CARECLOUD__RATE_LIMIT=10,
                      SOURCES__CARECLOUD__CONCURRENCY=4, SOURCES__CARECLOUD__MAX_ATTEMPTS=10)}
    _run(env2, "--source", "carecloud")
    total_429 = sum(c["429"] for c in shared.stats()["credentials"].values())
    assert total_429 > 0, shared.stats()["credentials"]


def test_a_refused_credential_fails_only_its_customers(sandbox_factory, tmp_path: Path) -> None:
    """u2's password is wrong: u1's customers load (equal to the truth), u2's fail with credential_unavailable,
    recorded per customer and once for the run; exit 2 (partial), the wrong password nowhere. With the password
    fixed, the next run loads them. Both wrong: the source is unavailable (exit 1), as with one bad credential."""
    sb = sandbox_factory(customers=40, now=NOW, api_users=2)
    wh = tmp_path / "loyalty_warehouse.duckdb"
    base = cli_env(sb.env(wh, credentials=2), LOYALTY__EXTRACT_PROCESSES=2)
    users = [{k: u[k] for k in ("name", "login", "password", "external_app_id")} for u in api_users("carecloud", 2)]
    wrong = "wrong-password-7f3a9c"
    bad = [users[0], {**users[1], "password": wrong}]
    proc = _run({**base, CC: json.dumps(bad)}, "--source", "carecloud")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "credential u2 unusable" in proc.stdout and wrong not in out
    ids = sb.customer_ids("carecloud")
    of_u2 = sorted(c for c in ids if bucket(c, 2) == 1)
    failed = sorted(r[0] for r in query(wh, "select customer_id from loyalty_raw.sync_issues "
                                            "where code = 'credential_unavailable' and customer_id is not null"))
    assert failed == of_u2 and 0 < len(of_u2) < len(ids)
    run_level = query(wh, "select message from loyalty_raw.sync_issues where code = 'credential_unavailable' "
                          "and customer_id is null")
    assert len(run_level) == 1 and "credential u2" in run_level[0][0]
    loaded = {r[0] for r in query(wh, "select distinct customer_id from loyalty_raw.carecloud_point_history")}
    assert loaded and loaded.isdisjoint(of_u2)
    with_records = {c for c in ids if bucket(c, 2) == 0} & loaded
    assert with_records == loaded
    stored = " ".join(str(r) for r in query(wh, "select * from loyalty_raw.sync_issues")
                      + query(wh, "select * from loyalty_raw.runs"))
    assert wrong not in stored

    proc = _run({**base, CC: json.dumps(users)}, "--source", "carecloud")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    cmp = compare(wh, sb.truth(), until=NOW, ledger=False, sources=("carecloud",))
    assert cmp.ok, str(cmp)

    both = [{**users[0], "password": wrong}, {**users[1], "password": wrong}]
    proc = _run({**base, CC: json.dumps(both)}, "--source", "carecloud")
    assert proc.returncode == 1 and "no credential works" in proc.stdout and wrong not in proc.stdout + proc.stderr
