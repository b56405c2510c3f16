"""`loyalty-etl dashboard`: the Streamlit dashboard on the marts, read-only, beside the nightly load."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pipelines.commands._common import SettingDefaultsHelp

HELP = "open the points dashboard (Streamlit) on the configured warehouse, read-only"



def app_path() -> Path:
    """The Streamlit script of the installed `dashboard` package."""
    import dashboard

    return Path(dashboard.__file__).resolve().parent / "app.py"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dashboard", help=HELP,
        description=HELP + ". It opens the DuckDB file read-only per query, so it can stay up while `loyalty-etl run` "
        "loads; during a load pages say so and show nothing new. On a DuckLake it keeps one read-only attachment "
        "and always shows the last committed data, loads or not.", formatter_class=SettingDefaultsHelp,
    )
    p.add_argument("--port", type=int, default=8501, help="port to serve on (default 8501)")
    p.add_argument("--address", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; use 0.0.0.0 to share it on the network)")
    timezone = p.add_argument("--timezone", default=None, help="zone for dates and times shown")
    timezone.setting = ("loyalty", "dashboard_timezone")  # type: ignore[attr-defined]
    p.set_defaults(func=handle)


def streamlit_command(port: int, address: str) -> list[str]:
    return [
        sys.executable, "-m", "streamlit", "run", str(app_path()),
        "--server.port", str(port), "--server.address", address, "--server.headless", "true",
        "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer",
    ]


def dashboard_env(warehouse: Path | None, timezone: str) -> dict[str, str]:
    """The app's environment: the file to read (None: the app resolves the configured warehouse itself, a lake)."""
    from dashboard.db import TIMEZONE_ENV, WAREHOUSE_ENV

    env = {**os.environ, TIMEZONE_ENV: timezone}
    env.pop(WAREHOUSE_ENV, None)
    return env | ({WAREHOUSE_ENV: str(warehouse)} if warehouse is not None else {})


def handle(args: argparse.Namespace) -> int:
    from pipelines.config import ConfigError, load_loyalty
    from pipelines.logs import redact
    from pipelines.warehouse import configured_warehouse

    try:
        wh = configured_warehouse()
        timezone = args.timezone or load_loyalty().dashboard_timezone
    except ConfigError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return 2
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        print(f"error: unknown time zone {timezone!r}; use an IANA name such as Europe/Berlin", file=sys.stderr)
        return 2
    if wh.kind == "duckdb" and not wh.exists():
        print(f"note: no warehouse at {wh.describe()} yet; run `loyalty-etl demo` or `loyalty-etl run` first",
              file=sys.stderr)
    print(f"dashboard on http://{args.address}:{args.port}  (warehouse {wh.describe()}, times in {timezone})")
    sys.stdout.flush()
    # Replace this process with Streamlit so Ctrl-C and a service manager's SIGTERM reach the server directly.
    command = streamlit_command(args.port, args.address)
    os.execve(command[0], command, dashboard_env(wh.path if wh.kind == "duckdb" else None,
                                                 timezone))
    return 0  # not reached
