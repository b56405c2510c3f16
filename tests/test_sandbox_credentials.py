"""The sandbox's several API users / keys per vendor (`SandboxConfig.api_users`): each logs in on its own, has its
own rate budget (FaultConfig.rate_limit_scope "credential", as Capillary sells it "per API key") or shares the
vendor's ("tenant"), and its data requests and 429s are counted on their own in `stats()["credentials"]`."""

from __future__ import annotations

import base64
import hashlib

import requests

from pipelines.sandbox.config import api_users


def _cc_session(sb, user: dict) -> requests.Session:
    s = requests.Session()
    r = s.post(sb.carecloud_base_url + "/users/actions/login",
               json={"user_external_application_id": user["external_app_id"], "login": user["login"],
                     "password": user["password"]})
    assert r.status_code == 200, r.text
    s.headers["Authorization"] = "Bearer " + r.json()["data"]["bearer_token"]
    return s


def _cc_statuses(sb, session: requests.Session, n: int) -> list[int]:
    cid = sb.customer_ids("carecloud")[1]
    return [session.get(sb.carecloud_base_url + "/point-history", params={"customer_id": cid}).status_code
            for _ in range(n)]


def test_each_user_logs_in_and_has_its_own_bucket(sandbox_factory):
    sb = sandbox_factory(customers=5, api_users=2, rate_limit_rps=0.5, rate_limit_burst=3)
    first, second = api_users("carecloud", 2)
    assert (first["login"], second["login"]) == ("sandbox", "sandbox-2")
    a, b = _cc_session(sb, first), _cc_session(sb, second)
    assert _cc_statuses(sb, a, 5) == [200, 200, 200, 429, 429]
    assert _cc_statuses(sb, b, 4) == [200, 200, 200, 429], "user 2's budget is its own"
    counts = sb.stats()["credentials"]
    assert counts["carecloud:sandbox"]["requests"] == 5 and counts["carecloud:sandbox"]["429"] == 2
    assert counts["carecloud:sandbox-2"]["requests"] == 4 and counts["carecloud:sandbox-2"]["429"] == 1
    assert 2 <= counts["carecloud:sandbox-2"]["peak_per_second"] <= 4

    # a third user is not configured; the second user's password does not open the first user's login
    r = requests.post(sb.carecloud_base_url + "/users/actions/login",
                      json={"user_external_application_id": "sandbox-app", "login": "sandbox-3",
                            "password": "sandbox-password-3"})
    assert r.status_code == 401
    r = requests.post(sb.carecloud_base_url + "/users/actions/login",
                      json={"user_external_application_id": "sandbox-app", "login": "sandbox",
                            "password": "sandbox-password-2"})
    assert r.status_code == 401


def test_tenant_scope_shares_one_bucket(sandbox_factory):
    sb = sandbox_factory(customers=5, api_users=2, rate_limit_rps=0.5, rate_limit_burst=3,
                         rate_limit_scope="tenant")
    first, second = api_users("carecloud", 2)
    assert _cc_statuses(sb, _cc_session(sb, first), 2) == [200, 200]
    assert _cc_statuses(sb, _cc_session(sb, second), 2) == [200, 429], "one bucket for the vendor"
    assert sb.stats()["credentials"]["carecloud:sandbox-2"]["429"] == 1


def test_capillary_keys_and_tills_per_user(sandbox_factory):
    sb = sandbox_factory(customers=5, api_users=2, rate_limit_rps=0.5, rate_limit_burst=2)
    ident = sb.customer_ids("capillary")[0]
    url = sb.url + "/v2/points/transfer"
    params = {"source": "INSTORE", "identifierName": "id", "identifierValue": ident}
    second = api_users("capillary", 2)[1]
    token = requests.post(sb.url + "/v3/oauth/token/generate",
                          json={"key": second["key"], "secret": second["secret"]}).json()["data"]["accessToken"]
    oauth = [requests.get(url, params=params, headers={"X-CAP-API-OAUTH-TOKEN": token}).status_code
             for _ in range(3)]
    basic_value = base64.b64encode(
        f"{second['till_id']}:{hashlib.md5(second['password'].encode()).hexdigest()}".encode()).decode()
    basic = [requests.get(url, params=params, headers={"Authorization": "Basic " + basic_value}).status_code
             for _ in range(3)]
    assert oauth == [200, 200, 429] and basic == [200, 200, 429]
    counts = sb.stats()["credentials"]
    assert (counts["capillary:sandbox-key-2"]["requests"], counts["capillary:sandbox-key-2"]["429"]) == (3, 1)
    assert counts["capillary:sandbox.till-2"]["429"] == 1
    wrong = requests.post(sb.url + "/v3/oauth/token/generate", json={"key": second["key"], "secret": "sandbox-secret"})
    assert wrong.status_code == 401
