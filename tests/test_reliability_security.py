"""Security: credentials never leave the process that uses them, plain http:// to the network is refused, and the
secrets file is kept out of git.

The leak test runs full loads (with retries, token expiry and a wrong password, so error paths run too) with
distinctive credential values, then searches everything the runs left behind: stdout/stderr of every run (text and
JSON logs at debug level), every file under the test's directory (warehouse file and WAL, `.dlt-pipelines`, logs,
the run's HOME), every table of the warehouse exported to CSV, and every file of the repository written during
the test (the exported dlt schema YAML, dbt's target and logs).
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from tests.chaos.fixtures import record_figures, rig_factory  # noqa: F401  (fixture)
from tests.chaos.harness import ROOT, connect_ro

CC_LOGIN = "ccLogin-Qm4Rt8Vw"
CC_PASSWORD = "ccPassw0rd-7Kx2Lp9Zs4"
CC_APP_ID = "ccAppId-3Hn6Bd1Yc"
CAP_TILL = "capTill-5Wq8Ej2Uf"
CAP_PASSWORD = "capPassw0rd-9Gt4Mv6Xa1"
CAP_KEY = "capKey-2Rs7Pk3Nd"
CAP_SECRET = "capSecret-8Yb1Cf5Jh0"
WRONG_PASSWORD = "ccWrongPw-4Tz9Qa2Lk6"
# an alert webhook URL carries its token in the path (Slack, Teams); port 9 refuses, so the failure is logged
WEBHOOK_TOKEN = "hookTok3n-6Vr2Np8Qe5"


def _derived(secrets: list[str]) -> list[str]:
    """What a leak may look like besides the value itself: the Capillary Basic header parts."""
    md5 = hashlib.md5(CAP_PASSWORD.encode()).hexdigest()
    basic = base64.b64encode(f"{CAP_TILL}:{md5}".encode()).decode()
    return secrets + [md5, basic]


@pytest.fixture
def distinctive_credentials(monkeypatch):
    """The sandbox accepts only these values (its credential constants are swapped for this test), so a run that
    loads data provably used them."""
    import pipelines.sandbox.api as api
    import pipelines.sandbox.config as cfg

    values = {"CARECLOUD_LOGIN": CC_LOGIN, "CARECLOUD_PASSWORD": CC_PASSWORD, "CARECLOUD_APP_ID": CC_APP_ID,
              "CAPILLARY_TILL_ID": CAP_TILL, "CAPILLARY_PASSWORD": CAP_PASSWORD,
              "CAPILLARY_OAUTH_KEY": CAP_KEY, "CAPILLARY_OAUTH_SECRET": CAP_SECRET}
    for name, value in values.items():
        for mod in (api, cfg):
            if hasattr(mod, name):
                monkeypatch.setattr(mod, name, value)
    return values


def _spy_tokens(sb) -> list[str]:
    """Bearer and OAuth tokens the sandbox hands out are credentials too."""
    tokens: list[str] = []
    app = sb.app
    for name, path in (("carecloud_login", ("data", "bearer_token")), ("capillary_oauth", ("data", "accessToken"))):
        original = getattr(app, name)

        def spy(req, _original=original, _path=path):
            resp = _original(req)
            if resp.status == 200:
                obj = orjson.loads(resp.body)
                tokens.append(obj[_path[0]][_path[1]])
            return resp

        setattr(app, name, spy)
    return tokens


def _files_under(*roots: Path) -> list[Path]:
    out = []
    for root in roots:
        if root.is_file():
            out.append(root)
        elif root.is_dir():
            out += [p for p in root.rglob("*") if p.is_file()]
    return out


def _repo_files_written_since(start: float) -> list[Path]:
    skip = {".git", ".venv", "node_modules", "__pycache__", ".pytest_cache"}
    found = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in skip]
        for f in filenames:
            p = Path(dirpath) / f
            try:
                if p.stat().st_mtime >= start:
                    found.append(p)
            except OSError:
                continue
    return found


def _leaks(needles: list[str], haystacks: dict[str, bytes]) -> list[str]:
    found = []
    for where, data in haystacks.items():
        for needle in needles:
            for form in {needle.encode(), needle.encode("utf-16-le")}:
                if form in data:
                    found.append(f"{needle!r} in {where}")
    return found


@pytest.mark.parametrize("models", [False, pytest.param(True, marks=pytest.mark.chaos)])
def test_no_credential_in_any_output_log_report_or_file(rig_factory, distinctive_credentials, tmp_path, models):
    """The fast subset loads without dbt; the chaos variant also builds the marts (dbt's target and logs)."""
    start = time.time() - 1
    home = tmp_path / "home"
    home.mkdir()
    rig = rig_factory(
        "sec", customers=24, token_max_requests=15, random_429_share=0.05, error_503_share=0.03,
        settings={"max_attempts": 8},
        env={"SOURCES__CAPILLARY__CREDENTIALS__KEY": CAP_KEY, "SOURCES__CAPILLARY__CREDENTIALS__SECRET": CAP_SECRET,
             "HOME": str(home)})
    tokens = _spy_tokens(rig.sb)
    # run from the test's own directory: the warehouse is then "the project's", so the dlt schema YAML is
    # exported (to ./schemas) like `make demo` does, and that export is searched too
    rig.etl.cwd = rig.dir

    first = rig.etl.run("-vv", "run", "--until", rig.until().isoformat(), "--no-models")
    assert first.returncode == 0, first.describe()
    rig.sb.advance(86400)
    # a run killed before its load leaves extracted/normalized package files behind: keep a copy to search
    crashed = rig.etl.run("-vv", "run", "--until", rig.until().isoformat(), "--no-models", crash_at="load")
    assert crashed.crashed, crashed.describe()
    shutil.copytree(rig.warehouse.parent / ".dlt-pipelines", tmp_path / "pending-packages")
    second = rig.etl.run("-vv", "--log-format", "json", "run", "--until", rig.until().isoformat(),
                         *([] if models else ["--no-models"]))
    assert second.returncode == 0, second.describe()
    # a wrong password: the error path (401, exception message, failed run report, the alert whose webhook
    # cannot be reached) must not echo it, nor the webhook's token
    wrong = rig.etl.run("-vv", "run", "--until", rig.until().isoformat(), "--no-models",
                        env={"SOURCES__CARECLOUD__CREDENTIALS__PASSWORD": WRONG_PASSWORD,
                             "LOYALTY__ALERT_WEBHOOK": f"http://127.0.0.1:9/services/T0/B0/{WEBHOOK_TOKEN}"})
    assert wrong.returncode in (1, 2), wrong.describe()

    # the loads really used these credentials: data arrived, tokens were issued and renewed
    cmp = rig.compare(ledger=models)
    assert cmp.ok, str(cmp)
    assert len([t for t in tokens if t]) >= 2, "token expiry should have forced a new login"

    export = tmp_path / "export"
    con = connect_ro(rig.warehouse)
    try:
        con.execute(f"export database '{export}' (format csv)")
    finally:
        con.close()

    assert "alert_webhook POST failed" in wrong.stderr, "the alert path should have run"
    needles = _derived(list(distinctive_credentials.values()) + [WRONG_PASSWORD, WEBHOOK_TOKEN]) + tokens
    haystacks: dict[str, bytes] = {}
    for i, run in enumerate(rig.etl.runs):
        haystacks[f"run {i} stdout"] = run.stdout.encode()
        haystacks[f"run {i} stderr"] = run.stderr.encode()
    files = _files_under(rig.dir, home, export, tmp_path / "pending-packages")
    files += _repo_files_written_since(start)
    for p in files:
        haystacks[str(p)] = p.read_bytes()
    # the customer files and env are the test's own inputs; nothing else under rig.dir holds secrets
    assert any(".dlt-pipelines" in k for k in haystacks), "expected the dlt pipeline dir beside the warehouse"
    assert any("pending-packages" in k and "/normalized/" in k for k in haystacks), \
        "expected the package files a crashed run left behind"
    assert any(k.endswith(".schema.yaml") for k in haystacks), "expected the exported dlt schema YAML"
    assert any(k.endswith(".csv") and "export" in k for k in haystacks), "expected exported warehouse tables"
    leaks = _leaks(needles, haystacks)
    assert not leaks, "credentials leaked:\n" + "\n".join(leaks)
    # the searched text really contains the run's output (a search over nothing would pass trivially)
    assert "carecloud" in first.output and "run " in first.output
    record_figures(f"secrets{'_models' if models else ''}", runs=len(rig.etl.runs), crashes=1,
                   files_searched=len(files), bytes_searched=sum(len(v) for v in haystacks.values()),
                   needles=len(needles), leaks=0, rows_compared=cmp.rows_compared, mismatches=cmp.mismatches)


@pytest.mark.parametrize("url,refused", [
    ("http://api.example.com/webservice/rest-api/enterprise-interface/v1.0", True),
    ("http://10.1.2.3:8080/v1.0", True),
    ("http://127.0.0.1.nip.io/v1.0", True),
    ("http://localhost.example.com/v1.0", True),
    ("http://127.0.0.1:9/v1.0", False),
    ("http://[::1]:9/v1.0", False),
    ("http://localhost:9/v1.0", False),
    ("https://api.example.com/v1.0", False),
])
def test_plain_http_to_a_non_loopback_host_is_refused(url, refused):
    from pipelines.config import ConfigError, check_base_url

    if refused:
        with pytest.raises(ConfigError, match="allow_insecure_http"):
            check_base_url(url, "carecloud", allow_insecure=False)
        assert check_base_url(url, "carecloud", allow_insecure=True)
    else:
        assert check_base_url(url, "carecloud", allow_insecure=False)


def _source_names() -> list[str]:
    from pipelines.config import source_configspecs

    return sorted(source_configspecs())


@pytest.mark.parametrize("source", _source_names())
def test_cli_refuses_plain_http_before_touching_anything(tmp_path, source):
    """End to end through the settings resolution of the real CLI, for every source's base URL: exit code 1, a
    message that says how to allow it, no traceback, no warehouse created; `[loyalty] allow_insecure_http = true`
    (here as env) lets it through."""
    url = "http://api.example.com/webservice/rest-api/enterprise-interface/v1.0"
    warehouse = tmp_path / "w" / "loyalty_warehouse.duckdb"
    env = {**os.environ, f"SOURCES__{source.upper()}__BASE_URL": url,
           "DESTINATION__DUCKDB__CREDENTIALS": str(warehouse)}
    run = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "--no-models"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "allow_insecure_http" in out and "Traceback" not in out, out
    assert not warehouse.exists()
    code = f"from pipelines.config import load_settings; print(load_settings().source({source!r}).base_url)"
    allowed = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                             env={**env, "LOYALTY__ALLOW_INSECURE_HTTP": "true"})
    assert allowed.stdout.strip() == url, allowed.stdout + allowed.stderr


def test_secrets_file_is_ignored_by_git_and_documented():
    check = subprocess.run(["git", "check-ignore", "-q", ".dlt/secrets.toml"], cwd=ROOT)
    assert check.returncode == 0, ".dlt/secrets.toml must be git-ignored"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert not [f for f in tracked.splitlines() if f.endswith("secrets.toml")], "a secrets.toml is committed"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert ".dlt/secrets.toml" in readme, "README must say secrets go in .dlt/secrets.toml"
    assert "SOURCES__CARECLOUD__CREDENTIALS__PASSWORD" in readme or "environment variable" in readme.lower(), \
        "README must say secrets can come from environment variables"
