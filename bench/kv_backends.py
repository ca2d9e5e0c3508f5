"""Latency of one key-value `get` and one `set` at the backend (`edgefn_platform.kv`,
no function, no gateway): p50/p99 over N calls each, on SQLite with
synchronous=NORMAL and FULL, and on a throwaway PostgreSQL (tests/pg_cluster.py,
fsync off like the tests' cluster: its figure is the round trips, not the disk).

    flock /tmp/edgefn-test.lock .venv/bin/python bench/kv_backends.py [N]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from edgefn_platform.kv import PostgresKeyValue, SQLiteKeyValue, SQLKeyValue  # noqa: E402
from edgefn_platform.registry import open_registry  # noqa: E402
from edgefn_runtime.capabilities.kv import StoreQuota  # noqa: E402
from pg_cluster import Cluster  # noqa: E402

QUOTA = StoreQuota(10**9, 10**6)
VALUE = b"x" * 100


def percentiles(samples: list[float]) -> str:
    cuts = statistics.quantiles(samples, n=100)
    return f"p50 {cuts[49] * 1e6:7.0f} µs  p99 {cuts[98] * 1e6:7.0f} µs"


def measure(label: str, kv: SQLKeyValue, count: int) -> None:
    sets, gets = [], []
    for i in range(count):
        key = f"key-{i % 500}"
        started = time.perf_counter()
        kv.set("bench", "default", key, VALUE, None, QUOTA, time.monotonic() + 10)
        sets.append(time.perf_counter() - started)
        started = time.perf_counter()
        kv.get("bench", "default", key, time.monotonic() + 10)
        gets.append(time.perf_counter() - started)
    print(f"{label:<28} set {percentiles(sets)}   get {percentiles(gets)}")


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    print(f"{count} sets and {count} gets of 100-byte values over 500 keys")
    for synchronous in ("NORMAL", "FULL"):
        with tempfile.TemporaryDirectory() as temp:
            open_registry(None, Path(temp)).close()
            kv = SQLiteKeyValue(Path(temp), synchronous=synchronous)
            measure(f"SQLite synchronous={synchronous}", kv, count)
            kv.close()
    cluster = Cluster()
    try:
        cluster.init().start()
        url = cluster.database()
        with tempfile.TemporaryDirectory() as temp:
            open_registry(url, Path(temp)).close()
            pg = PostgresKeyValue(url)
            measure("PostgreSQL (loopback)", pg, count)
            pg.close()
    finally:
        cluster.remove()


if __name__ == "__main__":
    main()
