"""The sandbox in its own process, driven by bench.harness.SandboxProcess over stdin/stdout (one JSON per line).

Kept out of the harness process so the sandbox's CPU time is measured apart from the variant under test; on this
2-core machine it still competes with the client for the cores, which the results say.
"""

from __future__ import annotations

import json
import sys
import traceback
from typing import Any

from pipelines.sandbox import FaultConfig, Sandbox, SandboxConfig


def _counts(sb: Sandbox, limit: int | None, now: Any) -> dict[str, int]:
    sb.list_customers(limit)
    truth = sb.truth(now)
    cc = truth.carecloud_point_history
    cap = truth.capillary_customer_transfers
    return {
        "carecloud_point_history": cc.num_rows,
        "capillary_customer_transfers": cap.num_rows,
        "carecloud_customers_with_records": len(set(cc.column("customer_id").to_pylist())) if cc.num_rows else 0,
    }


def main() -> int:
    spec = json.loads(sys.argv[1])
    sb = Sandbox(SandboxConfig(**spec["config"]), FaultConfig(**spec.get("faults", {}))).start()
    out = sys.stdout

    def say(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj, default=str) + "\n")
        out.flush()

    say({"url": sb.url, "carecloud_base_url": sb.carecloud_base_url, "capillary_base_url": sb.capillary_base_url})
    for line in sys.stdin:
        msg = json.loads(line)
        cmd = msg.pop("cmd")
        try:
            if cmd == "stop":
                say({"result": None})
                break
            if cmd == "stats":
                result: Any = sb.stats()
            elif cmd == "set_now":
                sb.set_now(msg["instant"])
                result = None
            elif cmd == "advance":
                sb.advance(float(msg["seconds"]))
                result = None
            elif cmd == "faults":
                # change fault settings while serving (e.g. the rate limit, for a run after an unlimited one)
                sb.update_faults(**msg["changes"])
                result = None
            elif cmd == "now":
                result = sb.now()
            elif cmd == "env":
                # writes the customer files (first `limit` customers) beside the warehouse file
                result = sb.env(msg["warehouse"], limit=msg.get("limit"))
            elif cmd == "truth_counts":
                result = _counts(sb, msg.get("limit"), msg.get("now"))
            elif cmd == "changed_customers":
                # customers whose visible CareCloud history differs between two instants
                sb.list_customers(msg.get("limit"))
                a = sb.truth(msg["before"]).carecloud_point_history
                b = sb.truth(msg["after"]).carecloud_point_history
                import collections

                ca = collections.Counter(a.column("customer_id").to_pylist())
                cb = collections.Counter(b.column("customer_id").to_pylist())
                result = {"customers_changed": sum(1 for c, n in cb.items() if ca.get(c) != n),
                          "new_records": b.num_rows - a.num_rows}
            else:
                raise ValueError(f"unknown command {cmd!r}")
            say({"result": result})
        except Exception as exc:  # report to the harness, keep serving
            say({"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()})
    sb.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
