"""The DuckLake side of the warehouse (`[loyalty] warehouse = "ducklake"`): its configuration, the DuckDB extensions
it needs, the ATTACH statement and the run lock in the catalog database.

Configuration is dlt's own `[destination.ducklake.credentials]` (the same keys dlt's ducklake destination reads,
resolved by dlt's own `DuckLakeCredentials` spec), so one setting serves the raw loads (dlt), the bookkeeping, dbt
and the readers:

    [destination.ducklake.credentials]                # .dlt/secrets.toml: the catalog URL holds a password
    catalog = "postgresql://loader:secret@db.example.com:5432/loyalty"
    storage = "s3://bucket/loyalty-lake"              # or a local directory; or [...credentials.storage] bucket_url
    # ducklake_name = "ducklake"                      # the ATTACH alias and, unless metadata_schema says otherwise,
    # metadata_schema = "ducklake"                    # the PostgreSQL schema holding DuckLake's catalog tables

`storage` as a plain string: dlt's config resolution takes a storage only as a `[...storage]` table with
`bucket_url` and silently ignores a string there (then writes to `./ducklake.files`). A string is what its own
docs and `DuckLakeCredentials(storage="s3://...")` show, so it is accepted here too. Unset: `<warehouse dir>/
<ducklake_name>.files` (beside where the embedded file would be), made absolute: DuckLake records the data path in
the catalog, and every client (other machines, dbt, analysts) resolves the files from there.

Extensions: `ducklake` and `postgres` come from DuckDB's own signed binaries on PyPI (`duckdb-extension-*`, pinned
with duckdb in pyproject.toml), installed into DuckDB's extension directory from the wheel without internet; where
the wheel is missing (another DuckDB version), DuckDB's `INSTALL` fetches them (online users).

Run lock: a PostgreSQL session-level advisory lock in the catalog database (`AdvisoryLock`), taken with psycopg on a
connection of its own. Why psycopg and not DuckDB's postgres extension: a session lock must live on ONE server
session that nothing else uses; the extension pools its connections and pins one only for the duration of a DuckDB
transaction, so the lock would either leak into the pool or need a transaction kept open for the whole run (hours),
which holds back VACUUM of the catalog tables DuckLake rewrites on every commit. On a plain autocommit session the
lock holds no snapshot, and PostgreSQL drops it the moment the session ends: a killed run (kill -9: the kernel closes
its socket) never leaves a stale lock behind, unlike a lock row or a lock file on a shared disk.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import duckdb

from pipelines.errors import WarehouseUnavailable
from pipelines.lock import RunLocked
from pipelines.logs import get_logger, redact, register_secret

log = get_logger("lake")

EXTENSIONS = ("ducklake", "postgres")
SECTION = ("destination", "ducklake", "credentials")
POSTGRES_DRIVERS = ("postgres", "postgresql")


# ---------------------------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class LakeConfig:
    """A resolved `[destination.ducklake.credentials]`: `credentials` is dlt's own `DuckLakeCredentials` (handed to
    dlt's destination as is); the rest is derived from it."""

    credentials: Any            # dlt.destinations.impl.ducklake.configuration.DuckLakeCredentials
    name: str                   # the ATTACH alias: the DuckDB catalog the lake is queried as
    metadata_schema: str        # the PostgreSQL schema of DuckLake's catalog tables
    storage_url: str            # the data path: an absolute local directory or an s3://... URL

    @property
    def catalog(self) -> Any:
        return self.credentials.catalog

    @property
    def postgres_url(self) -> str:
        """`postgresql://user:password@host:port/db?...`: a secret (registered for redaction)."""
        return self.catalog.to_url().render_as_string(hide_password=False).replace("postgres://", "postgresql://", 1)

    def describe(self) -> str:
        """The lake for messages, without the password: `ducklake 'name' (catalog postgresql://user@host:port/db,
        schema s; data /path)`."""
        c = self.catalog
        port = f":{c.port}" if c.port else ""
        user = f"{c.username}@" if c.username else ""
        return (f"ducklake {self.name!r} (catalog postgresql://{user}{c.host or 'localhost'}{port}/{c.database}, "
                f"schema {self.metadata_schema}; data {self.storage_url})")

    def attach_sql(self, read_only: bool = False, alias: str | None = None) -> str:
        """dlt's own ATTACH statement for this lake (the one its destination runs), READ_ONLY for readers, as
        `alias` (default: the lake's name). Holds the catalog password: never log it."""
        from dlt.destinations.impl.ducklake.sql_client import DuckLakeSqlClient

        sql = DuckLakeSqlClient.build_attach_statement(
            ducklake_name=alias or self.name, metadata_schema=self.metadata_schema, catalog=self.catalog,
            storage_url=self.storage_url)
        if read_only:
            assert sql.endswith(")"), sql
            sql = sql[:-1] + ", READ_ONLY)"
        return sql

    def lock_key(self, scope: str) -> int:
        """The advisory lock key of `scope` in this lake: 64 bits of a stable hash (PostgreSQL's bigint)."""
        digest = hashlib.blake2b(f"loyalty-etl:{self.metadata_schema}:{scope}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big", signed=True)


