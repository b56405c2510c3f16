"""Variant (c), the limit: fetch the same JSON pages once and write them to disk, then let DuckDB load and flatten.

Two phases, each run as its own measured child of bench.run so both are reported:

* `fetch`: the least client work that still gets every page: keep-alive `http.client` connections on a thread
  pool, the largest page the pipeline uses (`count=1000`), each body written to disk untouched, one JSON line
  `{"c": <customer queried>, "b": <body>}` per page. Only the CareCloud `total_items` is parsed, to know whether
  another page is needed. (Hand-written instead of requests/dlt on purpose: this variant measures the floor.)
* `load`: DuckDB `read_json` + SQL builds the same raw tables as the pipeline (docs/architecture.md): point
  history with record_key, recorded_at (project local -> UTC) and `extended_data__<key>` columns from the parsed
  JSON, one child table per list-valued key, and the three Capillary tables.

`python -m bench.limit fetch --env-json ENV.json --out DIR --result FILE [--threads 16]`
`python -m bench.limit load --pages DIR --db FILE --result FILE`
"""

from __future__ import annotations

import argparse
import base64
import csv
import http.client
import json
import queue
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

PAGE = 1000


# ---------------------------------------------------------------------------------------------------- fetch
class _Client:
    def __init__(self, base_url: str, headers: dict[str, str]) -> None:
        parts = urlsplit(base_url)
        self.host, self.port, self.prefix = parts.hostname, parts.port or 80, parts.path.rstrip("/")
        self.headers = {"Accept": "application/json", **headers}
        self.conn: http.client.HTTPConnection | None = None
        self.requests = 0

    def get(self, path_and_query: str) -> bytes:
        for attempt in range(5):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
            try:
                self.conn.request("GET", self.prefix + path_and_query, headers=self.headers)
                resp = self.conn.getresponse()
                body = resp.read()
                self.requests += 1
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                time.sleep(0.05 * (attempt + 1))
                continue
            if resp.status == 200:
                return body
            if resp.status in (429, 503):
                time.sleep(float(resp.getheader("Retry-After") or 0.1 * (attempt + 1)))
                continue
            raise RuntimeError(f"HTTP {resp.status} for {path_and_query}: {body[:200]!r}")
        raise RuntimeError(f"gave up on {path_and_query}")


def _ids(path: str) -> list[str]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [row["customer_id"] for row in csv.DictReader(fh) if row["customer_id"]]


def fetch(env: dict[str, str], out: Path, threads: int) -> dict[str, Any]:
    from bench.apis import capillary_basic, carecloud_token

    out.mkdir(parents=True, exist_ok=True)
    cc_base = env["SOURCES__CARECLOUD__BASE_URL"]
    cc_headers = {"Authorization": "Bearer " + carecloud_token(env)}
    basic = base64.b64encode(":".join(capillary_basic(env)).encode()).decode()
    cap_headers = {"Authorization": "Basic " + basic}
    ident = env.get("SOURCES__CAPILLARY__IDENTIFIER_NAME", "id")

    work: queue.Queue = queue.Queue()
    for cid in _ids(env["SOURCES__CARECLOUD__CUSTOMERS"]):
        work.put(("cc", cid))
    for cid in _ids(env["SOURCES__CAPILLARY__CUSTOMERS"]):
        work.put(("cap", cid))
    counts = {"requests": 0, "bytes": 0}
    lock = threading.Lock()
    errors: list[str] = []

    def worker(n: int) -> None:
        cc = _Client(cc_base, cc_headers)
        cap = _Client(env["SOURCES__CAPILLARY__BASE_URL"], cap_headers)
        nbytes = 0
        with open(out / f"cc-{n:02d}.ndjson", "wb") as f_cc, open(out / f"cap-{n:02d}.ndjson", "wb") as f_cap:
            while True:
                try:
                    kind, cid = work.get_nowait()
                except queue.Empty:
                    break
                try:
                    if kind == "cc":
                        offset = 0
                        while True:
                            body = cc.get(f"/point-history?customer_id={quote(cid)}&count={PAGE}&offset={offset}")
                            f_cc.write(b'{"c":' + orjson.dumps(cid) + b',"b":' + body + b"}\n")
                            nbytes += len(body)
                            offset += PAGE
                            if orjson.loads(body)["data"]["total_items"] <= offset:
                                break
                    else:
                        body = cap.get(f"/v2/points/transfer?source=INSTORE&identifierName={ident}"
                                       f"&identifierValue={quote(cid)}")
                        f_cap.write(b'{"c":' + orjson.dumps(cid) + b',"b":' + body + b"}\n")
                        nbytes += len(body)
                except Exception as exc:
                    with lock:
                        errors.append(f"{kind} {cid}: {exc}")
        with lock:
            counts["requests"] += cc.requests + cap.requests
            counts["bytes"] += nbytes

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return {**counts, "errors": len(errors), "error_examples": errors[:5]}


