"""HTTP clients for the gateway's outbound fetches, measured on loopback.

urllib3 (what the host uses: it connects to the address the policy checked,
with `server_hostname`/`assert_hostname` for TLS, ignores proxy variables and
takes the system CA store from `ssl.create_default_context()`), httpx and
niquests, each against the same local origin (tests/origin_server.py, in a
process of its own so that only the client's CPU is counted):

- 2,000 small GETs (/big?bytes=100) on kept-alive connections, from 1 thread
  and from 2 threads sharing one client (a gateway worker's pool);
- a 3 MB body (/big?bytes=3000000) fetched 200 times, 1 thread.

Prints per client and case: ms per request p50/p99, CPU ms per request (this
process: user + system, all threads) and requests/s.

    python bench/outbound_clients.py [--small 2000] [--large 200]

niquests is not a dependency of edgefn, and must not be installed beside it: it
depends on urllib3-future, which installs itself as the `urllib3` package and
replaces the real one (the gateway's client). Measure it from a venv of its own:

    python -m venv /tmp/niquests && /tmp/niquests/bin/pip install niquests "pillow==13.0.*"
    /tmp/niquests/bin/python bench/outbound_clients.py --clients niquests

A client that is not installed is skipped with a note; so is urllib3 when the
`urllib3` found is urllib3-future.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORIGIN = HERE.parent / "tests" / "origin_server.py"
SMALL = "/big?bytes=100"
LARGE_BYTES = 3_000_000
LARGE = f"/big?bytes={LARGE_BYTES}"

# A client: made once for a case (host, port, pool size); returns get(path) -> body.
Get = Callable[[str], bytes]


def urllib3_client(host: str, port: int, size: int) -> Get:
    import urllib3

    if hasattr(urllib3, "AsyncPoolManager"):  # urllib3-future, not urllib3
        raise ImportError("urllib3 is urllib3-future here (niquests installed?)")

    # As the host pins it: a pool to the checked address, not a PoolManager
    # reading the URL (nor the environment's proxies).
    pool = urllib3.HTTPConnectionPool(host, port, maxsize=size, block=True, retries=False)

    def get(path: str) -> bytes:
        response = pool.request("GET", path, redirect=False)
        return response.data

    return get


def httpx_client(host: str, port: int, size: int) -> Get:
    import httpx

    client = httpx.Client(
        base_url=f"http://{host}:{port}",
        trust_env=False,
        limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
    )

    def get(path: str) -> bytes:
        return client.get(path).content

    return get


def niquests_client(host: str, port: int, size: int) -> Get:
    import niquests

    session = niquests.Session(pool_connections=1, pool_maxsize=size)
    session.trust_env = False
    base = f"http://{host}:{port}"

    def get(path: str) -> bytes:
        response = session.get(base + path, allow_redirects=False)
        return response.content or b""

    return get


CLIENTS: dict[str, Callable[[str, int, int], Get]] = {
    "urllib3": urllib3_client,
    "httpx": httpx_client,
    "niquests": niquests_client,
}


def run(
    get: Get, path: str, count: int, threads: int, size: int
) -> tuple[list[float], float, float]:
    """Latencies in ms, CPU seconds of this process and wall-clock seconds for
    `count` GETs of `path` from `threads` threads (5 warm-up requests per thread
    first, not counted)."""

    def worker(n: int) -> list[float]:
        times = []
        for _ in range(n):
            started = time.perf_counter()
            body = get(path)
            times.append((time.perf_counter() - started) * 1000)
            if len(body) != size:
                raise RuntimeError(f"{path}: {len(body)} bytes, expected {size}")
        return times

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(worker, [5] * threads))
        cpu, wall = time.process_time(), time.perf_counter()
        runs = list(pool.map(worker, [count // threads] * threads))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return [t for times in runs for t in times], cpu, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--large", type=int, default=200)
    parser.add_argument("--clients", default=",".join(CLIENTS), help="comma-separated")
    args = parser.parse_args()
    cases = [
        (f"{args.small} x 100 B, 1 thread", SMALL, args.small, 1, 100),
        (f"{args.small} x 100 B, 2 threads", SMALL, args.small, 2, 100),
        (f"{args.large} x 3 MB, 1 thread", LARGE, args.large, 1, LARGE_BYTES),
    ]
    origin = subprocess.Popen(
        [sys.executable, str(ORIGIN)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert origin.stdout is not None
        line = origin.stdout.readline().decode().split()
        host, port = line[1].removeprefix("http://").rsplit(":", 1)
        print(
            f"{'client':9} {'case':26} {'p50 ms':>7} {'p99 ms':>7} {'CPU ms/req':>10} {'req/s':>7}"
        )
        for name in args.clients.split(","):
            make = CLIENTS[name]
            for case, path, count, threads, size in cases:
                try:
                    get = make(host, int(port), threads)
                except ImportError as error:
                    print(f"{name:9} skipped: {error}")
                    break
                times, cpu, elapsed = run(get, path, count, threads, size)
                q = statistics.quantiles(times, n=100)
                print(
                    f"{name:9} {case:26} {q[49]:7.3f} {q[98]:7.3f} "
                    f"{cpu / len(times) * 1000:10.3f} {len(times) / elapsed:7.0f}"
                )
    finally:
        assert origin.stdin is not None
        origin.stdin.close()
        origin.wait(10)


if __name__ == "__main__":
    main()