def _register_url_secrets(catalog: Any) -> None:
    password = getattr(catalog, "password", None)
    if password:
        for form in {str(password), quote(str(password), safe=""), unquote(str(password))}:
            register_secret(form)


def load_lake_config(warehouse_dir: Path) -> LakeConfig:
    """`[destination.ducklake.credentials]` resolved by dlt's `DuckLakeCredentials` spec. The catalog must be a
    PostgreSQL URL: it is what lets several machines write and read one lake, and it holds the run lock. Its
    password and the storage's credentials are registered as secrets (not the lake's name or data path: those are
    not secret and appear in messages)."""
    import difflib

    from dlt.common.configuration.specs import ConnectionStringCredentials
    from dlt.destinations.impl.ducklake.configuration import DuckLakeCredentials

    from pipelines.config import ConfigError, _resolve, _section_values, config_keys

    given: dict[str, Any] = {}
    known = list(config_keys(DuckLakeCredentials))
    for key, where, value in _section_values(SECTION):
        given.setdefault(key, value)
        if key not in known:
            near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            env = where == "environment"
            name = lambda k: "__".join((*SECTION, k)).upper() if env else k  # noqa: E731
            shown = f"environment variable {name(key)}" if env else f"{key} in [{'.'.join(SECTION)}] ({where})"
            raise ConfigError(f"unknown setting: {shown}; " + (
                f"did you mean {name(near[0])}?" if near else f"valid keys: {', '.join(sorted(known))}"))
    if not given.get("catalog"):
        raise ConfigError("[loyalty] warehouse = \"ducklake\" needs the lake's catalog: set catalog = "
                          "\"postgresql://user:password@host:5432/database\" in [destination.ducklake.credentials] "
                          "(.dlt/secrets.toml) or DESTINATION__DUCKLAKE__CREDENTIALS__CATALOG")
    spec = DuckLakeCredentials()
    storage = given.get("storage")
    if isinstance(storage, str):
        # dlt's resolution ignores a string here (see the module doc); give it as the explicit value instead
        spec.storage = _storage(storage)
    credentials = _resolve(spec, SECTION)
    if not isinstance(credentials.catalog, ConnectionStringCredentials) or (
            credentials.catalog.drivername not in POSTGRES_DRIVERS):
        driver = getattr(credentials.catalog, "drivername", None)
        raise ConfigError(f"[destination.ducklake.credentials] catalog must be a PostgreSQL URL "
                          f"(postgresql://user:password@host:5432/database), not a {driver} catalog: the lake's "
                          "writers and readers on several machines and the run lock need a catalog server")
    _register_url_secrets(credentials.catalog)
    if (storage_credentials := credentials.storage.credentials) is not None:
        from dlt.common.configuration.specs.base_configuration import is_secret_hint

        for key, hint in storage_credentials.get_resolvable_fields().items():
            if is_secret_hint(hint) and isinstance(storage_credentials[key], str):
                register_secret(storage_credentials[key])
    name = credentials.ducklake_name
    if storage is None:
        credentials.storage = _storage(str(warehouse_dir / f"{name}.files"))
    return LakeConfig(credentials=credentials, name=name, metadata_schema=credentials.metadata_schema or name,
                      storage_url=_storage_url(credentials.storage))