# ---------------------------------------------------------------------------------------------------- load
_CC_RECORD = ("STRUCT(customer_id VARCHAR, point_amount DOUBLE, point_operation_type VARCHAR, "
              "point_operation_note VARCHAR, point_type_id VARCHAR, partner_id VARCHAR, store_id VARCHAR, "
              "point_history_record_time VARCHAR, extended_data VARCHAR)")
_PARTY = "STRUCT(userId BIGINT, firstName VARCHAR, lastName VARCHAR, externalId VARCHAR)"
_CAP_RECORD = (f"STRUCT(toEntityId BIGINT, toEntityType VARCHAR, fromEntityId BIGINT, fromEntityType VARCHAR, "
               f"pointsTransferDate VARCHAR, pointsTransferDateISO VARCHAR, pointsTransferred DOUBLE, "
               f"transferId BIGINT, transferType VARCHAR, transferredFrom {_PARTY}, transferredTo {_PARTY}, "
               f"notes VARCHAR, programName VARCHAR)")
_SCALARS = {"BIGINT": "BIGINT", "UBIGINT": "BIGINT", "DOUBLE": "DOUBLE", "VARCHAR": "VARCHAR",
            "BOOLEAN": "BOOLEAN"}


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _column_type(t: Any) -> str:
    return _SCALARS.get(t, "VARCHAR") if isinstance(t, str) else "VARCHAR"


