"""`loyalty-etl merge`: the shards' raw rows into loyalty_raw in one step, then the marts (docs/shards.md)."""

from __future__ import annotations

import argparse

from pipelines.commands._common import add_no_models_option, fail, load

HELP = "after sharded runs (run --shard K/N): move every shard's rows into loyalty_raw, then build the marts"

DESCRIPTION = """\
Each `loyalty-etl run --shard K/N` loads its customers into its own raw dataset (loyalty_shard_<sources>_<K>of<N>),
so shards running at the same time never write the same table. This step, run once after the shards of a night,
moves every shard dataset's committed loads into loyalty_raw with the same deduplication an unsharded run applies
(merge keys; CareCloud's insert-only keys keep the first loaded row), then builds the dbt marts once.

It takes what landed: a shard that failed half way has its committed rounds merged and its other customers are
loaded by its next run. Running it with nothing to merge only builds the marts. Safe to repeat.
"""

EPILOG = """\
exit codes:
  0  merged (or nothing to merge) and the marts built
  2  merged, but a model or test failed
  1  the merge failed (nothing of it committed; the shards' rows wait for the next merge)

examples:
  loyalty-etl run --source carecloud --shard 1/2 && loyalty-etl run --source carecloud --shard 2/2
  loyalty-etl merge
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("merge", help=HELP, description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_no_models_option(p, "merge only; do not run dbt afterwards")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from pipelines.config import ConfigError

    try:
        settings, _ = load()
    except ConfigError as exc:
        return fail(exc)
    from pipelines.shard_merge import run_merge

    return run_merge(settings, models=not args.no_models).exit_code