def _storage(url: str) -> Any:
    """A `FilesystemConfiguration` for `url`, a local path made absolute (relative to the working directory)."""
    from dlt.common.storages.configuration import FilesystemConfigurationWithLocalFiles

    if "://" not in url:
        url = Path(url).expanduser().absolute().as_uri()
    return FilesystemConfigurationWithLocalFiles(bucket_url=url)


def _storage_url(storage: Any) -> str:
    if storage.is_local_filesystem:
        return str(Path(storage.make_local_path(storage.bucket_url)).absolute())
    return str(storage.bucket_url)


# ---------------------------------------------------------------------------------------------- extensions
_INSTALLED: set[str] = set()


def install_extensions() -> None:
    """Make `ducklake` and `postgres` loadable without internet: copy DuckDB's binaries from the
    `duckdb-extension-*` wheels into DuckDB's extension directory (once per process; a no-op when there). Any
    connection then loads them, dlt's own (its ATTACH autoloads them) included. Without the wheel, `INSTALL`."""
    missing = [name for name in EXTENSIONS if name not in _INSTALLED]
    if not missing:
        return
    with duckdb.connect() as conn:
        for name in missing:
            try:
                from duckdb_extensions import import_extension

                import_extension(name, con=conn)
            except (ImportError, ModuleNotFoundError, duckdb.Error, OSError) as exc:
                log.info("extension %s not in a local wheel (%s); installing it from DuckDB's repository", name, exc)
                conn.execute(f"INSTALL {name}")
            _INSTALLED.add(name)


def load_extensions(conn: duckdb.DuckDBPyConnection) -> None:
    install_extensions()
    for name in EXTENSIONS:
        conn.execute(f"LOAD {name}")


