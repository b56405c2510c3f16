"""Runs the dbt project in `sql/` on a DuckDB warehouse, in this process.

    run_dbt(warehouse: Path, args: Sequence[str] = ("build",), *, quiet: bool = False,
            log_format: str = "text", target_dir: Path | None = None, project_dir: Path | None = None) -> int
        0: dbt succeeded; 1: dbt ran but a model, seed or test failed (each failure is logged);
        2: dbt could not run (bad project, profile or warehouse).
    last_results() -> list[NodeResult]: per-node outcome of the last invocation (status, message, failures).
        (dbt-duckdb reports no rows-affected counts; the incremental marts carry `_dbt_invocation_id` instead.)

The caller says which warehouse: the CLI resolves it with `pipelines.config.warehouse_path()`, the one place the
file is configured. dbt reads it from `LOYALTY_WAREHOUSE_PATH` (sql/profiles.yml), which is set only for the call.

Why in-process (dbtRunner) and not `dbt` in a subprocess: a run holds the DuckDB file open for its whole duration
and DuckDB allows one writing process. A second `duckdb.connect()` to the same file *in the same process* shares
the already open database instance, so dbt-duckdb can write while the runner's connection stays open, provided
both connections use the same configuration: DuckDB refuses ("Can't open a connection to same database file with
a different configuration") when the first connection was opened with any `config=` option (threads,
memory_limit, access_mode, ...) that dbt's does not pass. dlt's DuckDB destination and a plain
`duckdb.connect(path)` use none, which is what tests/test_models.py checks; a later `SET memory_limit = ...` on
the holder (as `pipelines.lock.connect_writer` does) is fine and applies to dbt's queries too.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pipelines.logs import get_logger

log = get_logger("models")

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
WAREHOUSE_ENV = "LOYALTY_WAREHOUSE_PATH"

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
    warehouse: Path,
    args: Sequence[str] = ("build",),
    *,
    quiet: bool = False,
    log_format: str = "text",
    target_dir: Path | None = None,
    project_dir: Path | None = None,
) -> int:
    """`target_dir` (default sql/target) and `project_dir` (default sql/, a copy in tests) are for tests."""
    from dbt.cli.main import dbtRunner

    project = Path(project_dir) if project_dir else SQL_DIR
    target = Path(target_dir) if target_dir else project / "target"
    cli_args = [
        *args,
        "--project-dir", str(project),
        "--profiles-dir", str(project),
        "--target-path", str(target),
        # Partial parsing reuses a file in the target dir; parallel runs (tests, a manual `models` beside a
        # nightly run on another warehouse) would read it half-written. Parsing this project takes ~1 s.
        "--no-partial-parse",
    ]
    global_args = ["--log-path", str(project / "logs"), "--log-format", "json" if log_format == "json" else "text"]
    if quiet:
        global_args.append("--quiet")
    with _LOCK:
        previous = os.environ.get(WAREHOUSE_ENV)
        os.environ[WAREHOUSE_ENV] = str(Path(warehouse).resolve())
        try:
            log.info("dbt %s on %s", " ".join(args), warehouse)
            result = dbtRunner().invoke([*global_args, *cli_args])
        finally:
            _release_duckdb()
            if previous is None:
                os.environ.pop(WAREHOUSE_ENV, None)
            else:
                os.environ[WAREHOUSE_ENV] = previous
        _LAST[:] = _node_results(result.result)
    if result.exception is not None:
        log.error("dbt could not run: %s", result.exception)
        return 2
    for node in _LAST:
        if node.status in ("error", "fail", "runtime error"):
            log.error("dbt %s %s: %s", node.status, node.unique_id, node.message)
    return 0 if result.success else 1


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
                message=str(getattr(r, "message", "") or ""),
                failures=getattr(r, "failures", None),
            )
        )
    return out
