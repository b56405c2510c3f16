"""The customer list of a source: a CSV with a `customer_id` column, or `sql: SELECT ...` run on the warehouse.
Blank and duplicate ids are skipped (first occurrence kept) and reported; order is kept."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from pipelines.config import ConfigError
from pipelines.state import Issue


@dataclass
class CustomerList:
    ids: list[str]
    blank: int = 0
    duplicates: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return self.blank + len(self.duplicates)

    def issues(self, source: str) -> list[Issue]:
        out = []
        if self.blank:
            out.append(Issue(source, None, "blank_customer_id",
                             f"{self.blank} blank customer id(s) in the customer list were skipped"))
        for cid in self.duplicates[:1000]:
            out.append(Issue(source, cid, "duplicate_customer_id",
                             "customer id listed more than once; loaded once"))
        if len(self.duplicates) > 1000:
            out.append(Issue(source, None, "duplicate_customer_id",
                             f"{len(self.duplicates) - 1000} more duplicate customer ids skipped"))
        return out


def dedupe(raw: list[object]) -> CustomerList:
    seen: set[str] = set()
    ids: list[str] = []
    result = CustomerList(ids=ids)
    for value in raw:
        cid = "" if value is None else str(value).strip()
        if not cid:
            result.blank += 1
        elif cid in seen:
            result.duplicates.append(cid)
        else:
            seen.add(cid)
            ids.append(cid)
    return result


def load_customers(spec: str, conn: duckdb.DuckDBPyConnection | None = None) -> CustomerList:
    """`spec` is a CSV path (relative to the working directory) or `sql: <query>` whose first column is the id."""
    spec = spec.strip()
    if spec.lower().startswith("sql:"):
        if conn is None:
            raise ConfigError("a `sql:` customer list needs the warehouse connection")
        query = spec[4:].strip()
        try:
            rows = conn.execute(query).fetchall()
        except duckdb.Error as exc:
            raise ConfigError(f"customer query failed: {exc}") from None
        return dedupe([r[0] for r in rows])
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(f"customer list {path} not found: a CSV with a customer_id column, or `sql: SELECT ...`")
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "customer_id" not in [f.strip() for f in reader.fieldnames]:
            raise ConfigError(f"customer list {path} has no customer_id column (columns: {reader.fieldnames})")
        column = next(f for f in reader.fieldnames if f.strip() == "customer_id")
        return dedupe([row.get(column) for row in reader])
