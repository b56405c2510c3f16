"""Runs the dbt project in `sql/` on the warehouse (the embedded DuckDB file or a DuckLake), in this process.

    run_dbt(warehouse: Warehouse | Path, args: Sequence[str] = ("build",), *, quiet: bool = False,
            log_format: str = "text", target_dir: Path | None = None, project_dir: Path | None = None,
            manifest: Any = None) -> int
        0: dbt succeeded; 1: dbt ran but a model, seed or test failed (each failure is logged);
        2: dbt could not run (bad project, profile or warehouse; a lake catalog that cannot be reached).
        A Path is the embedded file at that path (tests, benchmarks).
    parse_manifest(warehouse: Warehouse | Path, ...) -> Manifest | None: the project parsed (no database is
        opened), for `run_dbt(..., manifest=)`: a run parses before it takes the warehouse file back, so its hold
        on the file covers the build alone (pipelines/writer.py). None if parsing failed (run_dbt then parses
        again and says why).
    last_results() -> list[NodeResult]: per-node outcome of the last invocation (status, message, failures).
        (dbt-duckdb reports no rows-affected counts; the incremental marts carry `_dbt_invocation_id` instead.)

The caller says which warehouse (`pipelines.warehouse.open_warehouse`). dbt reaches it through the env vars of
`Warehouse.dbt_env()`, which sql/profiles.yml reads (they pick its target too); they are set only for the call.

The file: why in-process (dbtRunner) and not `dbt` in a subprocess: a run holds the DuckDB file open while it loads
and DuckDB allows one writing process. A second `duckdb.connect()` to the same file *in the same process* shares
the already open database instance, so dbt-duckdb can write while the runner's connection stays open, provided
both connections use the same configuration: DuckDB refuses ("Can't open a connection to same database file with
a different configuration") when the first connection was opened with any `config=` option (threads,
memory_limit, access_mode, ...) that dbt's does not pass. dlt's DuckDB destination and a plain
`duckdb.connect(path)` use none, which is what tests/test_models.py checks; a later `SET memory_limit = ...` on
the holder (as `pipelines.lock.connect_writer` does) is fine and applies to dbt's queries too.

The lake: dbt-duckdb opens an in-memory DuckDB and ATTACHes the lake (sql/profiles.yml, target `ducklake`); any
number of processes may have it attached, so nothing is shared. The catalog password travels in a DBT_ENV_SECRET_
variable: dbt masks it in what it logs, and our own messages pass through `redact`. The `ducklake` and `postgres`
extensions are put in DuckDB's extension directory first (from their PyPI wheels, no internet), so the ATTACH
autoloads them.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from pipelines.logs import get_logger, redact, register_secret
from pipelines.warehouse import FILE_ENV

if TYPE_CHECKING:
    from pipelines.warehouse import Warehouse

log = get_logger("models")

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
WAREHOUSE_ENV = FILE_ENV
# Every variable sql/profiles.yml reads: all of them are set or cleared for a call, so a value left in the caller's
# environment (a shell that exported LOYALTY_WAREHOUSE_KIND=ducklake) never points dbt elsewhere.
PROFILE_ENV = (
    "LOYALTY_WAREHOUSE_KIND", WAREHOUSE_ENV, "DBT_ENV_SECRET_LOYALTY_LAKE_CATALOG", "LOYALTY_LAKE_NAME",
    "LOYALTY_LAKE_DATA_PATH", "LOYALTY_LAKE_METADATA_SCHEMA",
    "DBT_ENV_SECRET_LOYALTY_LAKE_PASSWORD", "DBT_ENV_SECRET_LOYALTY_LAKE_PASSWORD_IN_URL",
)

# dbt keeps global state (flags, adapter registry) per process; one invocation at a time.
_LOCK = threading.Lock()


@dataclass
class NodeResult:
    unique_id: str
    resource_type: str
    status: str
    message: str
    failures: int | None


_LAST: list[NodeResult] = []


def last_results() -> list[NodeResult]:
    """Per-node results of the last `run_dbt` call in this process (empty if dbt could not run)."""
    return list(_LAST)


def run_dbt(
    warehouse: "Warehouse | Path",
    args: Sequence[str] = ("build",),
    *,
    quiet: bool = False,
    log_format: str = "text",
    target_dir: Path | None = None,
    project_dir: Path | None = None,
    manifest: Any = None,
) -> int:
    """`target_dir` (default sql/target) and `project_dir` (default sql/, a copy in tests) are for tests;
    `manifest`: from `parse_manifest` with the same directories (dbt then skips parsing)."""
    from dbt.cli.main import dbtRunner

    with _invocation(warehouse) as wh:
        try:
            log.info("dbt %s on %s", " ".join(args), wh.describe())
            result = dbtRunner(manifest=manifest).invoke(_cli_args(args, quiet, log_format, target_dir, project_dir))
        finally:
            _release_duckdb()
        _LAST[:] = _node_results(result.result)
    if result.exception is not None:
        # the text of a failed ATTACH names the catalog URL: `redact` hides its password (registered by the config)
        log.error("dbt could not run on %s: %s", wh.describe(), redact(str(result.exception)))
        return 2
    for node in _LAST:
        if node.status in ("error", "fail", "runtime error"):
            log.error("dbt %s %s: %s", node.status, node.unique_id, node.message)
    return 0 if result.success else 1


def parse_manifest(warehouse: "Warehouse | Path", *, target_dir: Path | None = None,
                   project_dir: Path | None = None) -> Any:
    from dbt.cli.main import dbtRunner

    with _invocation(warehouse):
        result = dbtRunner().invoke(_cli_args(["parse"], True, "text", target_dir, project_dir))
    return result.result if result.success else None


@contextlib.contextmanager
def _invocation(warehouse: "Warehouse | Path") -> Iterator["Warehouse"]:
    """One dbt invocation at a time in this process, with the env vars of `Warehouse.dbt_env()` set for it only."""
    from pipelines.warehouse import FileWarehouse

    wh = warehouse if hasattr(warehouse, "dbt_env") else FileWarehouse(Path(warehouse))
    env = {name: None for name in PROFILE_ENV} | {"LOYALTY_WAREHOUSE_KIND": wh.kind} | wh.dbt_env()
    for name, value in env.items():
        if name.startswith("DBT_ENV_SECRET_"):
            register_secret(value)   # our own lines about this call are masked like dbt's
    if wh.kind == "ducklake":
        from pipelines.lake import install_extensions

        install_extensions()
    with _LOCK:
        previous = {name: os.environ.get(name) for name in env}
        _set_env(env)
        try:
            yield wh
        finally:
            _set_env(previous)


def _cli_args(args: Sequence[str], quiet: bool, log_format: str, target_dir: Path | None,
              project_dir: Path | None) -> list[str]:
    project = Path(project_dir) if project_dir else SQL_DIR
    target = Path(target_dir) if target_dir else project / "target"
    global_args = ["--log-path", str(project / "logs"), "--log-format", "json" if log_format == "json" else "text"]
    if quiet:
        global_args.append("--quiet")
    return [*global_args, *args,
            "--project-dir", str(project),
            "--profiles-dir", str(project),
            "--target-path", str(target),
            # Partial parsing reuses a file in the target dir; parallel runs (tests, a manual `models` beside a
            # nightly run on another warehouse) would read it half-written. Parsing this project takes ~1 s.
            "--no-partial-parse"]


def _set_env(values: dict[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _release_duckdb() -> None:
    """dbt-duckdb keeps its DuckDB instance open in a class attribute after the invocation (until exit). Close it:
    otherwise this process keeps writing rights on the file, so a read-only connection here or any connection from
    another process (dashboard, `status`) is refused for as long as this process lives."""
    try:
        from dbt.adapters.duckdb.connections import DuckDBConnectionManager
    except ImportError:  # pragma: no cover - dbt-duckdb is a dependency
        return
    env = DuckDBConnectionManager._ENV
    DuckDBConnectionManager.close_all_connections()
    if env is not None:
        env.close()


def _node_results(result: Any) -> list[NodeResult]:
    out: list[NodeResult] = []
    for r in getattr(result, "results", None) or []:
        node = getattr(r, "node", None)
        if node is None:  # `source freshness` results carry the source differently
            node = getattr(r, "source", None)
        out.append(
            NodeResult(
                unique_id=getattr(node, "unique_id", "?"),
                resource_type=str(getattr(node, "resource_type", "?")),
                status=str(getattr(r, "status", "?")),
                message=redact(str(getattr(r, "message", "") or "")),
                failures=getattr(r, "failures", None),
            )
        )
    return out
