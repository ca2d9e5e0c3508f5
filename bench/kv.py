"""Key-value store benchmark: what an operation costs a function, and what a
counter costs a request, through `edgefn serve --workers 2` on the embedded
SQLite registry (or PostgreSQL with --database-url).

1. Latency from inside a function (tests/functions/counter `/timing`, `reuse =
   true`): p50/p99 of `store.set` and `store.get` of a 100 B and a 1 MiB value,
   timed by the function around each call (the boundary, the host's checks and
   the database).
2. Requests/s of the counter (`/incr`: one `store.incr` of one key, every
   request contending for the same row) against the same function answering the
   same JSON without the store (`/plain`), same gateway, same run, wrk with
   --connections connections.

    python bench/kv.py [--seconds 10] [--connections 50] [--database-url URL]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from gateway import deploy, load_python, load_wrk  # noqa: E402

from edgefn_platform import build  # noqa: E402
from gateway_process import ROOT, GatewayProcess  # noqa: E402

COUNTER = ROOT / "tests" / "functions" / "counter"


def percentiles(seconds: list[float]) -> tuple[float, float]:
    """(p50, p99) in milliseconds."""
    cuts = statistics.quantiles(seconds, n=100)
    return cuts[49] * 1000, cuts[98] * 1000


def timed(gateway: GatewayProcess, size: int, count: int) -> dict[str, tuple[float, float]]:
    """p50/p99 of `count` sets and gets of `size` bytes, best of three calls
    (the first also warms the instance and the database's pages)."""
    runs = []
    for _ in range(3):
        response = httpx.get(
            f"{gateway.public_url}/counter/timing",
            params={"n": str(count), "size": str(size)},
            timeout=120,
        )
        response.raise_for_status()
        runs.append(response.json())
    return {
        op: min((percentiles(run[op]) for run in runs), key=lambda p: p[0]) for op in ("set", "get")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    load = load_wrk if shutil.which("wrk") else load_python
    manifest = "reuse = true\n" + (COUNTER / "edgefn.toml").read_text()
    # A request makes 2 * n operations (plus kv.open): room for the timing loops.
    manifest += '\n[limits]\nmax_kv_ops = 10000\ntimeout = "30s"\n'
    with tempfile.TemporaryDirectory() as temp:
        with GatewayProcess(
            Path(temp) / "data", workers=2, database_url=args.database_url
        ) as gateway:
            deploy(gateway, manifest, build(COUNTER).path.read_bytes())
            gateway.wait_serving("counter")
            small = timed(gateway, 100, 1000)
            large = timed(gateway, 1 << 20, 30)
            base = f"{gateway.public_url}/counter"
            httpx.get(f"{base}/incr?key=bench").raise_for_status()
            counter = load(f"{base}/incr?key=bench", args.seconds, args.connections)
            plain = load(f"{base}/plain", args.seconds, args.connections)
            total = httpx.get(f"{base}/incr?key=bench&by=0").json()["value"]
    backend = "PostgreSQL" if args.database_url else "SQLite (embedded)"
    print(f"backend: {backend}; load generator: {load.__name__}, {args.connections} connections")
    print(f"{'from the function':24} {'p50 ms':>8} {'p99 ms':>8}")
    for label, figures in (("100 B", small), ("1 MiB", large)):
        for op in ("set", "get"):
            p50, p99 = figures[op]
            print(f"{op + ' ' + label:24} {p50:8.3f} {p99:8.3f}")
    print(f"{'through the gateway':24} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for label, (rps, p50, p99, _) in (("counter (incr)", counter), ("same, no KV", plain)):
        print(f"{label:24} {rps:8.0f} {p50:8.2f} {p99:8.2f}")
    print(f"counter vs no KV: {counter[0] / plain[0]:.2f}x req/s; counter ended at {total}")


if __name__ == "__main__":
    main()