# ---------------------------------------------------------------------------------------------- connections
def connect(config: LakeConfig, read_only: bool = False, memory_limit: str | None = None,
            what: str = "") -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the lake attached (READ_ONLY for readers) and made the default catalog, so
    `loyalty_raw.runs` resolves in the lake as it does in the file. Raises `WarehouseUnavailable` (no password in
    it) when the catalog cannot be reached, `WarehouseMissing` when a reader finds no lake there yet."""
    from pipelines.errors import WarehouseMissing

    conn = duckdb.connect()
    try:
        if memory_limit:
            conn.execute(f"SET memory_limit = '{memory_limit}'")
        load_extensions(conn)
        for attempt in range(1, _INIT_ATTEMPTS + 1):
            try:
                conn.execute(config.attach_sql(read_only=read_only))
                break
            except duckdb.Error as exc:
                text = redact(str(exc))
                if read_only and _no_lake_yet(text):
                    raise WarehouseMissing(f"{config.describe()} has no lake yet: load it first with `loyalty-etl "
                                           "run`") from None
                if not read_only and _init_race(text) and attempt < _INIT_ATTEMPTS:
                    time.sleep(0.2 * attempt)
                    continue
                raise WarehouseUnavailable(f"cannot open {config.describe()}{what}: {text}") from None
        conn.execute(f'USE "{config.name}"')
        return conn
    except BaseException:
        conn.close()
        raise


# Writers that ATTACH a lake not created yet at the same moment (the shards of a first night) race to create its
# catalog: the losers' ATTACH fails on PostgreSQL's unique names ("duplicate key value violates unique constraint",
# "already exists"); attached again, they find the lake the winner created.
_INIT_ATTEMPTS = 5


def _init_race(message: str) -> bool:
    text = message.lower()
    return "failed to initialize ducklake" in text and ("duplicate key" in text or "already exists" in text)


def _no_lake_yet(message: str) -> bool:
    # a READ_ONLY attach may not create the catalog tables: "Existing DuckLake at metadata catalog ... does not
    # exist - and creating a new DuckLake is explicitly disabled"
    return "creating a new ducklake is explicitly disabled" in message.lower()


def exists(config: LakeConfig) -> bool:
    """Whether the catalog database holds this lake's catalog tables (DuckLake creates them on the first
    writable ATTACH)."""
    with catalog_session(config) as pg:
        row = pg.execute("SELECT to_regclass(%s) IS NOT NULL",
                         [f'"{config.metadata_schema}".ducklake_metadata']).fetchone()
    return bool(row and row[0])


# ---------------------------------------------------------------------------------------------- the catalog database
def catalog_session(config: LakeConfig, application_name: str = "loyalty-etl") -> Any:
    """A psycopg autocommit session on the catalog database; `WarehouseUnavailable` (no password) when it cannot be
    reached. TCP keepalives so the server notices a vanished client (a machine that died) within about a minute."""
    import psycopg

    c = config.catalog
    try:
        return psycopg.connect(
            host=c.host or "localhost", port=c.port or 5432, dbname=c.database, user=c.username,
            password=c.password, autocommit=True, connect_timeout=10, application_name=application_name[:63],
            keepalives=1, keepalives_idle=30, keepalives_interval=10, keepalives_count=3,
            **{k: str(v) for k, v in (c.query or {}).items()})
    except psycopg.Error as exc:
        raise WarehouseUnavailable(f"cannot reach the catalog of {config.describe()}: "
                                   f"{redact(str(exc)).strip()}") from None


class AdvisoryLock:
    """The run lock of a lake: `pg_try_advisory_lock(key(scope))` on a session of its own, held until `release()`
    (or until the process dies: PostgreSQL ends the session and frees the lock). A second holder is refused at once
    with `RunLocked`, naming who holds it (the holder's application_name: command, scope, host, pid, start)."""

    def __init__(self, config: LakeConfig, scope: str = "run") -> None:
        self.config = config
        self.scope = scope
        self.key = config.lock_key(scope)
        self._session: Any = None

    def acquire(self) -> "AdvisoryLock":
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        label = f"loyalty-etl {self.scope} pid {os.getpid()} on {socket.gethostname()} since {started}"
        session = catalog_session(self.config, label)
        try:
            (ok,) = session.execute("SELECT pg_try_advisory_lock(%s)", [self.key]).fetchone()
            if not ok:
                holder = self._holder(session)
                raise RunLocked(
                    f"another run is using this warehouse ({self.config.describe()}, lock {self.scope!r}; held by "
                    f"{holder or 'another session'}). Wait for it to finish; this run did nothing.")
        except BaseException:
            session.close()
            raise
        self._session = session
        return self

    def _holder(self, session: Any) -> str | None:
        # a bigint key is stored as classid = high 32 bits, objid = low 32 bits (objsubid 1)
        hi, lo = (self.key >> 32) & 0xFFFFFFFF, self.key & 0xFFFFFFFF
        row = session.execute(
            "SELECT a.application_name, a.client_addr::text FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.classid::bigint = %s AND l.objid::bigint = %s "
            "AND l.objsubid = 1 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            [hi, lo]).fetchone()
        if not row:
            return None
        return row[0] + (f" from {row[1]}" if row[1] else "")

    @property
    def held(self) -> bool:
        return self._session is not None and not self._session.closed

    def release(self) -> None:
        if self._session is not None:
            try:
                if not self._session.closed:
                    self._session.execute("SELECT pg_advisory_unlock(%s)", [self.key])
            except Exception as exc:  # noqa: BLE001 - closing the session frees the lock anyway
                log.warning("could not unlock %s: %s", self.scope, redact(str(exc)))
            finally:
                self._session.close()
                self._session = None

    def __enter__(self) -> "AdvisoryLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
