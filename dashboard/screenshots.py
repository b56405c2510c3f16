"""Screenshots of every dashboard page into docs/screenshots/ (`make screenshots`).

Serves the app on a demo warehouse (the configured one when it exists, e.g. after `make demo`; otherwise a fresh
`loyalty-etl demo` into a temporary directory) and photographs each page with headless Chromium driven by
playwright. The browser is Debian's `chromium` package (`apt-get install chromium`); playwright's own browser
download is never used.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from pipelines.commands.dashboard import dashboard_env, streamlit_command
from pipelines.windows import LOCAL_TIMEZONE

ROOT = Path(__file__).resolve().parents[1]

OUT = ROOT / "docs" / "screenshots"
# (file name, URL path): st.navigation derives the URL path from the page file name; the default page is "/".
PAGES = [
    ("01-overview", ""),
    ("02-trends", "trends"),
    ("03-stores-and-partners", "stores"),
    ("04-transfers", "transfers"),
    ("05-expirations", "expirations"),
    ("06-customer-lookup", "customer"),
    ("07-data-health", "health"),
]
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
WIDTH, MIN_HEIGHT, MAX_HEIGHT = 1400, 1000, 2600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_warehouse(workdir: Path, customers: int) -> Path:
    """A fresh demo warehouse (sandbox -> pipeline -> marts) in `workdir`, built by the project's own demo command."""
    warehouse = workdir / "loyalty_warehouse.duckdb"
    env = {**os.environ, "DESTINATION__DUCKDB__CREDENTIALS": str(warehouse)}
    print(f"building a demo warehouse with {customers} customers per source in {workdir} ...", flush=True)
    subprocess.run([sys.executable, "-m", "pipelines.cli", "demo", "--customers", str(customers)], cwd=ROOT, env=env,
                   check=True, stdout=subprocess.DEVNULL)
    return warehouse


def wait_healthy(port: int, server: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"streamlit exited with {server.returncode}")
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read() == b"ok":
                return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError("streamlit did not become healthy")


def shoot(port: int, out: Path, chromium: str) -> list[Path]:
    from playwright.sync_api import sync_playwright

    written = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": WIDTH, "height": MIN_HEIGHT}, locale="en-US")
        for name, path in PAGES:
            page.set_viewport_size({"width": WIDTH, "height": MIN_HEIGHT})
            page.goto(f"http://127.0.0.1:{port}/{path}")
            # Rendered = the page title is there, the script has stopped running and every chart has drawn.
            page.wait_for_selector('[data-testid="stMainBlockContainer"] h1', timeout=60_000)
            page.wait_for_function(
                """() => !document.querySelector('[data-testid="stStatusWidget"]')
                     && !document.querySelector('[data-testid="stSkeleton"]')
                     && [...document.querySelectorAll('[data-testid="stVegaLiteChart"]')]
                          .every(c => c.querySelector('canvas, svg'))""",
                timeout=60_000,
            )
            page.wait_for_timeout(1500)   # chart transitions and data grids settle
            # The page scrolls inside Streamlit's main area, not the document: grow the window to fit it.
            height = page.evaluate(
                """() => document.querySelector('[data-testid="stMainBlockContainer"]').scrollHeight"""
            )
            page.set_viewport_size({"width": WIDTH, "height": max(MIN_HEIGHT, min(MAX_HEIGHT, int(height) + 40))})
            page.wait_for_timeout(800)
            target = out / f"{name}.png"
            page.screenshot(path=str(target))
            written.append(target)
            print(f"  {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}", flush=True)
        browser.close()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warehouse", type=Path, default=None,
                        help="warehouse to show (default: the configured one if it exists, else a fresh demo)")
    parser.add_argument("--fresh", action="store_true", help="always build a fresh demo warehouse")
    parser.add_argument("--customers", type=int, default=300, help="customers per source for a fresh demo")
    parser.add_argument("--out", type=Path, default=OUT, help=f"output directory (default {OUT.relative_to(ROOT)})")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium",
                        help="Chromium executable (default: Debian's chromium)")
    parser.add_argument("--timezone", default=LOCAL_TIMEZONE)
    args = parser.parse_args(argv)

    if not Path(args.chromium).exists():
        print(f"no Chromium at {args.chromium}: apt-get install chromium, or pass --chromium", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="loyalty-screenshots-") as tmp:
        warehouse = args.warehouse
        if warehouse is None and not args.fresh:
            from pipelines.config import warehouse_path

            warehouse = warehouse_path() if warehouse_path().exists() else None
        if warehouse is None:
            warehouse = demo_warehouse(Path(tmp), args.customers)
        port = free_port()
        print(f"serving the dashboard on port {port} for {warehouse}", flush=True)
        server = subprocess.Popen(streamlit_command(port, "127.0.0.1"), cwd=ROOT,
                                  env=dashboard_env(warehouse, args.timezone),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_healthy(port, server)
            shoot(port, args.out, args.chromium)
        finally:
            server.terminate()
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
