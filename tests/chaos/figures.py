"""Summarise the figures the reliability tests record (one JSON line per test) as Markdown for docs/reliability.md.

    LOYALTY_RELIABILITY_FIGURES=/tmp/fig.jsonl .venv/bin/python -m pytest -m chaos tests/test_reliability*.py
    .venv/bin/python tests/chaos/figures.py /tmp/fig.jsonl
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path


DETAILS = {
    "customers": "customers", "nights": "nights", "requests": "requests", "failed_first_run": "failed in run 1",
    "issues_by_code": "issues", "bad_time_rows": "broken-time rows", "reader_reads_ok": "reads ok",
    "reader_busy": "reads busy", "status_ok": "status ok", "status_busy": "status busy (75)", "refused": "refused",
    "changed_values": "values retyped", "files_searched": "files searched", "bytes_searched": "bytes searched",
    "leaks": "leaks", "kill_at": "killed at", "done_at_kill": "customers done at the kill",
    "failed_commits_retries_default": "failed commits with 10 retries",
    "failed_commits_retries_100": "with 100 retries", "seconds_retries_default": "seconds (10 retries)",
    "seconds_retries_100": "seconds (100 retries)",
}


def _details(f: dict) -> str:
    parts = []
    for key, label in DETAILS.items():
        if key in f:
            value = f[key]
            if isinstance(value, dict):
                value = ", ".join(f"{k} {v}" for k, v in sorted(value.items()))
            elif isinstance(value, int):
                value = f"{value:,}"
            parts.append(f"{label}: {value}")
    return "; ".join(parts)


def summarise(lines: list[dict]) -> str:
    faults: Counter[str] = Counter()
    crashes: Counter[str] = Counter()
    total = Counter()
    rows = []
    for f in lines:
        faults.update(f.get("faults") or {})
        crashes.update(f.get("by_kind") or {})
        for key in ("runs", "crashes", "rows_compared", "mismatches", "requests"):
            total[key] += int(f.get(key) or 0)
        rows.append(f"| {f['test']} | {f.get('seed', '')} | {f.get('runs', '')} | {f.get('crashes', '')} | "
                    f"{f.get('rows_compared', 0):,} | {f.get('mismatches', '')} | {_details(f)} |")
    out = ["| test | seed | runs | crashes | rows compared | mismatches | details |", "|---|---|---|---|---|---|---|",
           *rows, f"| **total** | | **{total['runs']}** | **{total['crashes']}** | **{total['rows_compared']:,}** | "
           f"**{total['mismatches']}** | |", ""]
    if faults:
        out += ["Faults injected by the sandbox, by kind:", "", "| kind | count |", "|---|---|"]
        out += [f"| {k} | {v:,} |" for k, v in sorted(faults.items())]
        out.append("")
    if crashes:
        out += ["Crashes (SIGKILL) by where they hit:", "", "| where | count |", "|---|---|"]
        out += [f"| {k} | {v} |" for k, v in sorted(crashes.items())]
        out.append("")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    lines = [json.loads(x) for x in Path(argv[0]).read_text().splitlines() if x.strip()]
    print(summarise(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
