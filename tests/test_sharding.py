"""The stable customer hash (pipelines/sharding.py, TEAM contract 4). Its values are pinned here, because a changed
hash silently moves customers to another credential (another rate budget, another login) and to another shard (whose
per-customer state then lacks them)."""

from __future__ import annotations

import os
import subprocess
import sys

from pipelines.sharding import bucket

# Written down once from the contract's definition (blake2b, digest_size=8, big-endian, mod n). Never regenerate
# them from bucket() itself: a failure here means the hash changed, which moves customers.
PINNED = {
    "C0000001": (10587600178981419516, [0, 0, 0, 0, 6]),
    "C0000002": (10601410629914850686, [0, 0, 2, 2, 3]),
    "42": (6319743179241711738, [0, 0, 0, 2, 1]),
    "ÿ-ü": (14109240435505662722, [0, 0, 2, 2, 2]),
}
MODULI = (1, 2, 3, 4, 7)


def test_bucket_pinned_values() -> None:
    for customer_id, (digest, buckets) in PINNED.items():
        assert [bucket(customer_id, n) for n in MODULI] == buckets, customer_id
        assert bucket(customer_id, 2**64) == digest, customer_id


def test_bucket_same_in_other_processes_with_other_hash_seeds() -> None:
    code = "from pipelines.sharding import bucket; print([bucket(c, 7) for c in %r])" % sorted(PINNED)
    expected = str([bucket(c, 7) for c in sorted(PINNED)])
    for seed in ("0", "1", "12345"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip()
        assert out == expected, seed


def test_credential_of_a_shard_is_fixed_when_c_divides_n() -> None:
    ids = [f"cust-{i}" for i in range(2000)]
    for c, n in ((2, 4), (3, 6), (2, 2), (1, 4)):
        for k in range(n):
            credentials = {bucket(i, c) for i in ids if bucket(i, n) == k}
            assert credentials == {k % c}, (c, n, k)


def test_bucket_spreads_evenly() -> None:
    counts = [0] * 4
    for i in range(8000):
        counts[bucket(f"{i:026x}", 4)] += 1
    assert all(1800 < count < 2200 for count in counts), counts
