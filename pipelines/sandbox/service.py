"""`Sandbox`: the in-process handle used by tests, benchmarks, `loyalty-etl demo` and `loyalty-etl sandbox`.

The server runs its asyncio loop on a background thread (or the main thread for the CLI), so a test drives the
clock, reads stats and computes the truth from the same process while real HTTP clients talk to it.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from pathlib import Path
from typing import Any

from pipelines.sandbox.api import SandboxApp
from pipelines.sandbox.clock import to_epoch
from pipelines.sandbox.config import FaultConfig, SandboxConfig
from pipelines.sandbox.server import ServerOptions, create_server
from pipelines.sandbox.truth import Truth, carecloud_listing_truth


def source_parts() -> dict[str, Any]:
    """The sandbox parts of the registered sources that have one (`SourceSpec.sandbox`), by source name: each
    gives its base URL, customer ids, ground truth and the settings that point the real CLI at it."""
    import importlib

    from pipelines import registry

    parts = {}
    for spec in registry.specs():
        if spec.sandbox:
            module, _, attr = spec.sandbox.partition(":")
            parts[spec.name] = getattr(importlib.import_module(module), attr or "PART")
    return parts


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop where it is installed (the `bench` extra), asyncio's own otherwise: the same protocol code with
    less CPU per request (docs/decisions/design-figures.md), which matters because on a small benchmark machine
    the sandbox takes its CPU from the pipeline under test."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Sandbox:
    def __init__(self, config: SandboxConfig | None = None, faults: FaultConfig | None = None,
                 options: ServerOptions | None = None) -> None:
        self.config = config or SandboxConfig()
        self.faults = faults or FaultConfig()
        self.options = options or ServerOptions()
        self.app = SandboxApp(self.config, self.faults)
        self.host = "127.0.0.1"
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self.parts = source_parts()
        # which customers the customer files list (truth covers exactly these); all unless narrowed
        self._listed: dict[str, list[int] | range] = {s: range(self.config.customers) for s in self.parts}
        self.capillary_identifier = "id"

    # ------------------------------------------------------------------ lifecycle
    def start(self, host: str = "127.0.0.1", port: int = 0) -> "Sandbox":
        if self._thread is not None:
            return self
        ready = threading.Event()
        error: list[BaseException] = []

        def run() -> None:
            loop = new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                self._server = loop.run_until_complete(create_server(self.app, host, port, self.options))
                self.host, self.port = host, self._server.sockets[0].getsockname()[1]
            except BaseException as exc:  # report bind errors to the caller's thread
                error.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                self._server.close()
                if hasattr(self._server, "close_clients"):  # 3.13+: wait_closed would wait for keep-alive clients
                    self._server.close_clients()
                loop.run_until_complete(self._server.wait_closed())
                loop.close()

        self._thread = threading.Thread(target=run, name="loyalty-sandbox", daemon=True)
        self._thread.start()
        ready.wait(30)
        if error:
            self._thread = None
            raise error[0]
        return self

    def serve_forever(self, host: str = "127.0.0.1", port: int = 8700, on_ready=None) -> None:
        """Serve on the calling thread until interrupted (the CLI)."""

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._server = await create_server(self.app, host, port, self.options)
            self.host, self.port = host, self._server.sockets[0].getsockname()[1]
            if on_ready:
                on_ready(self)
            async with self._server:
                await self._server.serve_forever()

        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(main())

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = None

    def __enter__(self) -> "Sandbox":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def warm(self, limit: int | None = None) -> int:
        """Generate (and cache) the listed customers' data up front, so a benchmark times the pipeline, not the
        generator (~25k records/s). Returns the number of CareCloud records generated."""
        return sum(part.warm(self, list(self._listed[name])[:limit]) for name, part in self.parts.items())

    def warm_listings(self) -> None:
        """Build the cross-customer indexes of GET /points and /purchases and the roster up front. The first listing
        request would otherwise build them on the server's event loop, which answers nothing meanwhile (minutes
        for 100,000 customers: a client times out)."""
        listings = self.app.listings
        listings.index("points")
        listings.index("purchases")
        listings.roster_view(self.now())

    # ------------------------------------------------------------------ addresses
    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("sandbox not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def sources(self) -> list[str]:
        """The sources this sandbox serves (registered sources with a sandbox part)."""
        return list(self.parts)

    def base_url(self, source: str) -> str:
        return self.parts[source].base_url(self)

    @property
    def carecloud_base_url(self) -> str:
        return self.base_url("carecloud")

    @property
    def capillary_base_url(self) -> str:
        return self.base_url("capillary")

    # ------------------------------------------------------------------ clock
    def now(self) -> float:
        return self.app.clock.now()

    def set_now(self, instant: Any) -> None:
        self.app.clock.set(instant)

    def advance(self, seconds: float) -> None:
        self.app.clock.advance(seconds)

    # ------------------------------------------------------------------ faults
    def update_faults(self, **changes: Any) -> None:
        """Change FaultConfig fields while serving, e.g. `update_faults(maintenance_seconds=0)` ends a maintenance
        window now, `update_faults(error_503_share=0)` calms a storm. Also `POST /_sandbox/faults {...}`."""
        self.app.faults.update(**changes)

    def customers_in_maintenance(self, source: str) -> list[str]:
        """The listed customers answered 503 right now because of the maintenance window."""
        faults, part = self.app.faults, self.parts[source]
        return [c for c in self.customer_ids(source) if faults.in_maintenance(part.maintenance_key(self, c))]

    # ------------------------------------------------------------------ customers
    def customer_ids(self, source: str, identifier_name: str | None = None) -> list[str]:
        if source not in self.parts:
            raise ValueError(f"unknown source {source!r}")
        extra = {"identifier_name": identifier_name} if identifier_name else {}
        return self.parts[source].customer_ids(self, self._listed[source], **extra)

    def list_customers(self, limit: int | None = None) -> None:
        """Narrow the customer list (files and truth) to the first `limit` customers; None = all."""
        n = self.config.customers if limit is None else min(limit, self.config.customers)
        self._listed = {s: range(n) for s in self.parts}

    def unknown_customer_ids(self, source: str, n: int) -> list[str]:
        """Well-formed ids the API does not know (400 not_found / 8015)."""
        return self.parts[source].unknown_ids(self, n)

    def write_customer_files(self, out_dir: str | Path, *, limit: int | None = None, unknown: int = 0,
                             duplicates: int = 0, blanks: int = 0,
                             capillary_identifier: str = "id") -> dict[str, Path]:
        """One CSV per source with a `customer_id` column. `limit` lists only the first N customers (the truth
        follows); `unknown`, `duplicates`, `blanks` add bad lines for the reliability suite (not in the truth)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.list_customers(limit)
        self.capillary_identifier = capillary_identifier
        paths = {}
        for source in self.parts:
            ids = self.customer_ids(source)
            extra = self.unknown_customer_ids(source, unknown)
            lines = ids + extra + ids[:duplicates] + [""] * blanks
            if extra or duplicates or blanks:
                # spread the bad lines through the file rather than all at the end
                lines = [c for _, c in sorted(enumerate(lines), key=lambda kv: hashlib.md5(
                    f"{self.config.seed}:{kv[0]}".encode()).digest())]
            path = out / f"{source}.csv"
            # ids never need CSV quoting; a blank id is written as "" the way the csv module writes an empty field.
            # One join instead of csv.writer rows: million-customer files in a few seconds.
            path.write_text("customer_id\n" + "".join(f"{cid}\n" if cid else '""\n' for cid in lines),
                            encoding="utf-8")
            paths[source] = path
        return paths

    def env(self, warehouse_path: str | Path, *, credentials: int = 1, **customer_file_options: Any) -> dict[str, str]:
        """Environment variables that point the real CLI (dlt-style settings) at this sandbox. Writes the
        customer files beside the warehouse file. Merge into `os.environ` for a subprocess. `credentials` > 1:
        that many API users / keys per vendor (`SandboxConfig.api_users` must be at least that), as
        `SOURCES__<VENDOR>__CREDENTIALS` JSON arrays named u1, u2, ... (CareCloud logins, Capillary OAuth keys)."""
        warehouse = Path(warehouse_path)
        files = self.write_customer_files(warehouse.parent, **customer_file_options)
        env = {k: v for name, part in self.parts.items() for k, v in part.env(self, files[name]).items()}
        env["DESTINATION__DUCKDB__CREDENTIALS"] = str(warehouse)
        if credentials > 1:
            env.update(self.credentials_env(credentials))
            env = {k: v for k, v in env.items() if "__CREDENTIALS__" not in k}
        return env

    def credentials_env(self, n: int) -> dict[str, str]:
        """`SOURCES__<VENDOR>__CREDENTIALS` = a JSON array of `n` sandbox API users / keys per vendor."""
        import json

        from pipelines.sandbox.config import api_users

        if n > self.config.api_users:
            raise ValueError(f"{n} credentials asked, the sandbox accepts {self.config.api_users} (api_users)")
        keys = {"carecloud": ("name", "login", "password", "external_app_id"), "capillary": ("name", "key", "secret")}
        return {f"SOURCES__{vendor.upper()}__CREDENTIALS": json.dumps(
                    [{k: user[k] for k in keys[vendor]} for user in api_users(vendor, n)])
                for vendor in self.parts if vendor in keys}

    # ------------------------------------------------------------------ truth and stats
    def truth(self, now: Any = None) -> Truth:
        at = self.now() if now is None else to_epoch(now)
        tables = {k: v for name, part in self.parts.items() for k, v in part.truth(self, at, self._listed[name]).items()}
        return Truth(**tables)

    def listing_truth(self, now: Any = None) -> dict[str, Any]:
        """The CareCloud listings at `now` (roster of every customer; /points and /purchases of the listed ones)
        and the listing trace of each visible history record (pyarrow tables; docs/sandbox.md "Listings")."""
        at = self.now() if now is None else to_epoch(now)
        return carecloud_listing_truth(self.app.listings, at, self._listed["carecloud"])

    def joined_between(self, start: Any, end: Any) -> list[str]:
        """Ids of the customers whose account is created in [start, end) (sandbox clock instants)."""
        lo, hi = to_epoch(start), to_epoch(end)
        gen = self.app.data
        return [gen.carecloud_id(i) for i in range(self.config.customers) if lo <= gen.joined_at(i) < hi]

    def write_truth(self, out_dir: str | Path, now: Any = None) -> dict[str, Path]:
        return self.truth(now).write(out_dir)

    def stats(self) -> dict:
        return self.app.stats()
