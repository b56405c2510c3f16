"""`loyalty-etl events serve`: receive Capillary's event notifications and store them durably."""

from __future__ import annotations

import argparse

HELP = "receive Capillary event notifications (webhook) into the durable event store"

DESCRIPTION = """\
Receive Capillary's event notifications (Event Notification Service webhooks) on POST /capillary/events and store
each event durably in an append-only SQLite file beside the warehouse (never in the warehouse itself: analysts and
nightly runs keep using the DuckDB file while this runs).

Every request must carry the header configured in [sources.capillary.webhook] `header` (default Authorization)
with the value of the secret SOURCES__CAPILLARY__WEBHOOK__SECRET: register that header and value on the webhook in
Capillary. Answers: 200 stored (or a duplicate eventId, stored once), 401 wrong or missing secret, 413 body over
max_body_bytes (default 1 MiB), 400 not JSON or no eventId, 503 the store could not commit (Capillary retries).
SIGTERM or Ctrl-C stops cleanly: the request in flight is finished first.

Run it behind the brand's API gateway or reverse proxy, which terminates TLS (docs/operations.md).
"""

EPILOG = """\
settings ([sources.capillary.webhook] in .dlt/config.toml, the secret in .dlt/secrets.toml or the environment):
  header          request header carrying the secret (default Authorization)
  secret          SOURCES__CAPILLARY__WEBHOOK__SECRET, at least 16 characters (required)
  max_body_bytes  larger bodies get 413 (default 1048576)
  store           the event store file (default capillary_events.sqlite3 beside the warehouse file)

examples:
  SOURCES__CAPILLARY__WEBHOOK__SECRET=... loyalty-etl events serve
  loyalty-etl events serve --host 127.0.0.1 --port 8787
  curl -X POST http://127.0.0.1:8787/capillary/events -H "Authorization: $SECRET" \\
       -H 'Content-Type: application/json' -d '{"eventId":"e-1","eventName":"customerAdded","data":{}}'
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("events", help=HELP, description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="events_action", metavar="ACTION", title="actions")
    s = actions.add_parser("serve", help="run the webhook receiver", description=DESCRIPTION, epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--host", default="127.0.0.1",
                   help="bind address (default %(default)s: only the local reverse proxy reaches it)")
    s.add_argument("--port", type=int, default=8787, help="port; 0 = any free port (default %(default)s)")
    s.set_defaults(func=serve)
    st = actions.add_parser("status", help="what the event store holds: events, the newest, the last 24 h by name",
                            description="Read the event store (never the warehouse): how many events it holds, when "
                                        "the newest arrived, and the last 24 hours' events per name. A webhook that "
                                        "stopped delivering shows here as an old newest event.")
    st.set_defaults(func=status)
    p.set_defaults(func=lambda args: (p.print_help(), 1)[1])


def status(args: argparse.Namespace) -> int:
    import time

    import dlt

    from pipelines.capillary.webhook import SECTIONS, CapillaryWebhookConfiguration
    from pipelines.commands._common import fail
    from pipelines.config import warehouse_path
    from pipelines.events.store import EventStore, StoreError

    # the secret is not needed to read the store: resolve only where it is
    store_setting = dlt.config.get(".".join([*SECTIONS, "store"]))
    path = CapillaryWebhookConfiguration(store=store_setting).store_path(warehouse_path())
    if not path.exists():
        print(f"no events received yet: {path} does not exist (is `loyalty-etl events serve` running?)")
        return 0
    try:
        store = EventStore(path)
        since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 86400))
        info = store.summary(since)
        store.close()
    except StoreError as exc:
        return fail(exc)
    print(f"store {path}: {info['events']} events, newest received {info['newest_received_at'] or '-'}")
    print("last 24 h: " + (", ".join(f"{name} {n}" for name, n in info["recent"].items()) or "none"))
    return 0


def serve(args: argparse.Namespace) -> int:
    import signal

    from pipelines.capillary.webhook import EVENTS_PATH, envelope, load_webhook_configuration
    from pipelines.commands._common import fail
    from pipelines.config import ConfigError, warehouse_path
    from pipelines.events.receiver import EventReceiver
    from pipelines.events.store import EventStore, StoreError
    from pipelines.logs import get_logger

    log = get_logger("events")

    try:
        config = load_webhook_configuration()
        store = EventStore(config.store_path(warehouse_path()), group_commit=config.group_commit)
    except (ConfigError, StoreError) as exc:
        return fail(exc)
    try:
        server = EventReceiver((args.host, args.port), store, path=EVENTS_PATH, header=config.header,
                               secret=config.secret, max_body_bytes=config.max_body_bytes, parse=envelope)
    except OSError as exc:
        store.close()
        return fail(OSError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}"))

    def stop(signum: int, frame: object) -> None:
        server.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = server.server_address[:2]
    print(f"receiving Capillary events on http://{host}:{port}{EVENTS_PATH} (header {config.header}), "
          f"store {store.path}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()  # waits for the requests in flight
        store.close()
    log.info("receiver stopped")
    return 0
