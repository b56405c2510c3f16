"""What both reference variants need to talk to the sandbox the way the pipeline does: the CareCloud bearer token
(one login up front) and the Capillary Basic credentials (the password MD5-hashed, as the API requires)."""

from __future__ import annotations

import hashlib

import requests


def carecloud_token(env: dict[str, str]) -> str:
    answer = requests.post(f"{env['SOURCES__CARECLOUD__BASE_URL']}/users/actions/login", json={
        "user_external_application_id": env["SOURCES__CARECLOUD__CREDENTIALS__EXTERNAL_APP_ID"],
        "login": env["SOURCES__CARECLOUD__CREDENTIALS__LOGIN"],
        "password": env["SOURCES__CARECLOUD__CREDENTIALS__PASSWORD"],
    }, timeout=30)
    answer.raise_for_status()
    return answer.json()["data"]["bearer_token"]


def capillary_basic(env: dict[str, str]) -> tuple[str, str]:
    """(user, password) for HTTP Basic: the till id and the MD5 hex of the password."""
    return (env["SOURCES__CAPILLARY__CREDENTIALS__TILL_ID"],
            hashlib.md5(env["SOURCES__CAPILLARY__CREDENTIALS__PASSWORD"].encode()).hexdigest())
