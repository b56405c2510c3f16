"""A DuckLake for tests: catalog on the real PostgreSQL of the `postgres` fixture, data files in a local directory.

    lake = Lake(postgres, tmp_path / "lake-data")
    env.update(lake.env())                 # the CLI then runs with [loyalty] warehouse = "ducklake"
    con = lake.connect()                   # an analyst's view: in-memory DuckDB, the lake attached READ_ONLY
    compare(lake, truth, ...)              # tests/chaos/compare.py accepts a Lake wherever it takes a file

It attaches the lake the way an analyst does (plain DuckDB: LOAD ducklake, ATTACH 'ducklake:postgres:...'), not
through the project's `Warehouse`, so the tests check what the pipeline wrote, not what its own reader says.
`str()` and `repr()` never show the catalog's password.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb

from pipelines.localpg import LocalPostgres

# dlt's default `ducklake_name`: the ATTACH alias and the PostgreSQL schema of DuckLake's catalog tables
LAKE_NAME = "ducklake"
_loaded = False


def load_lake_extensions(con: duckdb.DuckDBPyConnection) -> None:
    """LOAD ducklake + postgres from DuckDB's own binaries on PyPI (no internet)."""
    global _loaded
    if not _loaded:
        from duckdb_extensions import import_extension

        for name in ("ducklake", "postgres"):
            import_extension(name)
        _loaded = True
    con.execute("load ducklake")
    con.execute("load postgres")


@dataclass
class Lake:
    pg: LocalPostgres
    data_path: Path
    name: str = LAKE_NAME

    def __post_init__(self) -> None:
        self.data_path = Path(self.data_path).resolve()
        self.data_path.mkdir(parents=True, exist_ok=True)

    def env(self) -> dict[str, str]:
        """Environment of a CLI run on this lake (dlt's own `[destination.ducklake.credentials]` keys)."""
        return {
            "LOYALTY__WAREHOUSE": "ducklake",
            "DESTINATION__DUCKLAKE__CREDENTIALS__CATALOG": self.pg.url,
            "DESTINATION__DUCKLAKE__CREDENTIALS__STORAGE": str(self.data_path),
        }

    def attach_sql(self, alias: str | None = None, read_only: bool = True) -> str:
        """Holds the password: never print it. A reader takes the data path the catalog records; a writer gives
        it as dlt does (creating the lake records it)."""
        where = "READ_ONLY" if read_only else f"DATA_PATH '{self.data_path}'"
        return (f"ATTACH 'ducklake:postgres:{self.pg.dsn}' AS {alias or self.name} "
                f"({where}, METADATA_SCHEMA '{self.name}')")

    def attach(self, con: duckdb.DuckDBPyConnection, alias: str, read_only: bool = True) -> None:
        load_lake_extensions(con)
        con.execute(self.attach_sql(alias, read_only))

    def connect(self, read_only: bool = True) -> duckdb.DuckDBPyConnection:
        con = duckdb.connect()
        try:
            self.attach(con, self.name, read_only)
            con.execute(f"use {self.name}")
        except BaseException:
            con.close()
            raise
        return con

    def exists(self) -> bool:
        """Whether the catalog holds this lake (a writable attach or a load created it)."""
        con = duckdb.connect()
        try:
            self.attach(con, "probe", read_only=True)
        except duckdb.Error as exc:
            if "explicitly disabled" in str(exc):   # "... creating a new DuckLake is explicitly disabled"
                return False
            raise
        finally:
            con.close()
        return True

    def create(self) -> None:
        """Create the (empty) lake now, as the first writer would."""
        con = duckdb.connect()
        try:
            self.attach(con, "creator", read_only=False)
        finally:
            con.close()

    def describe(self) -> str:
        return f"lake {self.name!r} on {self.pg.describe()}, data {self.data_path}"

    __str__ = describe

    def __repr__(self) -> str:
        return f"Lake({self.describe()})"


def processes_at_once(script: str, argvs: list[list[str]], go: Path, env: dict[str, str],
                      cwd: Path | None = None, timeout_s: float = 600) -> list[dict]:
    """Run `python -c script *argv` once per argv, released together: the k-th (from 1) touches `<go>.ready-<k>`
    when set up and waits for `go`, which is touched once all are ready. Each prints one JSON report as its last
    line; the reports, in order. A process that fails or never gets ready fails the test with its stderr."""
    procs = [subprocess.Popen([sys.executable, "-c", script, *argv], cwd=cwd, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for argv in argvs]
    ready = [Path(f"{go}.ready-{k}") for k in range(1, len(procs) + 1)]
    deadline = time.monotonic() + 300
    while not all(r.exists() for r in ready):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            for p in procs:
                p.kill()
            raise AssertionError("a process did not get ready:\n" + "\n".join(p.communicate()[1][-2000:] for p in procs))
        time.sleep(0.02)
    go.touch()
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout_s)
        assert p.returncode == 0, f"a process exited {p.returncode}:\n{stderr[-3000:]}"
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out
