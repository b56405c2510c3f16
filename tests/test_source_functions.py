"""The `@dlt.source` functions are real entry points: a dlt user runs a source on its own, in a plain
`dlt.pipeline(...)` to dlt's own duckdb destination (no runner, no bookkeeping), and gets the sandbox's truth."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dlt
import pytest

from tests.chaos.compare import compare
from tests.helpers.cli import FAST
from pipelines.capillary import capillary_source
from pipelines.carecloud import carecloud_source

NOW = dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc)


def test_sources_run_in_a_plain_dlt_pipeline(sandbox_factory, monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    sb = sandbox_factory(customers=40)
    for key, value in {**FAST, **sb.env(tmp_path / "unused.duckdb")}.items():
        monkeypatch.setenv(key, value)
    warehouse = tmp_path / "plain.duckdb"
    pipeline = dlt.pipeline(pipeline_name="standalone", pipelines_dir=str(tmp_path / "dlt"),
                            destination=dlt.destinations.duckdb(str(warehouse)), dataset_name="loyalty_raw")

    info = pipeline.run(carecloud_source(customer_ids=sb.customer_ids("carecloud"), start="2023-01-01", end=NOW))
    assert not info.has_failed_jobs
    # the other source into the same dataset, its own settings from [sources.capillary] (here: environment)
    pipeline.run(capillary_source(customer_ids=sb.customer_ids("capillary"), start="2023-01-01", end=NOW))
    # again: the merge keys absorb a repeated load
    pipeline.run(carecloud_source(customer_ids=sb.customer_ids("carecloud"), start="2023-01-01", end=NOW))

    cmp = compare(warehouse, sb.truth(), until=NOW, ledger=False)
    assert cmp.ok, str(cmp)
    with pipeline.sql_client() as client:
        loaded = client.execute_sql("select count(*) from carecloud_point_history")[0][0]
    assert loaded > 500


def test_a_source_function_needs_customers() -> None:
    with pytest.raises(Exception, match="customer_ids"):
        list(carecloud_source())
