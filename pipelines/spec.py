"""What a source is to the engine: one `SourceSpec`, exported by the source's package as `SPEC` and listed in the
registry (`pipelines/registry.py`). The runner, the worker processes, the settings, the CLI, the demo and the
sandbox read a source only through its spec, so a new source is its own folder plus one registry line
(docs/extending.md).

Imports nothing from the project: every source package imports this module, and this module none of them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generator, Iterable, Mapping, Protocol, Sequence

Tables = list[tuple[str, Any]]                 # (table name, pyarrow.Table)
ApiIssue = tuple[str, str, "str | None"]       # (code, message, detail): something the API itself reported


class SourceApi(Protocol):
    """A source's API client, one per process (its login and rate limiter are shared across processes through the
    `token_slot` given to the factory)."""

    def check(self) -> None:
        """Log in once, so wrong credentials fail the run up front (raise `errors.SourceUnavailable`)."""

    def close(self) -> None: ...

    def customer_steps(self, customer_id: str, window: Any) -> Generator[Any, Any, tuple[list[Any], Sequence[ApiIssue]]]:
        """The request steps (`pipelines/http.py`) that fetch every record of `customer_id` for `window`
        (`windows.Window`), returning (records, issues the API reported). Raise `errors.CustomerFailed` for a
        customer that cannot be loaded this time."""

    # Optional (`pipelines/changes.py` asks with hasattr; docs/change-discovery.md):
    # - `sync_roster(conn, schema, lookback, run_id)` -> an object with `ids`, `new`, `requests`, `error`: the
    #   customer list from the API (`customers = "api"`);
    # - `discover(conn, schema, window)` -> a change discovery with `requests`, `errors`, `complete`, `tables()`
    #   (raw tables to load: (table, rows, dlt hints)), `named(windows, last_success)` (the customers to load) and
    #   optionally `commit(conn)` (called after the run's loads committed): `selection = "changed"`, which also reads
    #   the client's `timezone` (the zone whose date is "the night" for the rolling sweep); the discovery may also
    #   offer `issues` (`state.Issue`s for sync_issues, and warnings that alert) and `listed(ids, conn)` (the customer
    #   list with the customers it learnt of, e.g. Capillary's customerAdded);
    # - `observe(conn, schema)` -> the same kind of object, costing no API request, for `all` mode: the discovery's
    #   bookkeeping that must follow every run (Capillary ingests its events and marks them used). Called only when
    #   the spec says `observe_in_all_mode`.


class RecordBatch(Protocol):
    """Records of many customers on their way to Arrow tables (`new_batch` makes one per `batch_rows` rows)."""

    def add(self, customer_id: str, window: Any, records: list[Any]) -> Any: ...

    def __len__(self) -> int:
        """Rows so far: the shared producer hands the batch over once this reaches `batch_rows`."""

    def build(self) -> tuple[Tables, list[Any]]:
        """The Arrow tables (table name, table) and the `state.Issue`s found while building them."""


@dataclass(frozen=True)
class SourceSpec:
    """One source: everything the engine needs to know about it.

    - `name`: the `--source` value, the key of its settings, state rows, report and `source_system` in the marts.
    - `make_api(settings, stats, token_slot)`: its API client (`SourceApi`) from its resolved `configspec`.
    - `new_batch(api, job)`: an empty `RecordBatch` for an `extraction.ExtractJob`: the producer of Arrow tables
      (the fetch-and-batch loop around it is shared: `extraction.produce`).
    - `table_hints(table)`: dlt hints of each table it yields (`write_disposition`, `primary_key`, `columns`);
      columns marked `"nullable": False` are also made non-nullable in the Arrow schema.
    - `resource_name`: the dlt resource that yields its tables.
    - `source`: its `@dlt.source` function (the entry point the runner calls, usable on its own with any dlt
      destination).
    - `configspec`: the typed dlt `@configspec` of its section `[sources.<name>]`, a subclass of
      `config.SourceConfiguration` (the keys every source has) with its own keys and `credentials`; the resolved
      instance is what `make_api` gets.
    - `observe_in_all_mode`: its API client has `observe(conn, schema)` (see `SourceApi`), which the engine calls in
      `all` mode (and with `--all`) too, so e.g. received events are ingested and used whatever the selection.
    - `sandbox`: "module:attribute" of its part of the local sandbox (`pipelines/sandbox/service.py`), imported only
      by the sandbox; None when it has none.
    """

    name: str
    make_api: Callable[[Any, Any, Any], SourceApi]
    new_batch: Callable[[Any, Any], RecordBatch]
    table_hints: Callable[[str], Mapping[str, Any]]
    resource_name: str
    source: Callable[..., Any]
    configspec: type
    sandbox: str | None = None
    observe_in_all_mode: bool = False

    @property
    def section(self) -> str:
        """Its config section: `[sources.<name>]` in .dlt/*.toml, `SOURCES__<NAME>__...` in the environment."""
        return f"sources.{self.name}"


def required_columns(hints: Mapping[str, Any]) -> list[str]:
    """The columns `hints` declares non-nullable."""
    columns: Iterable[tuple[str, Any]] = (hints.get("columns") or {}).items()
    return [name for name, col in columns if col.get("nullable") is False]
