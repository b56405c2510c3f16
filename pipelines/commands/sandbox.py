"""`loyalty-etl sandbox`: run the local vendor-API sandbox, write its customer files or its ground truth."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import sys

EXAMPLES = """\
examples:
  loyalty-etl sandbox --port 8700 --customers 1000                 serve both APIs on 127.0.0.1:8700
  loyalty-etl sandbox --now 2026-11-20T00:00:00Z --rate-limit-rps 20 --error-503-share 0.05
  loyalty-etl sandbox customers --out customers/                   write carecloud.csv / capillary.csv
  loyalty-etl sandbox truth --out /tmp/truth --now 2026-11-20T00:00:00Z   expected dataset (Parquet)

then, in another shell:
  curl -s -X POST http://127.0.0.1:8700/webservice/rest-api/enterprise-interface/v1.0/users/actions/login \\
       -H 'Content-Type: application/json' \\
       -d '{"user_external_application_id":"sandbox-app","login":"sandbox","password":"sandbox-password"}'
  curl -s -H "Authorization: Bearer $TOKEN" \\
       'http://127.0.0.1:8700/webservice/rest-api/enterprise-interface/v1.0/point-history?customer_id=ID&count=5'

Credentials (sandbox only): CareCloud login sandbox / sandbox-password, app id sandbox-app;
Capillary Basic till sandbox.till / sandbox-password (MD5-hashed on the wire), OAuth key sandbox-key / sandbox-secret.
Admin: POST /_sandbox/clock {"now": iso} or {"advance_seconds": n}; GET /_sandbox/stats. See docs/sandbox.md.
"""

# Help for the generated per-setting flags; settings not listed still get a flag with a generic help text.
HELP = {
    "records_per_customer": "mean CareCloud records of an ordinary customer (default %(default)s)",
    "heavy_every": "every n-th customer has --heavy-records records; 0 = none (default %(default)s)",
    "heavy_records": "records of a heavy customer (default %(default)s)",
    "empty_every": "every n-th customer has no history; 0 = none (default %(default)s)",
    "transfers_per_customer": "mean Capillary transfers per customer (default %(default)s)",
    "point_amount_sign": "signed: redemption/expiration/voucher negative; unsigned: all >= 0 (default %(default)s)",
    "default_sort": "order when sort_field is absent: point_history_record_time | insertion (default %(default)s)",
    "max_count": "largest accepted `count`; 0 = unlimited (default %(default)s)",
    "unknown_customer": "CareCloud unknown customer: 400 (not_found) | empty (200, []) (default %(default)s)",
    "capillary_8015_status": "HTTP status sent with Capillary error 8015 (default %(default)s)",
    "timezone": "CareCloud project time zone (default %(default)s)",
    "capillary_timezone": "Capillary server time zone (default %(default)s)",
    "data_start": "first day of the data, project local (default %(default)s)",
    "data_end": "day after the data ends (default %(default)s)",
    "duplicate_share": "share of records repeated identically, same second (default %(default)s)",
    "late_share": "share of records that appear after their timestamp (default %(default)s)",
    "late_max_seconds": "latest a late record appears after its timestamp (default %(default)s s)",
    "dst_every": "every n-th customer gets records around the DST changes; 0 = none (default %(default)s)",
    "transfer_group_size": "Capillary transfers are generated per group of this many customers (default %(default)s)",
    "cache_customers": "generated customers kept in memory (default %(default)s)",
    "stores": "number of CareCloud stores (default %(default)s)",
    "partners": "number of CareCloud partners (default %(default)s)",
    "time_from_inclusive": "time_from bound inclusive (default on)",
    "time_to_inclusive": "time_to bound inclusive (default on)",
    "accept_legacy_path": "also serve /rest-api/... without /webservice (default on)",
    "capillary_oauth_ttl_seconds": "Capillary OAuth token lifetime (default %(default)s s)",
    "null_extended_data": "some manual corrections send extended_data: null (default on)",
    "extra_fields": "quirk: undocumented extra fields on every record",
    "type_drift": "quirk: point_amount sent as a string on some records",
    "bad_times": "quirk: null/malformed point_history_record_time on a few records",
    "huge_notes": "quirk: ~100 KB notes on a few records",
    "extended_data_variety": "quirk: share of CareCloud records with heterogeneous extended_data (colliding key "
                             "spellings, type changes, nesting, unicode keys, null/\"\", invalid JSON); 0 = off "
                             "(default %(default)s)",
    "rate_limit_rps": "fault: token bucket per credential, requests/s; 0 = off (default %(default)s)",
    "rate_limit_burst": "fault: bucket size; 0 = max(1, rps)",
    "rate_limit_scope": "fault: one bucket per API user/key (credential) or per vendor (tenant) "
                        "(default %(default)s)",
    "api_users": "API users (CareCloud) / keys (Capillary) accepted per vendor: user k >= 2 is the default "
                 "credentials with -k appended (sandbox-2 / sandbox-password-2) (default %(default)s)",
    "retry_after_share": "fault: share of 429s carrying Retry-After (default %(default)s)",
    "random_429_share": "fault: share of requests answered 429 regardless of the bucket",
    "error_503_share": "fault: share of requests answered 503",
    "latency_ms": "fault: fixed latency per response, ms",
    "jitter_ms": "fault: + uniform random latency up to this many ms",
    "drop_share": "fault: share of requests whose connection is closed without an answer",
    "truncate_share": "fault: share of responses cut in half (full Content-Length announced)",
    "token_ttl_seconds": "CareCloud bearer token lifetime in seconds (default 7 h)",
    "token_max_requests": "fault: a CareCloud token expires after N data requests; 0 = off",
    "maintenance_share": "fault: share of customers answered 503 during the maintenance window",
    "maintenance_after_seconds": "fault: the window starts this long after start-up",
    "maintenance_seconds": "fault: maintenance window length in seconds; 0 = off",
}
EXPLICIT = {"customers", "seed", "now"}
CHOICES = {"point_amount_sign": ["signed", "unsigned"], "unknown_customer": ["400", "empty"],
           "default_sort": ["point_history_record_time", "insertion"], "rate_limit_scope": ["credential", "tenant"]}


def _setting_flags(parser: argparse.ArgumentParser) -> None:
    from pipelines.sandbox.config import FaultConfig, SandboxConfig

    data = parser.add_argument_group("data")
    data.add_argument("--customers", type=int, default=1000, help="number of customers (default %(default)s)")
    data.add_argument("--seed", type=int, default=7, help="data seed (default %(default)s)")
    data.add_argument("--now", default=None,
                      help="freeze the sandbox clock at this ISO instant (default: the wall clock)")
    groups = {SandboxConfig: data, FaultConfig: parser.add_argument_group("faults (all off by default)")}
    for cls, group in groups.items():
        for f in dataclasses.fields(cls):
            if f.name in EXPLICIT or (cls is FaultConfig and f.name == "seed"):
                continue
            flag = "--" + f.name.replace("_", "-")
            help_text = HELP.get(f.name, "see docs/sandbox.md (default %(default)s)")
            if isinstance(f.default, bool):
                group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default,
                                   help=help_text)
            else:
                metavar = None if f.name in CHOICES else {int: "N", float: "X"}.get(type(f.default), "TEXT")
                group.add_argument(flag, dest=f.name, type=type(f.default), default=f.default, help=help_text,
                                   choices=CHOICES.get(f.name), metavar=metavar)
    groups[FaultConfig].add_argument("--fault-seed", dest="fault_seed", type=int, default=1,
                                     help="seed of the fault dice (default %(default)s)")


def _configs(args: argparse.Namespace):
    from pipelines.sandbox.config import FaultConfig, SandboxConfig

    sb = {f.name: getattr(args, f.name) for f in dataclasses.fields(SandboxConfig) if hasattr(args, f.name)}
    fa = {f.name: getattr(args, f.name) for f in dataclasses.fields(FaultConfig)
          if f.name != "seed" and hasattr(args, f.name)}
    fa["seed"] = args.fault_seed
    return SandboxConfig(**sb), FaultConfig(**fa)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sandbox", help="run the local sandbox that behaves like both vendor APIs",
        description="Serve a local HTTP sandbox that behaves like CareCloud GET /point-history and Capillary\n"
                    "GET /v2/points/transfer, with deterministic data, a controllable clock and fault injection.\n"
                    "Without an action it serves (same as `sandbox serve`).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _serve_flags(p)
    _setting_flags(p)
    p.set_defaults(func=_serve)
    actions = p.add_subparsers(dest="sandbox_action", metavar="ACTION", title="actions")

    s = actions.add_parser("serve", help="serve the sandbox (default)", epilog=EXAMPLES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    _serve_flags(s)
    _setting_flags(s)
    s.set_defaults(func=_serve)

    t = actions.add_parser("truth", help="write the expected dataset as of --now (Parquet)",
                           description="Write carecloud_point_history.parquet and capillary_customer_transfers"
                                       ".parquet: every record the API shows at --now, for the listed customers.")
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument("--limit", type=int, default=None, help="only the first N customers (as `customers --limit`)")
    _setting_flags(t)
    t.set_defaults(func=_truth)

    c = actions.add_parser("customers", help="write the customer files (CSV with a customer_id column)")
    c.add_argument("--out", required=True, help="output directory (writes carecloud.csv, capillary.csv)")
    c.add_argument("--limit", type=int, default=None, help="list only the first N customers")
    c.add_argument("--unknown", type=int, default=0, help="add N ids the API does not know")
    c.add_argument("--duplicates", type=int, default=0, help="repeat N ids")
    c.add_argument("--blanks", type=int, default=0, help="add N blank lines")
    c.add_argument("--capillary-identifier", default="id", choices=["id", "mobile", "email", "externalId"],
                   help="which Capillary identifier the file lists (default %(default)s)")
    _setting_flags(c)
    c.set_defaults(func=_customers)


def _serve_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="bind address (default %(default)s, loopback only; anything else must be explicit)")
    parser.add_argument("--port", type=int, default=8700, help="port; 0 = any free port (default %(default)s)")
    _event_flags(parser)


def _event_flags(parser: argparse.ArgumentParser) -> None:
    """`--events-<field>` for every EventDeliveryConfig switch (docs/sandbox.md, "Event notifications")."""
    from pipelines.sandbox.config import EventDeliveryConfig

    group = parser.add_argument_group("Capillary event notifications (delivered to --events-url; off without it)")
    for f in dataclasses.fields(EventDeliveryConfig):
        if f.name == "non_retriable":
            group.add_argument("--events-non-retriable", dest="events_non_retriable", type=int, nargs="*",
                               default=list(f.default), metavar="STATUS",
                               help="statuses never retried (default %(default)s)")
            continue
        group.add_argument("--events-" + f.name.replace("_", "-"), dest="events_" + f.name, type=type(f.default),
                           default=f.default, metavar={int: "N", float: "X"}.get(type(f.default), "TEXT"),
                           help="see docs/sandbox.md (default %(default)s)")


def _event_config(args: argparse.Namespace):
    from pipelines.sandbox.config import EventDeliveryConfig

    values = {f.name: getattr(args, "events_" + f.name) for f in dataclasses.fields(EventDeliveryConfig)}
    values["non_retriable"] = tuple(values["non_retriable"])
    return EventDeliveryConfig(**values)


def _serve(args: argparse.Namespace) -> int:
    from pipelines.sandbox import Sandbox

    try:
        config, faults = _configs(args)
        events = _event_config(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        loopback = args.host == "localhost" or ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        print(f"warning: serving on {args.host}, reachable from other machines, with public sandbox credentials",
              file=sys.stderr)
    sb = Sandbox(config, faults)

    def ready(s: Sandbox) -> None:
        gen = s.app.data
        print(f"sandbox serving {config.customers} customers (seed {config.seed}) on {s.url}", flush=True)
        print(f"  CareCloud base_url: {s.carecloud_base_url}", flush=True)
        print(f"  Capillary base_url: {s.capillary_base_url}", flush=True)
        if config.customers:
            print(f"  e.g. CareCloud customer_id {gen.carecloud_id(min(7, config.customers - 1))}, "
                  f"Capillary id {gen.capillary_identifiers(min(1, config.customers - 1))['id']}", flush=True)
        print("  credentials: CareCloud sandbox / sandbox-password (app sandbox-app); "
              "Capillary sandbox.till / sandbox-password; Ctrl-C stops", flush=True)
        if config.api_users > 1:
            print(f"  {config.api_users} API users / keys per vendor: user k also as sandbox-k / sandbox-password-k, "
                  "sandbox.till-k, sandbox-key-k / sandbox-secret-k (docs/sandbox.md)", flush=True)
        if faults.any_active():
            print(f"  faults: {faults}", flush=True)
        if events.url:
            from pipelines.sandbox.events import EventDelivery

            EventDelivery(s, events).start()  # a daemon thread: ends with the server
            print(f"  delivering Capillary events to {events.url}", flush=True)

    try:
        sb.serve_forever(args.host, args.port, on_ready=ready)
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def _truth(args: argparse.Namespace) -> int:
    from pipelines.sandbox import Sandbox

    config, faults = _configs(args)
    sb = Sandbox(config, faults)
    if args.limit is not None:
        sb.list_customers(args.limit)
    truth = sb.truth()
    for name, path in truth.write(args.out).items():
        print(f"wrote {path} ({truth[name].num_rows} rows)")
    return 0


def _customers(args: argparse.Namespace) -> int:
    from pipelines.sandbox import Sandbox

    config, faults = _configs(args)
    sb = Sandbox(config, faults)
    paths = sb.write_customer_files(args.out, limit=args.limit, unknown=args.unknown, duplicates=args.duplicates,
                                    blanks=args.blanks, capillary_identifier=args.capillary_identifier)
    for source, path in paths.items():
        print(f"wrote {path} ({source})")
    return 0
