"""A throwaway PostgreSQL server on loopback, in a directory: the lake's catalog for tests and `make demo-lake`.

    with LocalPostgres(tmp / "pg") as pg:          # initdb (first time) + pg_ctl start on a free 127.0.0.1 port
        pg.url                                      # postgresql://loyalty:<password>@127.0.0.1:<port>/loyalty_lake
        pg.stop(); pg.start()                       # a clean restart, same data
        pg.kill(); pg.start()                       # SIGKILL the server (crash), then crash recovery

Why a real server and not a mock: the lake's catalog is PostgreSQL; its transactions, its locks and its outages are
what the lake's reliability rests on, so the tests talk to the real thing (the binaries of the machine: initdb,
pg_ctl and createdb from PATH or the Debian layout /usr/lib/postgresql/<version>/bin).

- Listens on 127.0.0.1 only; its unix socket lives in the data directory (never /var/run/postgresql).
- Password authentication (scram-sha-256) with a password generated per server: the URL carries it, so anything
  that logs a URL without masking it is caught by the tests that grep logs for secrets. `describe()` and `repr()`
  never show it.
- initdb refuses to run as root. Run as root (containers, CI images), the server runs as the unprivileged account
  `postgres` (or `nobody`): its files are owned by that account, and when that account cannot reach `directory`
  (e.g. pytest's 0700 /tmp/pytest-of-root) the data lives in a private temporary directory that `close()` removes.
- The database `database` (default "loyalty_lake", the lake catalog's) is created on the first start.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

SUPERUSER = "loyalty"
DEFAULT_DATABASE = "loyalty_lake"
HOST = "127.0.0.1"
# the accounts a root process hands the server to (initdb and postgres refuse to run as root)
SERVER_ACCOUNTS = ("postgres", "nobody")
START_TIMEOUT_S = 60
# sun_path holds 107 bytes; the socket file's own name (.s.PGSQL.<port>) takes up to 16 of them
SOCKET_DIR_MAX = 90


class LocalPostgresError(RuntimeError):
    """The local PostgreSQL could not be set up or started; the message says why (never the password)."""


def find_binary(name: str) -> str | None:
    """`name` (initdb, pg_ctl, createdb, dropdb) on PATH, else in the newest /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name)
    if found:
        return found
    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True):
        candidate = Path(bindir) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _version_key(bindir: str) -> tuple[int, ...]:
    version = Path(bindir).parent.name
    return tuple(int(p) for p in version.split(".") if p.isdigit()) or (0,)


def available() -> bool:
    """True when this machine can run a local server: initdb, pg_ctl and createdb found (and, run as root, an
    unprivileged account to run it as)."""
    return unavailable_reason() is None


def unavailable_reason() -> str | None:
    """None when `available()`, else why not (for a test's skip message)."""
    missing = [b for b in ("initdb", "pg_ctl", "createdb", "dropdb") if find_binary(b) is None]
    if missing:
        return (f"PostgreSQL server binaries not found ({', '.join(missing)}): not on PATH nor in "
                "/usr/lib/postgresql/*/bin; install the PostgreSQL server package (Debian: postgresql-15)")
    if os.geteuid() == 0 and _server_account() is None:
        return (f"running as root and none of the accounts {', '.join(SERVER_ACCOUNTS)} exists to run PostgreSQL "
                "as (initdb refuses root)")
    return None


def _server_account() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in SERVER_ACCOUNTS:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # as the server binds (SO_REUSEADDR): connections of a killed server in TIME_WAIT do not block a restart
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return True
    return False


