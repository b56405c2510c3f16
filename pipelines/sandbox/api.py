"""The two vendor APIs (and the sandbox's admin endpoints) as one request handler, independent of the socket layer.

`SandboxApp.handle(request)` returns a `Response`; `server.py` turns it into bytes. Bodies follow the vendor
documents summarised in ../shared/api-notes.md: CareCloud error objects per the OpenAPI `BasicError` /
`BadRequestErrorBody`, Capillary `{"warnings": [], "errors": [{status, code, message}]}`.
"""

from __future__ import annotations

import base64
import dataclasses
from bisect import bisect_left, bisect_right
import hashlib
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable
from urllib.parse import parse_qs

import orjson

from pipelines.sandbox import faults as F
from pipelines.sandbox.clock import Clock
from pipelines.sandbox.config import (
    CARECLOUD_BASE_PATH, CARECLOUD_LEGACY_BASE_PATH, FaultConfig, SandboxConfig, api_users,
)
from pipelines.sandbox.data import CARECLOUD_FIELDS, EXTRA_FIELDS, IDENTIFIER_NAMES, DataGenerator, parse_local_param
from pipelines.sandbox.listing import CUSTOMER_FIELDS, POINT_FIELDS, PURCHASE_FIELDS, Listings

CAPILLARY_SOURCES = {"FACEBOOK", "WEB_ENGAGE", "WECHAT", "INSTORE", "MARTJACK", "TMALL", "TAOBAO", "JD",
                     "ECOMMERCE", "WEBSITE", "LINE", "MOBILE_APP"}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]     # lower-case names
    body: bytes = b""
    raw_query: str = ""         # for array parameters (`customer_ids[]=a&customer_ids[]=b`)


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    action: str = F.PASS        # PASS, DROP or TRUNCATE: how the socket layer delivers it
    delay: float = 0.0          # seconds to wait before answering (latency fault)
    endpoint: str = ""


def _json(status: int, obj: object, **kw) -> Response:
    return Response(status, orjson.dumps(obj), **kw)


def _cc_error(status: int, exception: str, title: str, detail: str, error_data: dict | None = None) -> Response:
    err: dict = {"type": "about:blank", "exception": exception, "title": title, "detail": detail}
    if error_data is not None:
        err["error_data"] = error_data
    return _json(status, {"error": err})


def _cc_invalid(name: str, reason: str, value: object, message: str) -> Response:
    return _cc_error(400, "bad_request_exception", "Bad request", message,
                     {"invalid_params": [{"name": name, "reason": reason, "value": "" if value is None else str(value),
                                          "message": message}]})


def _cap_error(status: int, code: int, message: str) -> Response:
    return _json(status, {"warnings": [], "errors": [{"status": False, "code": code, "message": message}]})


def _cc_fault(status: int, detail: str) -> Response:
    """CareCloud's answer to a rate-limited (429) or unavailable (503) request."""
    if status == 429:
        return _cc_error(429, "too_many_requests_exception", "Too many requests", "more than the resource limit")
    return _cc_error(status, "service_unavailable_exception", "Service unavailable", detail)


def _cap_fault(status: int, detail: str) -> Response:
    """Capillary's answer to a rate-limited (429) or unavailable (503) request."""
    return _cap_error(status, status, "Rate limit exceeded" if status == 429 else detail)


