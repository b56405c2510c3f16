"""Summarise a py-spy speedscope profile of a run: where the time goes, by function and by category.

    python -m bench.run --only throughput --variants b --profile     # writes bench/out/full/b/pipeline.speedscope.json
    python -m bench.profile bench/out/full/b/pipeline.speedscope.json [--top 30]

Samples whose innermost frame is a blocking wait (socket read, lock/condition wait, thread-pool queue) are
counted as "waiting" and left out of the CPU shares, so the table reads as "share of the busy samples".
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path
from typing import Any

WAIT_FRAMES = {"readinto", "SocketIO.readinto", "Condition.wait", "Event.wait", "wait", "_worker", "do_poll",
               "poll_wait_for_socket", "select", "sleep", "Thread.join", "_wait_for_tstate_lock", "acquire",
               "Queue.get", "get", "Semaphore.acquire", "Lock.acquire", "recv_into", "_blocking_wait"}

# (category, predicate on (function name, file)) checked on the innermost frame first, then outwards
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("records -> Arrow (normalize.py, columns.py)", ("pipelines/carecloud/normalize.py", "pipelines/columns.py",
                                                     "pipelines/capillary/__init__.py")),
    ("HTTP client (urllib3, http.client, pipelines/http.py)", ("urllib3/", "http/client.py", "socket.py",
                                                               "pipelines/http.py", "email/", "ssl.py")),
    ("JSON parse (orjson)", ("orjson",)),
    ("time windows / pendulum", ("pendulum/", "pipelines/windows.py", "zoneinfo/")),
    ("dlt load (DuckDB)", ("dlt/load/", "dlt/destinations/", "duckdb")),
    ("dlt normalize", ("dlt/normalize/",)),
    ("dlt extract (+ parquet writing)", ("dlt/extract/", "dlt/common/storages/", "dlt/common/data_writers/",
                                         "pyarrow/")),
    ("thread pool / fan-out", ("pipelines/extraction.py", "concurrent/futures/", "threading.py")),
    ("bookkeeping (state.py)", ("pipelines/state.py",)),
    ("startup: imports, settings", ("<frozen importlib", "importlib/", "pipelines/config.py",
                                    "dlt/common/configuration/")),
]


def _short(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def summarise(path: Path, top: int = 30) -> dict[str, Any]:
    data = json.loads(path.read_text())
    frames = data["shared"]["frames"]
    names = [(f["name"], _short(f.get("file", ""))) for f in frames]
    self_t: collections.Counter = collections.Counter()
    incl_t: collections.Counter = collections.Counter()
    cats: collections.Counter = collections.Counter()
    busy = waiting = 0.0
    for prof in data["profiles"]:
        for stack, w in zip(prof["samples"], prof["weights"]):
            if not stack:
                continue
            leaf = names[stack[-1]]
            if leaf[0] in WAIT_FRAMES or leaf[0].rsplit(".", 1)[-1] in WAIT_FRAMES:
                waiting += w
                continue
            busy += w
            self_t[leaf] += w
            for key in {names[i] for i in stack}:
                incl_t[key] += w
            for i in reversed(stack):
                name, file = names[i]
                cat = next((c for c, pats in CATEGORIES if any(p in file or p in name for p in pats)), None)
                if cat:
                    cats[cat] += w
                    break
            else:
                cats["other"] += w
    pct = lambda v: round(100 * v / busy, 1) if busy else 0.0  # noqa: E731
    return {
        "busy_samples": busy, "waiting_samples": waiting,
        "categories": [(c, pct(v)) for c, v in cats.most_common()],
        "self": [(f"{n} ({f})", pct(v)) for (n, f), v in self_t.most_common(top)],
        "inclusive": [(f"{n} ({f})", pct(v)) for (n, f), v in incl_t.most_common(top)
                      if f.startswith("pipelines/")],
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("profile", type=Path)
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args()
    s = summarise(args.profile, args.top)
    print(f"busy samples {s['busy_samples']:.0f}, waiting samples {s['waiting_samples']:.0f}\n")
    print("share of busy samples by category (innermost matching frame):")
    for c, p in s["categories"]:
        print(f"  {p:5.1f} %  {c}")
    print("\nself time (innermost frame):")
    for n, p in s["self"]:
        print(f"  {p:5.1f} %  {n}")
    print("\ninclusive, project code:")
    for n, p in s["inclusive"]:
        print(f"  {p:5.1f} %  {n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
