"""The one stable customer hash (TEAM contract 4): which credential of its source a customer is fetched with, and
which shard of a `--shard K/N` run holds it.

Python's hash() is salted per process (PYTHONHASHSEED), so it would move customers between credentials and shards
from one run, worker process or machine to the next; blake2b over the id's UTF-8 bytes gives the same number
everywhere. There is no salt on purpose: credential = bucket(id, C) and shard = bucket(id, N) share one hash, so when
C divides N every customer of shard K uses credential (K-1) mod C (h mod N mod C == h mod C) and one Airflow task per
shard sits in exactly one credential's pool.
"""

from __future__ import annotations

import hashlib


def bucket(customer_id: str, n: int) -> int:
    """0..n-1, stable across processes, machines and Python versions (not hash(): it is salted)."""
    return int.from_bytes(hashlib.blake2b(customer_id.encode(), digest_size=8).digest(), "big") % n
