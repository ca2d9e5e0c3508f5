"""The origin cache's hit path against a fetch from a loopback origin.

The outbound capability's host code, natively (no guest), one request after
another as the sandbox drives it: a fresh GET of the 600x400 JPEG original
(tests/origin_server.py's /cached, in a process of its own) answered from the
cache (`hit`), revalidated with a 304 (`revalidated`), and fetched every time
with `cache=False` (`origin`). Prints ms per fetch, p50/p99, per case.

    python bench/origin_cache.py [--fetches 2000] [--runs 3]
"""

from __future__ import annotations

import argparse
import ipaddress
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from edgefn_runtime import Limits, Request  # noqa: E402
from edgefn_runtime.cache import CacheConfig, HttpCache  # noqa: E402
from edgefn_runtime.capabilities import RequestContext  # noqa: E402
from edgefn_runtime.capabilities._base import CountedFuel  # noqa: E402
from edgefn_runtime.capabilities.outbound import (  # noqa: E402
    AllowedHosts,
    OutboundCapability,
    OutboundPolicy,
    Outgoing,
)

CASES = {
    "hit": ("public, max-age=600", True),
    "revalidated": ("no-cache", True),
    "origin": ("public, max-age=600", False),
}


def measure(base: str, case: str, fetches: int) -> list[float]:
    cc, use_cache = CASES[case]
    policy = OutboundPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),))
    capability = OutboundCapability(policy, HttpCache(CacheConfig(disk=0)))
    grants = {"outbound": AllowedHosts.parse([base]), "function": "bench"}
    url = f"{base}/cached?cc={quote(cc)}&etag=%22v1%22&image=/image.jpg"
    times = []
    for _ in range(fetches + 1):
        context = RequestContext(None, grants)
        context.begin(Request("GET"), Limits(), [capability])
        started = time.perf_counter()
        capability.fetch(context, CountedFuel(10**12), Outgoing("GET", url, cache=use_cache))
        times.append(time.perf_counter() - started)
    return times[1:]  # the first fills the cache and the connection pool


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fetches", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    server = subprocess.Popen(
        [sys.executable, str(HERE.parent / "tests" / "origin_server.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        base = server.stdout.readline().split()[1]
        for case in CASES:
            for run in range(args.runs):
                times = sorted(measure(base, case, args.fetches))
                p50 = statistics.median(times) * 1000
                p99 = times[int(len(times) * 0.99)] * 1000
                print(f"{case:12} run {run + 1}: p50 {p50:.3f} ms  p99 {p99:.3f} ms")
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(10)


if __name__ == "__main__":
    main()