class LocalPostgres:
    """One PostgreSQL server in `directory` (created if needed). `port=None`: a free port, chosen at the first
    start and kept for restarts. Several objects on one directory share its server (each may name its database)."""

    def __init__(self, directory: Path | str, port: int | None = None, database: str = DEFAULT_DATABASE,
                 start_timeout: float = START_TIMEOUT_S) -> None:
        reason = unavailable_reason()
        if reason:
            raise LocalPostgresError(reason)
        self.directory = Path(directory).resolve()
        self.port: int | None = port
        self.database = database
        self.user = SUPERUSER
        self.start_timeout = start_timeout
        self._account = _server_account()
        self._private: Path | None = None      # a temporary home of the data made by this object (root's account
        #                                        cannot reach `directory`): close() removes it
        self._password_file = self.directory / "password"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.password = self._load_or_make_password()
        self.root = self._server_root()
        self.data_dir = self.root / "data"
        self.log_file = self.root / "server.log"

    # ------------------------------------------------------------------ public
    @property
    def url(self) -> str:
        """postgresql://user:password@127.0.0.1:port/database: a secret (never log it; use `describe()`)."""
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        self._require_port()
        return f"postgresql://{self.user}:{quote(self.password, safe='')}@{HOST}:{self.port}/{database}"

    @property
    def dsn(self) -> str:
        """The same as `url` as libpq keywords (`dbname=... host=...`), e.g. for ATTACH 'ducklake:postgres:<dsn>'."""
        self._require_port()
        return f"dbname={self.database} host={HOST} port={self.port} user={self.user} password={self.password}"

    def describe(self) -> str:
        """The server for messages: no password."""
        port = self.port if self.port is not None else "?"
        return f"postgresql://{self.user}@{HOST}:{port}/{self.database} (local server in {self.root})"

    def __repr__(self) -> str:
        return f"LocalPostgres({self.describe()}, running={self.running()})"

    def running(self) -> bool:
        pid = self.pid()
        return pid is not None and _alive(pid)

    def pid(self) -> int | None:
        """The postmaster's pid from postmaster.pid (None when the server is not running or never started)."""
        try:
            first = (self.data_dir / "postmaster.pid").read_text().splitlines()[0]
            return int(first)
        except (OSError, IndexError, ValueError):
            return None

    def start(self) -> "LocalPostgres":
        """initdb on the first start, then pg_ctl start (waits until it accepts connections), then the database.
        A server already running in the directory is joined (its port read from postmaster.pid). The port is kept
        across restarts (a restart after stop() or kill() keeps `url` valid). Raises LocalPostgresError: port in
        use, start timeout (with the server log's tail)."""
        if self.running():
            self.port = self._running_port() or self.port
            self._ensure_database(self.database)
            return self
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        fixed = self.port is not None        # asked for, or chosen at an earlier start: keep it
        for attempt in range(1 if fixed else 3):
            if not fixed:
                self.port = free_port()
            if port_in_use(self.port):
                if fixed:
                    raise LocalPostgresError(f"cannot start PostgreSQL in {self.root}: port {self.port} on {HOST} "
                                             "is in use")
                continue
            try:
                self._pg_ctl_start()
                break
            except _PortTaken:
                # another process took the port between the check and the server's bind
                if fixed or attempt == 2:
                    raise LocalPostgresError(f"cannot start PostgreSQL in {self.root}: port {self.port} on {HOST} "
                                             f"is in use\n{self.log_tail()}") from None
        else:
            raise LocalPostgresError(f"cannot start PostgreSQL in {self.root}: no free port on {HOST}")
        self._ensure_database(self.database)
        return self

    def _running_port(self) -> int | None:
        # postmaster.pid: pid, data dir, start time, port, socket dir, listen address, ...
        try:
            return int((self.data_dir / "postmaster.pid").read_text().splitlines()[3])
        except (OSError, IndexError, ValueError):
            return None

    def stop(self, mode: str = "fast") -> None:
        """pg_ctl stop (mode fast: disconnect clients, roll back their transactions, shut down cleanly)."""
        if not self.running():
            return
        proc = self._run([self._bin("pg_ctl"), "stop", "-D", str(self.data_dir), "-m", mode, "-w",
                          "-t", str(int(self.start_timeout))], check=False)
        if proc.returncode != 0 and self.running():
            raise LocalPostgresError(f"pg_ctl stop failed for {self.describe()}: {proc.stderr.strip()[-500:]}")

    def kill(self) -> None:
        """SIGKILL the postmaster and its backends at once, like a crash of the server's machine (for crash tests;
        the next `start()` runs PostgreSQL's crash recovery). pg_ctl starts the postmaster in its own session, so
        its process group is the server."""
        pid = self.pid()
        if pid is None:
            return
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        except PermissionError:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.02)
        if not _alive(pid):
            # dead, maybe not yet reaped: a zombie still answers kill(pid, 0), which the next postmaster would take
            # for a running server, so its lock files go, as after a reboot
            for lock in [self.data_dir / "postmaster.pid", *self.data_dir.glob(".s.PGSQL.*.lock")]:
                lock.unlink(missing_ok=True)

    def close(self) -> None:
        """Stop the server (kill it if a clean stop fails) and remove a private data directory."""
        try:
            self.stop(mode="immediate")
        except LocalPostgresError:
            self.kill()
        if self._private is not None:
            shutil.rmtree(self._private, ignore_errors=True)

    def create_database(self, name: str) -> None:
        """Create database `name` if it does not exist (the server must be running)."""
        self._ensure_database(name)

    def drop_database(self, name: str) -> None:
        """Drop database `name` if it exists, disconnecting its clients (the server must be running)."""
        proc = self._run([self._bin("dropdb"), "-h", HOST, "-p", str(self.port), "-U", self.user, "--if-exists",
                          "--force", name], check=False, env={"PGPASSWORD": self.password})
        if proc.returncode != 0:
            raise LocalPostgresError(f"dropdb {name} failed on {self.describe()}: {proc.stderr.strip()[-500:]}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return "(no server log)"
        return "server log (last lines):\n" + "\n".join(text[-lines:])

    def __enter__(self) -> "LocalPostgres":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _require_port(self) -> None:
        if self.port is None:
            raise LocalPostgresError("the local PostgreSQL has no port yet: call start() first")

    def _load_or_make_password(self) -> str:
        # kept beside the data so a restarted LocalPostgres on the same directory reaches the same server
        if self._password_file.exists():
            return self._password_file.read_text().strip()
        password = secrets.token_urlsafe(24)
        fd = os.open(self._password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(password + "\n")
        return password

    def _server_root(self) -> Path:
        """Where the server's files live: `directory` itself, or (root, account cannot reach it) a private temp
        directory owned by the account, recorded in `directory/server-root` so a second object finds it."""
        if self._account is None or _reachable(self.directory, self._account):
            return self.directory
        pointer = self.directory / "server-root"
        if pointer.exists():
            root = Path(pointer.read_text().strip())
            if root.is_dir():
                return root     # made by another object on this directory, which owns it
        root = Path(tempfile.mkdtemp(prefix="loyalty-localpg-"))
        os.chown(root, self._account.pw_uid, self._account.pw_gid)
        pointer.write_text(str(root) + "\n")
        self._private = root
        return root

    def _bin(self, name: str) -> str:
        found = find_binary(name)
        if found is None:
            raise LocalPostgresError(f"{name} not found (PATH, /usr/lib/postgresql/*/bin)")
        return found

    def _run(self, cmd: list[str], check: bool = True, env: dict[str, str] | None = None,
             timeout: float | None = None) -> subprocess.CompletedProcess:
        kw: dict = {}
        if self._account is not None:
            kw.update(user=self._account.pw_uid, group=self._account.pw_gid, extra_groups=[])
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        full_env.update({"LC_ALL": "C", "LANG": "C"})
        full_env.update(env or {})
        # cwd: the server's root (an account that cannot read the caller's cwd would fail in it)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd=self.root,
                              stdin=subprocess.DEVNULL, timeout=timeout or self.start_timeout + 30, **kw)
        if check and proc.returncode != 0:
            raise LocalPostgresError(f"{Path(cmd[0]).name} failed (exit {proc.returncode}) for {self.describe()}:\n"
                                     f"{(proc.stderr or proc.stdout).strip()[-1500:]}")
        return proc

    def _chown(self, path: Path) -> None:
        if self._account is not None:
            os.chown(path, self._account.pw_uid, self._account.pw_gid)

    def _initdb(self) -> None:
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise LocalPostgresError(f"{self.data_dir} exists and is not a PostgreSQL data directory")
        self._chown(self.root)
        pwfile = self.root / ".initdb-password"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.password + "\n")
        self._chown(pwfile)
        try:
            self._run([self._bin("initdb"), "-D", str(self.data_dir), "-U", self.user, "--pwfile", str(pwfile),
                       "--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"])
        finally:
            pwfile.unlink(missing_ok=True)
        # loopback only, socket inside the data directory (none when that path is too long for a unix socket:
        # everything here connects over TCP anyway), a small footprint (the machine is shared)
        sockets = str(self.data_dir) if len(str(self.data_dir)) <= SOCKET_DIR_MAX else ""
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(f"\n# written by pipelines/localpg.py\nlisten_addresses = '{HOST}'\n"
                       f"unix_socket_directories = '{sockets}'\n"
                       "max_connections = 100\nshared_buffers = 32MB\nlogging_collector = off\n"
                       "log_min_messages = warning\n")

    def _pg_ctl_start(self) -> None:
        if self.log_file.exists():
            # the tail of a start timeout must be this start's lines
            self.log_file.replace(self.log_file.with_suffix(".log.1"))
        proc = self._run([self._bin("pg_ctl"), "start", "-D", str(self.data_dir), "-l", str(self.log_file), "-w",
                          "-t", str(int(self.start_timeout)), "-o", f"-p {self.port}"],
                         check=False)
        if proc.returncode == 0 and self.running():
            return
        log = self.log_tail()
        if "could not bind" in log or "Address already in use" in log:
            self._stop_quietly()
            raise _PortTaken()
        self._stop_quietly()
        what = "did not accept connections in time" if "waiting" in proc.stdout and "stopped" not in proc.stdout \
            else "failed to start"
        raise LocalPostgresError(f"PostgreSQL {what} ({self.describe()}, timeout {self.start_timeout:.0f} s); "
                                 f"pg_ctl: {(proc.stderr or proc.stdout).strip()[-500:]}\n{log}")

    def _stop_quietly(self) -> None:
        if self.running():
            self._run([self._bin("pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "immediate"], check=False)

    def _ensure_database(self, name: str) -> None:
        env = {"PGPASSWORD": self.password}
        proc = self._run([self._bin("createdb"), "-h", HOST, "-p", str(self.port), "-U", self.user, name],
                         check=False, env=env)
        if proc.returncode != 0 and "already exists" not in proc.stderr:
            raise LocalPostgresError(f"createdb {name} failed on {self.describe()}: {proc.stderr.strip()[-500:]}")


class _PortTaken(Exception):
    pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (killed, not yet reaped by its parent) counts as gone
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _reachable(directory: Path, account: pwd.struct_passwd) -> bool:
    """Can `account` traverse every ancestor of `directory`?"""
    groups = {account.pw_gid} | {g.gr_gid for g in _groups_of(account.pw_name)}
    # `directory` itself is handed to the account (chown), so only its ancestors matter
    for part in directory.parents:
        try:
            st = part.stat()
        except OSError:
            return False
        if not _may(st, account.pw_uid, groups, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH):
            return False
    return True


def _may(st: os.stat_result, uid: int, groups: set[int], u: int, g: int, o: int) -> bool:
    if st.st_uid == uid:
        return bool(st.st_mode & u)
    if st.st_gid in groups:
        return bool(st.st_mode & g)
    return bool(st.st_mode & o)


def _groups_of(user: str) -> list:
    import grp

    return [g for g in grp.getgrall() if user in g.gr_mem]
