"""`loyalty-etl run --shard K/N`: one shard of a night's customers (docs/shards.md).

A shard holds the customers whose stable hash falls in it (`sharding.bucket(id, N) == K - 1`), from every customer
list a source can have (CSV or `sql:` list, the API roster, customers a change discovery announced). What keeps
shards that run at the same time, on one machine or several, out of each other's way:

- its own dlt pipeline (name and working directory: `pipeline_name`), so no dlt state or load package is shared;
- its own raw dataset (`dataset`, e.g. `loyalty_shard_carecloud_2of4`): the shard merges its rows there with the
  sources' own dlt hints, a dataset no other writer touches; `loyalty-etl merge` (pipelines/shard_merge.py) later
  moves every shard dataset's committed loads into `loyalty_raw` in ONE serialized step, then the marts are built;
- bookkeeping rows only of its own customers (`_customer_sync_state` rows are per customer, so shards never write
  the same row) and its own change-discovery window (`discovery_key`), so a shard that fails reads its window
  again next night without holding the others back.

Nothing here runs for an unsharded run: `Shard` is None there and every name is the unsharded one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from pipelines.sharding import bucket

if TYPE_CHECKING:
    from pipelines.changes import Plan
    from pipelines.customers import CustomerList

DATASET_PREFIX = "loyalty_shard_"
_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


class ShardSpecError(ValueError):
    """A `--shard` value that is not K/N with 1 <= K <= N."""


@dataclass(frozen=True)
class Shard:
    """Shard `k` (1-based) of `n`, for the run's `sources` (sorted: the same shard of the same sources always has
    the same names, whatever order --source named them in)."""

    k: int
    n: int
    sources: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str, sources: Sequence[str] = ()) -> "Shard":
        m = _SPEC.match(text or "")
        if not m:
            raise ShardSpecError(f"--shard {text!r}: expected K/N, e.g. 2/4 (shard 2 of 4)")
        k, n = int(m.group(1)), int(m.group(2))
        if n < 1 or not 1 <= k <= n:
            raise ShardSpecError(f"--shard {text!r}: K must be 1..N and N at least 1 (shards are numbered from 1)")
        return cls(k, n, tuple(sorted(set(sources))))

    @property
    def label(self) -> str:
        return f"{self.k}/{self.n}"

    def holds(self, customer_id: str) -> bool:
        return bucket(customer_id, self.n) == self.k - 1

    def narrow(self, ids: Iterable[str]) -> list[str]:
        """The ids this shard holds, in their order."""
        return [c for c in ids if self.holds(c)]

    @property
    def _suffix(self) -> str:
        return f"{'_'.join(self.sources)}_{self.k}of{self.n}"

    @property
    def pipeline_name(self) -> str:
        """Its dlt pipeline, hence its working directory `<pipelines_dir>/<pipeline_name>`."""
        return f"loyalty_warehouse_shard_{self._suffix}"

    @property
    def dataset(self) -> str:
        """Its raw dataset (schema) in the warehouse, until `loyalty-etl merge` moves the rows to `loyalty_raw`."""
        return DATASET_PREFIX + self._suffix

    @property
    def lock_scope(self) -> str:
        """The run lock's scope (TEAM.md): shards of one night may run at once, the same shard twice may not."""
        return f"run:{'+'.join(self.sources)}:shard {self.label}"

    def discovery_key(self, source: str) -> str:
        """The `_discovery_state` key of this shard's change-discovery window."""
        return f"{source} shard {self.label}"


def narrow_list(listed: "CustomerList", shard: Shard) -> "CustomerList":
    """The shard's part of a customer list. Its bad lines are reported once per night, not once per shard: a
    duplicate by the shard that holds the id, the blank lines by shard 1."""
    from pipelines.customers import CustomerList

    return CustomerList(ids=shard.narrow(listed.ids), blank=listed.blank if shard.k == 1 else 0,
                        duplicates=shard.narrow(listed.duplicates))


def narrow_plan(plan: "Plan", shard: Shard, cfg: Any, full: bool) -> "Plan":
    """The shard's part of a source's plan: customers a change discovery announced (they join the list after the
    narrowing above) are kept only by their shard. A discovery with its own tenant-wide bookkeeping to commit (a
    `commit(conn)`, e.g. Capillary's events marked used) cannot be split: the first shard would mark every event
    used and the next shards would never see theirs; such a source runs `selection = "changed"` unsharded."""
    from pipelines.config import ConfigError

    if not full and cfg.selection == "changed" and hasattr(plan.discovery, "commit"):
        raise ConfigError(f"[sources.{cfg.name}] selection = \"changed\" cannot be sharded: its change discovery "
                          "marks what it used tenant-wide (events), which one shard would take from the others. "
                          "Run this source without --shard, or shard it with --all / selection = \"all\"")
    plan.tasks = [t for t in plan.tasks if shard.holds(t[0])]
    plan.listed = narrow_list(plan.listed, shard)
    return plan