class SandboxApp:
    def __init__(self, config: SandboxConfig, faults: FaultConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.fault_config = faults
        self.data = DataGenerator(config)
        self.clock = clock or Clock(config.now)
        self.faults = F.Faults(faults)
        self._lock = threading.Lock()
        self._cc_tokens: dict[str, list] = {}       # token -> [credential, expires (monotonic), data requests]
        self._cap_tokens: dict[str, tuple[str, float]] = {}
        self.requests: Counter[str] = Counter()
        self.records_served: Counter[str] = Counter()
        self.sort_fields = set(CARECLOUD_FIELDS) | (set(EXTRA_FIELDS) if config.extra_fields else set())
        self.listings = Listings(self.data)
        self._listings = {"/customers": self.customers, "/points": self.points, "/purchases": self.purchases}
        # the API users / keys it accepts (`SandboxConfig.api_users`), read once: a test swaps the constants first
        self._cc_users = {(u["login"], u["password"], u["external_app_id"]): "carecloud:" + u["login"]
                          for u in api_users("carecloud", config.api_users)}
        capillary = api_users("capillary", config.api_users)
        self._cap_keys = {(u["key"], u["secret"]): "capillary:" + u["key"] for u in capillary}
        self._basic_ok = {"Basic " + base64.b64encode(
            f"{u['till_id']}:{hashlib.md5(u['password'].encode()).hexdigest()}".encode()).decode():
            "capillary:" + u["till_id"] for u in capillary}
        # per credential ("vendor:principal"): data requests, 429s, and the busiest wall-clock second
        self.by_credential: dict[str, Counter[str]] = {}

    # ------------------------------------------------------------------ dispatch
    def handle(self, req: Request) -> Response:
        resp = self._route(req)
        delay = self.faults.delay()
        if delay:
            resp.delay = delay
            self.faults.count("latency")
        status = {F.DROP: "dropped", F.TRUNCATE: "truncated"}.get(resp.action, resp.status)
        with self._lock:
            self.requests[f"{resp.endpoint or 'other'} {status}"] += 1
        return resp

    def _route(self, req: Request) -> Response:
        path = req.path
        cc_rest = None
        if path.startswith(CARECLOUD_BASE_PATH + "/"):
            cc_rest = path[len(CARECLOUD_BASE_PATH):]
        elif self.config.accept_legacy_path and path.startswith(CARECLOUD_LEGACY_BASE_PATH + "/"):
            cc_rest = path[len(CARECLOUD_LEGACY_BASE_PATH):]
        if cc_rest is not None:
            if cc_rest == "/point-history":
                return self._only(req, "GET", "carecloud.point_history", self.point_history)
            if cc_rest == "/users/actions/login":
                return self._only(req, "POST", "carecloud.login", self.carecloud_login)
            if cc_rest in self._listings:
                return self._only(req, "GET", "carecloud." + cc_rest[1:], self._listings[cc_rest])
            resp = _cc_error(404, "not_found_exception", "Not found", f"resource {cc_rest} does not exist",
                             {"resource_name": cc_rest.strip("/").split("/")[0], "resource_id": ""})
            resp.endpoint = "carecloud.other"
            return resp
        if path == "/v2/points/transfer":
            return self._only(req, "GET", "capillary.transfers", self.capillary_transfers)
        if path.startswith("/v2/customers/") and path.endswith("/pointsTransfers"):
            return self._only(req, "GET", "capillary.summary", self.capillary_summary)
        if path == "/v3/oauth/token/generate":
            return self._only(req, "POST", "capillary.oauth", self.capillary_oauth)
        if path.startswith("/_sandbox/"):
            return self._admin(req)
        resp = _json(404, {"error": "not found", "path": path})
        resp.endpoint = "other"
        return resp

    @staticmethod
    def _only(req: Request, method: str, endpoint: str, fn) -> Response:
        if req.method != method:
            resp = _cc_error(405, "method_not_allowed_exception", "Method not allowed",
                             f"{req.method} is not allowed here", {"http_method": req.method})
        else:
            resp = fn(req)
        resp.endpoint = endpoint
        return resp

    def _fault(self, credential: str, customer_key: str, error: Callable[[int, str], Response],
               endpoint: str) -> Response | None:
        """The fault to answer with instead of the data, if any; `error(status, detail)` is the vendor's error body
        (`_cc_fault`, `_cap_fault`)."""
        only = self.fault_config.endpoints
        if only and endpoint not in {e.strip() for e in only.split(",")}:
            action, retry_after = F.PASS, None
        else:
            action, retry_after = self.faults.decide(credential, customer_key)
        self._count_credential(credential, action)
        if action == F.PASS:
            return None
        if action in (F.DROP, F.TRUNCATE):
            return Response(0, action=action)  # the body is filled in by the caller (truncate needs the real one)
        if action in (F.RATE_LIMITED, F.RANDOM_429):
            resp = error(429, "")
            if retry_after is not None:
                resp.headers.append(("Retry-After", str(max(1, int(retry_after + 0.999)))))
            return resp
        return error(503, "maintenance window" if action == F.MAINTENANCE else "service temporarily unavailable")

    def _count_credential(self, credential: str, action: str) -> None:
        second = int(time.monotonic())
        with self._lock:
            counts = self.by_credential.get(credential)
            if counts is None:
                counts = self.by_credential[credential] = Counter()
            counts["requests"] += 1
            if action in (F.RATE_LIMITED, F.RANDOM_429):
                counts["429"] += 1
            if counts["second"] != second:
                counts["second"], counts["in_second"] = second, 0
            counts["in_second"] += 1
            counts["peak_per_second"] = max(counts["peak_per_second"], counts["in_second"])

    # ------------------------------------------------------------------ CareCloud
    def carecloud_login(self, req: Request) -> Response:
        try:
            body = orjson.loads(req.body or b"{}")
        except orjson.JSONDecodeError:
            return _cc_invalid("body", "invalid_value_format", "", "request body is not valid JSON")
        if not isinstance(body, dict):
            return _cc_invalid("body", "invalid_value_format", "", "request body must be a JSON object")
        for name in ("user_external_application_id", "login", "password"):
            if not body.get(name):
                return _cc_invalid(name, "required", "", f"{name} is required")
        credential = self._cc_users.get(
            (body.get("login"), body.get("password"), body.get("user_external_application_id")))
        if credential is None:
            return _cc_error(401, "unauthorized_exception", "Unauthorized", "invalid login, password or application")
        token = secrets.token_hex(20)
        ttl = self.fault_config.token_ttl_seconds
        with self._lock:
            self._cc_tokens[token] = [credential, time.monotonic() + ttl, 0]
        valid_to = self.data.local(self.clock.now() + ttl)
        user = {"user_id": "5a1e0000000000000000000001", "login": body["login"], "first_name": "Sandbox",
                "last_name": "User", "email": "sandbox@sandbox.example", "phone": "420000000000",
                "user_role_ids": []}
        return _json(200, {"data": {"bearer_token": token, "valid_to": valid_to, "user": user}})

    def _carecloud_auth(self, req: Request) -> str | Response:
        auth = req.headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            return _cc_error(401, "unauthorized_exception", "Unauthorized", "missing bearer token")
        token = auth[7:].strip()
        with self._lock:
            entry = self._cc_tokens.get(token)
            if entry is not None:
                entry[2] += 1
                limit = self.fault_config.token_max_requests
                if time.monotonic() >= entry[1] or (limit and entry[2] > limit):
                    del self._cc_tokens[token]
                    entry = None
                    self.faults.counts["token_expired"] += 1
        if entry is None:
            return _cc_error(401, "unauthorized_exception", "Unauthorized", "invalid or expired token")
        return entry[0]

    def point_history(self, req: Request) -> Response:
        login = self._carecloud_auth(req)
        if isinstance(login, Response):
            return login
        q = req.query
        customer_id = q.get("customer_id")
        fault = self._fault(login, customer_id or "", _cc_fault, "carecloud.point_history")
        if fault is not None and fault.action == F.PASS:
            return fault
        if not customer_id:
            return _cc_invalid("customer_id", "required", customer_id, "customer_id is required")
        count = _int_param(q, "count", 100, 1)
        offset = _int_param(q, "offset", 0, 0)
        for name, value, minimum in (("count", count, 1), ("offset", offset, 0)):
            if value is None:
                return _cc_invalid(name, "invalid_value_format", q.get(name),
                                   f"{name} must be an integer >= {minimum}")
        if self.config.max_count and count > self.config.max_count:
            return _cc_invalid("count", "not_allowed_value", count, f"count must be <= {self.config.max_count}")
        sort_field = q.get("sort_field") or None
        if sort_field is not None and sort_field not in self.sort_fields:
            return _cc_invalid("sort_field", "not_allowed_value", sort_field, "unknown sort field")
        direction = (q.get("sort_direction") or "ASC").upper()
        if direction not in ("ASC", "DESC"):
            return _cc_invalid("sort_direction", "not_allowed_value", q.get("sort_direction"),
                               "sort_direction must be ASC or DESC")
        bounds = {}
        for name in ("time_from", "time_to"):
            if name in q and q[name] != "":
                value = parse_local_param(q[name])
                if value is None:
                    return _cc_invalid(name, "invalid_value_format", q[name],
                                       f"{name} must be YYYY-MM-DD HH:MM:SS or YYYY-MM-DDTHH:MM:SS")
                bounds[name] = value
        index = self.data.carecloud_index(customer_id)
        if index is None:
            if self.config.unknown_customer == "empty":
                return Response(200, b'{"data":{"point_history":[],"total_items":0}}')
            return _cc_invalid("customer_id", "not_found", customer_id, "customer does not exist")

        h = self.data.carecloud(index)
        now = self.clock.now()
        tf, tt = bounds.get("time_from"), bounds.get("time_to")
        fi, ti = self.config.time_from_inclusive, self.config.time_to_inclusive
        store, partner = q.get("store_id"), q.get("partner_id")
        op_type, op_note, ptype = q.get("point_operation_type"), q.get("point_operation_note"), q.get("point_type_id")
        vidx, vtimes = h.visible_at(now)
        lo = 0 if tf is None else (bisect_left(vtimes, tf) if fi else bisect_right(vtimes, tf))
        hi = len(vtimes) if tt is None else (bisect_right(vtimes, tt) if ti else bisect_left(vtimes, tt))
        sel = vidx[lo:hi]
        vis = h.visible
        if store or partner or op_type or op_note or ptype or sort_field not in (None, "point_history_record_time"):
            recs = h.records
        if store or partner or op_type or op_note or ptype:
            op_type_l, op_note_l = (op_type or "").lower(), (op_note or "").lower()
            sel = [j for j in sel if not (
                (store and recs[j]["store_id"] != store) or (partner and recs[j]["partner_id"] != partner)
                or (ptype and recs[j]["point_type_id"] != ptype)
                or (op_type and op_type_l not in recs[j]["point_operation_type"].lower())
                or (op_note and op_note_l not in (recs[j]["point_operation_note"] or "").lower()))]
        if sort_field is None and self.config.default_sort == "insertion":
            sel.sort(key=lambda j: (vis[j], j))
        elif sort_field not in (None, "point_history_record_time"):
            sel.sort(key=lambda j: (_sort_key(recs[j].get(sort_field)), j))
        if direction == "DESC":
            sel = sel[::-1]  # never reverse the cached visibility list in place
        page = sel[offset: offset + count]
        with self._lock:
            self.records_served["carecloud"] += len(page)
        body = b"".join((b'{"data":{"point_history":[', h.page_json(page),
                         b'],"total_items":', str(len(sel)).encode(), b"}}"))
        resp = Response(200, body)
        if fault is not None:
            resp.action = fault.action
        return resp

    # ------------------------------------------------------------------ CareCloud listings
    def _listing_request(self, req: Request, name: str, sort_fields: tuple[str, ...],
                         time_params: tuple[str, str] | None) -> Response | tuple:
        """Auth, faults and the parameters every listing shares: (query, count, offset, sort_field, descending,
        (lo_key, hi_key)) or the error response."""
        login = self._carecloud_auth(req)
        if isinstance(login, Response):
            return login
        q = req.query
        fault = self._fault(login, "listing:" + name, _cc_fault, "carecloud." + name)
        if fault is not None and fault.action == F.PASS:
            return fault
        count = _int_param(q, "count", 100, 1)
        offset = _int_param(q, "offset", 0, 0)
        for pname, value, minimum in (("count", count, 1), ("offset", offset, 0)):
            if value is None:
                return _cc_invalid(pname, "invalid_value_format", q.get(pname), f"{pname} must be an integer >= {minimum}")
        if self.config.max_count and count > self.config.max_count:
            return _cc_invalid("count", "not_allowed_value", count, f"count must be <= {self.config.max_count}")
        sort_field = q.get("sort_field") or None
        if sort_field is not None and sort_field not in sort_fields:
            return _cc_invalid("sort_field", "not_allowed_value", sort_field, "unknown sort field")
        direction = (q.get("sort_direction") or "ASC").upper()
        if direction not in ("ASC", "DESC"):
            return _cc_invalid("sort_direction", "not_allowed_value", q.get("sort_direction"),
                               "sort_direction must be ASC or DESC")
        keys: list[int | None] = [None, None]
        for n, pname in enumerate(time_params or ()):
            if q.get(pname, "") != "":
                value = parse_local_param(q[pname])
                if value is None:
                    return _cc_invalid(pname, "invalid_value_format", q[pname],
                                       f"{pname} must be YYYY-MM-DD HH:MM:SS or YYYY-MM-DDTHH:MM:SS")
                key = self.listings.param_key(value)
                inclusive = self.config.time_from_inclusive if n == 0 else self.config.time_to_inclusive
                keys[n] = key if inclusive else key + (1 if n == 0 else -1)  # integer keys: > k is >= k + 1
        return q, count, offset, sort_field, direction == "DESC", tuple(keys), fault

    def _listing_page(self, name: str, items: list, total: int, fault: Response | None) -> Response:
        with self._lock:
            self.records_served["carecloud_" + name] += len(items)
        resp = Response(200, b"".join((b'{"data":{"', name.encode(), b'":', orjson.dumps(items),
                                        b',"total_items":', str(total).encode(), b"}}")))
        if fault is not None:
            resp.action = fault.action
        return resp

    @staticmethod
    def _ordered(entries: list, materialize, sort_field: str | None, default_field: str, desc: bool,
                 offset: int, count: int) -> list:
        """The page of `entries` (already in default order, ties stable) ordered by `sort_field`; items are
        materialized only for the page unless another field sorts them all."""
        if sort_field not in (None, default_field):
            items = [materialize(e) for e in entries]
            order = sorted(range(len(items)), key=lambda j: (_sort_key(items[j].get(sort_field)), j))
            if desc:
                order.reverse()
            return [items[j] for j in order[offset: offset + count]]
        if desc:
            entries = entries[::-1]
        return [materialize(e) for e in entries[offset: offset + count]]

    def _items_listing(self, req: Request, kind: str, fields: tuple[str, ...], time_params: tuple[str, str],
                       filters: tuple[str, ...], default_sort: str) -> Response:
        """GET /points or /purchases: the visible items of the time window (and optional `customer_id`) in time
        order, narrowed by the equality `filters`, then sorted and paged."""
        parsed = self._listing_request(req, kind, fields, time_params)
        if isinstance(parsed, Response):
            return parsed
        q, count, offset, sort_field, desc, (lo, hi), fault = parsed
        customer = None
        if q.get("customer_id"):
            customer = self.data.carecloud_index(q["customer_id"])
        now = self.clock.now()
        ls = self.listings
        sel = [] if q.get("customer_id") and customer is None else ls.select(kind, lo, hi, now, customer)
        for name in filters:  # each filter is named like the field it matches
            if q.get(name):
                want = q[name]
                sel = [(i, j) for i, j in sel if ls.stored(kind, i, j)[name] == want]
        items = q.get("purchase_items_extension", "").lower() == "true"
        page = self._ordered(sel, lambda e: ls.as_sent(kind, e[0], e[1], now, items), sort_field, default_sort,
                             desc, offset, count)
        return self._listing_page(kind, page, len(sel), fault)

    def points(self, req: Request) -> Response:
        return self._items_listing(req, "points", POINT_FIELDS, ("create_point_time_from", "create_point_time_to"),
                                   ("point_type_id",), "created_at")

    def purchases(self, req: Request) -> Response:
        return self._items_listing(req, "purchases", PURCHASE_FIELDS, ("payment_time_from", "payment_time_to"),
                                   ("store_id", "type_id", "external_purchase_id"), "payment_time")

    def customers(self, req: Request) -> Response:
        parsed = self._listing_request(req, "customers", CUSTOMER_FIELDS, None)
        if isinstance(parsed, Response):
            return parsed
        q, count, offset, sort_field, desc, _, fault = parsed
        if sort_field == "personal_information":
            return _cc_invalid("sort_field", "not_allowed_value", sort_field, "cannot sort by an object")
        arrays = {}
        for pname in ("customer_ids", "email_list"):
            values = parse_qs(req.raw_query).get(pname + "[]", [])
            if len(values) > 1000:
                return _cc_invalid(pname, "not_allowed_value", len(values), f"{pname} takes at most 1000 values")
            if values:
                arrays[pname] = set(values)
        ls = self.listings
        now = self.clock.now()
        members, last, states = ls.roster_view(now)
        sel = members
        if "customer_ids" in arrays:
            wanted = {self.data.carecloud_index(c) for c in arrays["customer_ids"]}
            sel = [i for i in sel if i in wanted]
        person_filters = {k: q[k] for k in ("email", "phone", "first_name", "last_name", "birthdate") if q.get(k)}
        if "birthdate" in person_filters and "." in person_filters["birthdate"]:  # DD.MM.YYYY is documented too
            d, m, y = (person_filters["birthdate"].split(".") + ["", "", ""])[:3]
            person_filters["birthdate"] = f"{y}-{m}-{d}"
        if person_filters or "email_list" in arrays:
            def keep(i: int) -> bool:
                p = ls.person(i)
                return (all(p[k] == v for k, v in person_filters.items())
                        and ("email_list" not in arrays or p["email"] in arrays["email_list"]))
            sel = [i for i in sel if keep(i)]
        if q.get("customer_source_id") and q["customer_source_id"] != ls.customer_source_id:
            sel = []
        if sort_field == "last_change":
            sel = sorted(sel, key=lambda i: (ls.local_key(last[i]), i))
        elif sort_field == "customer_id":
            sel = sorted(sel, key=lambda i: (self.data.carecloud_id(i), i))
        elif sort_field == "state":
            sel = sorted(sel, key=lambda i: (states[i], i))
        # other fields (doi_email, doi_phone) are absent on every customer: creation order stands
        sel = sel[::-1] if desc else sel
        page = [ls.customer_as_sent(i, last[i], states[i]) for i in sel[offset: offset + count]]
        return self._listing_page("customers", page, len(sel), fault)

    # ------------------------------------------------------------------ Capillary
    def capillary_oauth(self, req: Request) -> Response:
        try:
            body = orjson.loads(req.body or b"{}")
        except orjson.JSONDecodeError:
            body = None
        credential = self._cap_keys.get((body.get("key"), body.get("secret"))) if isinstance(body, dict) else None
        if credential is None:
            return _cap_error(401, 401, "Invalid key or secret")
        ttl = self.config.capillary_oauth_ttl_seconds
        header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=").decode()
        payload = base64.urlsafe_b64encode(orjson.dumps({"sub": body["key"], "iat": int(self.clock.now()),
                                                         "exp": int(self.clock.now()) + ttl})).rstrip(b"=").decode()
        token = f"{header}.{payload}.{secrets.token_urlsafe(32)}"
        with self._lock:
            self._cap_tokens[token] = (credential, time.monotonic() + ttl)
        return _json(200, {"data": {"accessToken": token, "ttlSeconds": ttl}, "errors": None})

    def _capillary_auth(self, req: Request) -> str | Response:
        token = req.headers.get("x-cap-api-oauth-token")
        if token:
            with self._lock:
                entry = self._cap_tokens.get(token)
                if entry is not None and time.monotonic() >= entry[1]:
                    del self._cap_tokens[token]
                    entry = None
                    self.faults.counts["token_expired"] += 1
            if entry is None:
                return _cap_error(401, 401, "Invalid or expired OAuth token")
            return entry[0]
        credential = self._basic_ok.get(req.headers.get("authorization", ""))
        if credential is not None:
            return credential
        return _cap_error(401, 401, "Authentication failed: invalid credentials")

    def _not_found(self) -> Response:
        return _cap_error(self.config.capillary_8015_status, 8015, "Customer not found for the given identifiers")

    def capillary_transfers(self, req: Request) -> Response:
        cred = self._capillary_auth(req)
        if isinstance(cred, Response):
            return cred
        q = req.query
        name, value = q.get("identifierName", ""), q.get("identifierValue", "")
        fault = self._fault(cred, f"{name}:{value}", _cap_fault, "capillary.transfers")
        if fault is not None and fault.action == F.PASS:
            return fault
        if q.get("source", "").upper() not in CAPILLARY_SOURCES:
            return _cap_error(400, 8003, "Invalid source")
        if name not in IDENTIFIER_NAMES:
            return _cap_error(400, 8013, "Invalid identifier name")
        index = self.data.capillary_index(name, value) if value else None
        if index is None:
            return self._not_found()
        now = self.clock.now()
        encoded = [orjson.dumps(r) for v, r in self.data.capillary_view(index) if v <= now]
        with self._lock:
            self.records_served["capillary"] += len(encoded)
        resp = Response(200, b'{"data":[' + b",".join(encoded) + b'],"warnings":[],"errors":[]}')
        if fault is not None:
            resp.action = fault.action
        return resp

    def capillary_summary(self, req: Request) -> Response:
        cred = self._capillary_auth(req)
        if isinstance(cred, Response):
            return cred
        user_id = req.path[len("/v2/customers/"):-len("/pointsTransfers")]
        fault = self._fault(cred, f"id:{user_id}", _cap_fault, "capillary.summary")
        if fault is not None and fault.action == F.PASS:
            return fault
        q = req.query
        try:
            limit = int(q.get("limit", "10"))
            offset = int(q.get("offset", "0"))
            page = int(q["page"]) if q.get("page") else None
            if limit < 1 or offset < 0 or (page is not None and page < 1):
                raise ValueError
        except ValueError:
            return _cap_error(400, 814, "No Results Found")
        sort_by = q.get("sortBy", "pointsTransferDate")
        order = q.get("sortOrder", "desc").lower()
        if sort_by not in ("pointsTransferDate", "pointsTransferred", "transferId") or order not in ("asc", "desc"):
            return _cap_error(400, 814, "No Results Found")
        index = self.data.capillary_index("id", user_id)
        if index is None:
            return self._not_found()
        if page is not None:  # documented: page overrides offset
            offset = (page - 1) * limit
        now = self.clock.now()
        rows = [r for v, r in self.data.capillary_view(index, summary=True) if v <= now]
        rows.sort(key=lambda r: (r[sort_by], r["transferId"]), reverse=(order == "desc"))
        rows = rows[offset: offset + limit]
        with self._lock:
            self.records_served["capillary_summary"] += len(rows)
        resp = _json(200, {"data": rows, "warnings": [], "errors": []})
        if fault is not None:
            resp.action = fault.action
        return resp

    # ------------------------------------------------------------------ admin
    def _admin(self, req: Request) -> Response:
        path = req.path
        if path == "/_sandbox/clock":
            if req.method == "POST":
                try:
                    body = orjson.loads(req.body or b"{}")
                    if "now" in body:
                        self.clock.set(body["now"])
                    elif "advance_seconds" in body:
                        self.clock.advance(float(body["advance_seconds"]))
                    else:
                        raise ValueError("give {\"now\": iso} or {\"advance_seconds\": n}")
                except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
                    return _json(400, {"error": str(exc)}, endpoint="admin.clock")
            return _json(200, {"now": self.clock.now_datetime().isoformat()}, endpoint="admin.clock")
        if path == "/_sandbox/faults":
            if req.method == "POST":
                try:
                    body = orjson.loads(req.body or b"{}")
                    if not isinstance(body, dict):
                        raise ValueError("give a JSON object of FaultConfig fields")
                    self.faults.update(**body)
                except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
                    return _json(400, {"error": str(exc)}, endpoint="admin.faults")
            return _json(200, dataclasses.asdict(self.fault_config), endpoint="admin.faults")
        if path == "/_sandbox/stats" and req.method == "GET":
            return _json(200, self.stats(), endpoint="admin.stats")
        if path == "/_sandbox/health":
            return _json(200, {"status": "ok"}, endpoint="admin.health")
        return _json(404, {"error": "not found", "path": path}, endpoint="admin.other")

    def stats(self) -> dict:
        with self._lock:
            requests = dict(self.requests)
            records = dict(self.records_served)
            by_credential = {name: Counter(c) for name, c in self.by_credential.items()}
        by_endpoint: dict[str, dict[str, int]] = {}
        for key, n in requests.items():
            endpoint, status = key.rsplit(" ", 1)
            by_endpoint.setdefault(endpoint, {})[status] = n
        with self.faults.lock:
            faults = dict(self.faults.counts)
        return {
            "now": datetime.fromtimestamp(self.clock.now(), timezone.utc).isoformat(),
            "customers": self.config.customers,
            "seed": self.config.seed,
            "requests": by_endpoint,
            "requests_total": sum(requests.values()),
            "records_served": records,
            "faults": faults,
            # data requests and 429s per API user / key ("vendor:principal"); peak_per_second = the most data
            # requests one credential made within one wall-clock second
            "credentials": {name: {"requests": c["requests"], "429": c["429"],
                                   "peak_per_second": c["peak_per_second"]} for name, c in by_credential.items()},
        }


def parse_query(raw: str) -> dict[str, str]:
    """First value of each parameter; `+` and %20 both decode to a space (time_from is allowReserved)."""
    if not raw:
        return {}
    if "%" in raw:
        return {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}
    # nothing to unquote but `+` (the queries both clients send): a plain split is much cheaper than parse_qs,
    # and the sandbox shares the benchmark machine's two cores with the pipeline under test
    out: dict[str, str] = {}
    for pair in raw.split("&"):
        if pair:
            k, _, v = pair.replace("+", " ").partition("=")
            out.setdefault(k, v)
    return out


def _int_param(q: dict[str, str], name: str, default: int, minimum: int) -> int | None:
    """An integer query parameter >= minimum; None when malformed."""
    try:
        value = int(q.get(name, default))
    except ValueError:
        return None
    return value if value >= minimum else None


def _sort_key(value: object) -> tuple:
    if value is None:
        return (0, 0.0, "")
    if isinstance(value, (int, float)):
        return (1, float(value), "")
    try:
        return (1, float(value), "")  # type drift: numbers sent as strings still sort as numbers
    except (TypeError, ValueError):
        return (2, 0.0, str(value))
