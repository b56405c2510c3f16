"""Run the real `loyalty-etl` CLI in a subprocess, crash it, and read the warehouse it leaves behind.

Every run's stdout and stderr are kept in files under the test's log directory: the security test greps them, and a
failing chaos test can be read back run by run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import duckdb

from pipelines.faultpoints import STAGES as CRASH_STAGES

ROOT = Path(__file__).resolve().parents[2]
ETL = [sys.executable, "-m", "pipelines.cli"]
KILLED = -signal.SIGKILL


@dataclass
class EtlRun:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    crash_at: str | None = None
    killed_by_test: bool = False          # a timed SIGKILL from the harness (not a crash point)
    leftovers: list[str] = field(default_factory=list)  # processes of the run still alive after it died

    @property
    def crashed(self) -> bool:
        return self.returncode == KILLED

    @property
    def output(self) -> str:
        return self.stdout + "\n" + self.stderr

    def describe(self) -> str:
        how = f" crash_at={self.crash_at}" if self.crash_at else (" timed kill" if self.killed_by_test else "")
        return (f"loyalty-etl {' '.join(self.args)}{how} -> rc {self.returncode} in {self.seconds:.1f}s\n"
                f"--- stdout\n{self.stdout[-4000:]}\n--- stderr\n{self.stderr[-4000:]}")


class Etl:
    """One test's way of running the CLI: a fixed environment (sandbox URLs, credentials, warehouse path) and a
    directory where every run's output is kept."""

    def __init__(self, env: dict[str, str], log_dir: Path, cwd: Path = ROOT) -> None:
        self.env = dict(env)
        self.cwd = Path(cwd)
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.runs: list[EtlRun] = []

    # -- plumbing
    def _files(self) -> tuple[Path, Path]:
        n = len(self.runs) + len(list(self.log_dir.glob("*.stdout"))) + 1
        stem = self.log_dir / f"run-{n:03d}-{time.monotonic_ns()}"
        return stem.with_suffix(".stdout"), stem.with_suffix(".stderr")

    def _env(self, crash_at: str | None, extra: dict[str, str] | None) -> dict[str, str]:
        env = {**os.environ, **self.env, **(extra or {})}
        env.pop("LOYALTY_TEST_CRASH_AT", None)
        if crash_at:
            env["LOYALTY_TEST_CRASH_AT"] = crash_at
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def spawn(self, *args: str, crash_at: str | None = None, env: dict[str, str] | None = None) -> "Spawned":
        out, err = self._files()
        fo, fe = open(out, "wb"), open(err, "wb")
        # own session: the harness can SIGKILL the run and every child it started, like systemd or an OOM kill
        proc = subprocess.Popen([*ETL, *args], cwd=self.cwd, env=self._env(crash_at, env), stdout=fo, stderr=fe,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        fo.close()
        fe.close()
        return Spawned(self, list(args), proc, out, err, crash_at, time.monotonic())

    def run(self, *args: str, crash_at: str | None = None, env: dict[str, str] | None = None,
            timeout: float = 600) -> EtlRun:
        return self.spawn(*args, crash_at=crash_at, env=env).wait(timeout)

    def run_killed_after(self, seconds: float, *args: str, env: dict[str, str] | None = None,
                         timeout: float = 600) -> EtlRun:
        """Start a run and SIGKILL its whole process group after `seconds` (if it is still running)."""
        sp = self.spawn(*args, env=env)
        try:
            sp.proc.wait(seconds)
        except subprocess.TimeoutExpired:
            sp.kill()
        return sp.wait(timeout)

    def run_killed_after_line(self, marker: str, seconds: float, *args: str, env: dict[str, str] | None = None,
                              timeout: float = 600) -> EtlRun:
        """Start a run, wait until its stderr shows `marker` (e.g. the log line that dbt starts), then SIGKILL it
        `seconds` later: a kill aimed at one phase rather than anywhere."""
        sp = self.spawn(*args, env=env)
        deadline = time.monotonic() + timeout
        while sp.running() and time.monotonic() < deadline:
            if marker in sp.err.read_text(errors="replace"):
                try:
                    sp.proc.wait(seconds)
                except subprocess.TimeoutExpired:
                    sp.kill()
                break
            time.sleep(0.05)
        return sp.wait(timeout)


@dataclass
class Spawned:
    etl: Etl
    args: list[str]
    proc: subprocess.Popen
    out: Path
    err: Path
    crash_at: str | None
    started: float
    killed_by_test: bool = False

    def running(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        self.killed_by_test = True
        _killpg(self.proc.pid)

    def wait(self, timeout: float = 600) -> EtlRun:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _killpg(self.proc.pid)
            self.proc.wait(30)
            raise AssertionError(f"loyalty-etl {' '.join(self.args)} did not finish in {timeout}s:\n"
                                 + self.err.read_text(errors="replace")[-4000:])
        seconds = time.monotonic() - self.started
        # the run's extraction workers die with it (PR_SET_PDEATHSIG), but the kernel delivers that asynchronously:
        # a worker may still be exiting (its command line already gone) the instant the run is reaped. Give the
        # group 2 s to finish dying; a process that really survived is still reported.
        deadline = time.monotonic() + 2.0
        leftovers = _group_members(self.proc.pid)
        while leftovers and time.monotonic() < deadline:
            time.sleep(0.05)
            leftovers = _group_members(self.proc.pid)
        if leftovers:
            # a run that died must not leave children writing to the warehouse; the job's supervisor would kill
            # them (systemd kills the control group) so the harness does too, and the test reports them
            _killpg(self.proc.pid)
            time.sleep(0.2)
        run = EtlRun(self.args, rc, self.out.read_text(errors="replace"), self.err.read_text(errors="replace"),
                     seconds, self.crash_at, self.killed_by_test, leftovers)
        self.etl.runs.append(run)
        return run


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _group_members(pgid: int) -> list[str]:
    import psutil

    found = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if os.getpgid(p.info["pid"]) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(f"{p.info['pid']}: {' '.join(p.info['cmdline'] or [])[:200]}")
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return found


# ---------------------------------------------------------------------------------------------- warehouse access
def is_lock_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "lock" in text and ("conflicting" in text or "could not set" in text)


def connect_ro(path: Path, wait_s: float = 60.0) -> duckdb.DuckDBPyConnection:
    """A read-only connection, waiting while a writer holds the file (the one-writer rule)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return duckdb.connect(str(path), read_only=True)
        except duckdb.Error as exc:
            if not is_lock_error(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def query(path: Path, sql: str, params: Iterable[Any] | None = None) -> list[tuple]:
    con = connect_ro(path)
    try:
        return con.execute(sql, list(params or [])).fetchall()
    finally:
        con.close()


def tables(path: Path) -> dict[str, list[str]]:
    """schema -> table names, every schema of the warehouse."""
    out: dict[str, list[str]] = {}
    for schema, name in query(path, "select table_schema, table_name from information_schema.tables "
                                    "where table_catalog = current_database() order by 1, 2"):
        out.setdefault(schema, []).append(name)
    return out


def sync_issues(path: Path, run_id: str | None = None) -> list[dict[str, Any]]:
    con = connect_ro(path)
    try:
        sql = "select * from loyalty_raw.sync_issues"
        rel = con.execute(sql + (" where run_id = ?" if run_id else ""), [run_id] if run_id else [])
        cols = [d[0] for d in rel.description]
        return [dict(zip(cols, row)) for row in rel.fetchall()]
    finally:
        con.close()


def runs(path: Path) -> list[dict[str, Any]]:
    con = connect_ro(path)
    try:
        rel = con.execute("select * from loyalty_raw.runs")
        cols = [d[0] for d in rel.description]
        rows = [dict(zip(cols, row)) for row in rel.fetchall()]
    finally:
        con.close()
    key = "started_at" if rows and "started_at" in rows[0] else None
    return sorted(rows, key=lambda r: str(r[key])) if key else rows
