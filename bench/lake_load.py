"""The lake's load step: dlt's own ducklake destination (a new in-memory DuckDB per SQL client, each loading the
extensions and attaching the lake) against `pipelines/lake_destination.py` (every client a cursor of the run's one
lake connection, staging in memory). Same rows, same machine, one process after the other, on a throwaway
PostgreSQL (pipelines/localpg.py) with a local directory as the lake's storage:

    python -m bench.lake_load [--rounds 3] [--rows 1000] [--tables 5]

Prints the seconds of each round's `pipeline.load()` per variant and the ratio of the medians."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def _rounds(variant: str, pg_url: str, work: Path, rounds: int, rows: int, tables: int) -> list[float]:
    import dlt
    from dlt.destinations.impl.ducklake.configuration import DuckLakeCredentials

    from pipelines import lake
    from pipelines.lake_destination import lake_destination

    credentials = DuckLakeCredentials(variant, catalog=pg_url, storage=(work / variant).as_uri())
    config = lake.LakeConfig(credentials=credentials, name=variant, metadata_schema=variant,
                             storage_url=str(work / variant))
    conn = lake.connect(config)
    lake.install_extensions()
    dest = (lake_destination(credentials, conn) if variant == "on_connection"
            else dlt.destinations.ducklake(credentials=credentials))
    pipeline = dlt.pipeline(f"bench_{variant}", pipelines_dir=str(work / "p"), destination=dest,
                            dataset_name="loyalty_raw")
    out = []
    for r in range(rounds):
        data = [{"id": i, "v": f"r{r}"} for i in range(rows)]
        resources = [dlt.resource(data, name=f"t{k}", write_disposition="merge", primary_key="id")
                     for k in range(tables)]
        pipeline.extract(dlt.source(name="s", max_table_nesting=0)(lambda: resources)(), loader_file_format="parquet")
        pipeline.normalize()
        started = time.monotonic()
        pipeline.load(raise_on_failed_jobs=True)
        out.append(time.monotonic() - started)
        assert conn.execute("SELECT count(*), max(v) FROM loyalty_raw.t0").fetchall() == [(rows, f"r{r}")]
    conn.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rows", type=int, default=1000)
    p.add_argument("--tables", type=int, default=5)
    args = p.parse_args()
    from pipelines.localpg import LocalPostgres

    with tempfile.TemporaryDirectory(prefix="lake-load-") as tmp, LocalPostgres(Path(tmp) / "pg") as pg:
        seconds = {v: _rounds(v, pg.url, Path(tmp), args.rounds, args.rows, args.tables)
                   for v in ("dlt_own", "on_connection")}
    for variant, values in seconds.items():
        print(f"{variant:14s} load s per round: {', '.join(f'{s:.2f}' for s in values)} "
              f"(median {statistics.median(values):.2f})")
    print(f"median ratio dlt_own / on_connection: "
          f"{statistics.median(seconds['dlt_own']) / statistics.median(seconds['on_connection']):.1f}")


if __name__ == "__main__":
    main()