def load(pages: Path, db: Path, timezone: str) -> dict[str, Any]:
    import duckdb

    con = duckdb.connect(str(db))
    con.execute("CREATE SCHEMA IF NOT EXISTS loyalty_raw; USE loyalty_raw")
    phases: dict[str, float] = {}
    t = time.perf_counter()
    con.execute(f"""
        CREATE TEMP TABLE cc AS
        SELECT unnest(b.data.point_history, recursive := true)
        FROM read_json('{pages}/cc-*.ndjson', format='newline_delimited',
                       columns={{c: 'VARCHAR', b: 'STRUCT(data STRUCT(point_history {_CC_RECORD}[], total_items BIGINT))'}})
    """)
    phases["read_point_history_s"] = time.perf_counter() - t

    # record_key: a content hash of the record as sent plus its occurrence number among identical records (no
    # vendor id exists). md5, not the pipeline's sha256: DuckDB's sha256 costs more and the hash function
    # changes nothing in the tables' shape or size.
    t = time.perf_counter()
    fields = ["customer_id", "point_amount", "point_operation_type", "point_operation_note", "point_type_id",
              "partner_id", "store_id", "point_history_record_time", "extended_data"]
    cat = ", ".join(f"coalesce({f}::VARCHAR, '\\N')" for f in fields)
    con.execute(f"""
        CREATE TEMP TABLE ph AS
        SELECT md5(h || '-' || row_number() OVER (PARTITION BY h)) AS record_key, *
        FROM (
            SELECT md5(concat_ws(chr(31), {cat})) AS h, *,
                   timezone('{timezone}', try_strptime(point_history_record_time, '%Y-%m-%d %H:%M:%S'))
                       AS recorded_at,
                   CASE WHEN json_valid(extended_data) AND json_type(extended_data) = 'OBJECT'
                        THEN extended_data::JSON END AS ed
            FROM cc)
    """)
    phases["key_hash_s"] = time.perf_counter() - t
    t = time.perf_counter()
    # extended_data's shape: types from a reservoir sample (a full json_group_structure pass costs more than
    # all the rest), then every key present anywhere from a cheap json_keys pass; keys the sample missed
    # become VARCHAR columns.
    structure = con.execute(
        "SELECT json_group_structure(ed) FROM (SELECT ed FROM ph WHERE ed IS NOT NULL USING SAMPLE 20000 ROWS)"
    ).fetchone()[0]
    structure = json.loads(structure) if structure else {}
    if not isinstance(structure, dict):
        structure = {}
    for (key,) in con.execute("SELECT DISTINCT unnest(json_keys(ed)) FROM ph WHERE ed IS NOT NULL").fetchall():
        structure.setdefault(key, "VARCHAR")
    scalar_cols, list_keys = [], []
    for key, kind in structure.items():
        if isinstance(kind, list):
            list_keys.append((key, kind[0] if kind else "VARCHAR"))
        elif isinstance(kind, dict):
            for sub, sub_kind in kind.items():   # nested object: flatten one level as dlt would
                scalar_cols.append((f"$.{_ident(key)}.{_ident(sub)}", f"extended_data__{key}__{sub}",
                                    _column_type(sub_kind)))
        else:
            scalar_cols.append((f"$.{_ident(key)}", f"extended_data__{key}", _column_type(kind)))
    phases["discover_keys_s"] = time.perf_counter() - t
    t = time.perf_counter()
    # one JSON parse per record for all scalar keys (the list form of json_extract_string)
    paths = [path for path, _, _ in scalar_cols]
    ext = "".join(f",\n try_cast(_x[{i + 1}] AS {typ}) AS {_ident(name)}"
                  for i, (_, name, typ) in enumerate(scalar_cols))
    extracted = f"json_extract_string(ed, {paths!r})" if paths else "NULL"
    con.execute(f"""
        CREATE TABLE carecloud_point_history AS
        SELECT record_key, customer_id, point_amount, point_operation_type, point_operation_note, point_type_id,
               partner_id, store_id, try_strptime(point_history_record_time, '%Y-%m-%d %H:%M:%S')
                   AS point_history_record_time,
               recorded_at, extended_data AS extended_data_raw{ext}, 'bench' AS _loaded_run_id
        FROM (SELECT *, {extracted} AS _x FROM ph)
    """)
    phases["point_history_table_s"] = time.perf_counter() - t
    t = time.perf_counter()
    child_rows = {}
    for key, item in list_keys:
        table = f"carecloud_point_history__extended_data__{key}"
        if isinstance(item, dict):
            cols = "".join(f",\n try_cast(json_extract_string(item, '$.{_ident(k)}') AS {_column_type(v)}) "
                           f"AS {_ident(k)}" for k, v in item.items())
        else:
            cols = ",\n json_extract_string(item, '$') AS value"
        con.execute(f"""
            CREATE TABLE {_ident(table)} AS
            SELECT record_key, (idx - 1)::BIGINT AS _idx{cols}
            FROM (SELECT record_key, unnest(json_extract(ed, '$.{_ident(key)}[*]')) AS item,
                         generate_subscripts(json_extract(ed, '$.{_ident(key)}[*]'), 1) AS idx
                  FROM ph WHERE json_type(ed, '$.{_ident(key)}') = 'ARRAY')
        """)
        child_rows[table] = con.execute(f"SELECT count(*) FROM {_ident(table)}").fetchone()[0]
    phases["child_tables_s"] = time.perf_counter() - t

    t = time.perf_counter()
    con.execute(f"""
        CREATE TEMP TABLE cap AS
        SELECT c AS customer_id, unnest(b.data) AS r
        FROM read_json('{pages}/cap-*.ndjson', format='newline_delimited',
                       columns={{c: 'VARCHAR', b: 'STRUCT(data {_CAP_RECORD}[])'}})
    """)
    con.execute("""
        CREATE TABLE capillary_customer_transfers AS
        SELECT customer_id, r.transferId AS transfer_id, r.transferType AS transfer_type,
               CASE WHEN r.transferType = 'DEDUCTION' THEN -r.pointsTransferred ELSE r.pointsTransferred END
                   AS points_signed
        FROM cap;
        CREATE TABLE capillary_points_transfers AS
        SELECT DISTINCT ON (r.transferId)
               r.transferId AS transfer_id, r.fromEntityId AS from_entity_id, r.fromEntityType AS from_entity_type,
               r.toEntityId AS to_entity_id, r.toEntityType AS to_entity_type,
               r.pointsTransferred AS points_transferred, r.pointsTransferDate AS points_transfer_date,
               r.pointsTransferDateISO::TIMESTAMPTZ AS transferred_at, r.notes, r.programName AS program_name,
               r.transferredFrom.userId AS from_user_id, r.transferredTo.userId AS to_user_id
        FROM cap;
        CREATE TABLE capillary_transfer_parties AS
        SELECT DISTINCT ON (p.userId) p.userId AS user_id, p.firstName AS first_name, p.lastName AS last_name,
               p.externalId AS external_id
        FROM (SELECT r.transferredFrom AS p FROM cap UNION ALL SELECT r.transferredTo FROM cap)
        WHERE p.userId IS NOT NULL;
    """)
    phases["capillary_s"] = time.perf_counter() - t
    rows = {name: con.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
            for name in ("carecloud_point_history", "capillary_customer_transfers", "capillary_points_transfers",
                         "capillary_transfer_parties")}
    rows.update(child_rows)
    con.close()
    return {**phases, "rows": rows, "extended_data_columns": [n for _, n, _ in scalar_cols],
            "point_history": rows["carecloud_point_history"],
            "customer_transfers": rows["capillary_customer_transfers"]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("phase", choices=["fetch", "load"])
    ap.add_argument("--env-json")
    ap.add_argument("--out", help="pages directory (fetch writes, load reads)", required=True)
    ap.add_argument("--db")
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--timezone", default=None, help="CareCloud project time zone (default: the project's default)")
    ap.add_argument("--result", required=True)
    args = ap.parse_args()
    t0 = time.perf_counter()
    if args.phase == "fetch":
        info = fetch(json.loads(Path(args.env_json).read_text()), Path(args.out), args.threads)
    else:
        if args.timezone is None:
            from pipelines.windows import LOCAL_TIMEZONE

            args.timezone = LOCAL_TIMEZONE
        info = load(Path(args.out), Path(args.db), args.timezone)
    info["seconds"] = time.perf_counter() - t0
    Path(args.result).write_text(json.dumps({"variant": "c", "phase": args.phase, **info}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
