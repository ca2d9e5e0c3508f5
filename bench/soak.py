"""Soak: steady mixed traffic for minutes, healthy and hostile functions together.

Through `edgefn serve --workers 2`: hello, image_resize, watermark and the
hostile test fixture, at a fixed rate (open loop: requests start on schedule
whether or not earlier ones finished). Checks that the healthy functions never
see an unexpected status and that each worker's resident memory at the end is
within 10 % of its value after warm-up (no leak). Prints requests, statuses by
function and code, p50/p99 per function, and RSS over time; exits 1 on failure.

    python bench/soak.py [--seconds 300] [--rate 40] [--warmup 30] [--postgres]
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
from gateway_process import GatewayProcess, cli, worker_pids, worker_rss  # noqa: E402
from pg_cluster import Cluster  # noqa: E402

# (function, path, statuses that are expected). Round-robin, so each appears in
# the same proportion; healthy functions must only ever answer 200.
HEALTHY = {"hello", "image_resize", "watermark"}
MIX = [
    ("hello", "/hello/", {200}),
    ("hello", "/hello/hello/soak", {200}),
    ("image_resize", "/image_resize/sample.jpg?w=320&format=webp", {200}),
    ("hello", "/hello/", {200}),
    ("watermark", "/watermark/sample.jpg?text=soak&format=jpeg", {200}),
    ("hostile", "/hostile/loop", {503, 504}),
    ("hello", "/hello/", {200}),
    ("hostile", "/hostile/alloc", {503, 504}),
    ("hostile", "/hostile/crash", {502, 503}),
    ("hostile", "/hostile/raise", {500, 503}),
    ("hostile", "/hostile/big?size=100000000", {502, 503}),
    ("hostile", "/hostile/log-flood?lines=20000", {200, 503}),
    ("hostile", "/hostile/sleep?seconds=30", {504, 503}),
    ("hostile", "/hostile/exit-hard", {500, 503}),
    ("hostile", "/hostile/counter", {200, 503}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--rate", type=float, default=40, help="requests per second")
    parser.add_argument("--warmup", type=float, default=30)
    parser.add_argument(
        "--postgres", action="store_true", help="registry in a throwaway PostgreSQL server"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp, registry(args.postgres) as url:
        gateway = GatewayProcess(Path(temp) / "data", workers=2, database_url=url).start()
        try:
            for directory in ("functions/hello", "functions/image_resize", "functions/watermark",
                              "tests/functions/hostile"):  # fmt: skip
                result = cli(gateway, "deploy", str(ROOT / directory))
                assert result.exit_code == 0, result.output
            time.sleep(1)
            ok = soak(gateway, args.seconds, args.rate, args.warmup)
        finally:
            gateway.stop()
    sys.exit(0 if ok else 1)


@contextmanager
def registry(postgres: bool) -> Iterator[str | None]:
    """The database URL of a throwaway PostgreSQL server, or None: the embedded registry."""
    if not postgres:
        yield None
        return
    cluster = Cluster().init()
    cluster.start()
    try:
        yield cluster.database()
    finally:
        cluster.remove()


def soak(gateway: GatewayProcess, seconds: float, rate: float, warmup: float) -> bool:
    local = threading.local()
    statuses: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    latencies: dict[str, list[float]] = collections.defaultdict(list)
    unexpected: list[str] = []
    lock = threading.Lock()

    def request(function: str, path: str, expected: set[int]) -> None:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=gateway.public_url, timeout=60)
        started = time.perf_counter()
        try:
            status = local.client.get(path).status_code
        except httpx.HTTPError:
            status = 0
        took = time.perf_counter() - started
        with lock:
            statuses[function][status] += 1
            latencies[function].append(took)
            if status not in expected:
                unexpected.append(f"{path}: {status}")

    pids = worker_pids(gateway)
    samples: list[tuple[float, list[int]]] = []
    start = time.monotonic()
    next_sample = start
    with ThreadPoolExecutor(128) as pool:
        for i in range(int(seconds * rate)):
            due = start + i / rate
            while (now := time.monotonic()) < due:
                time.sleep(min(due - now, 0.01))
            if now >= next_sample:
                samples.append((now - start, worker_rss(gateway)))
                next_sample += 5
            pool.submit(request, *MIX[i % len(MIX)])
    samples.append((time.monotonic() - start, worker_rss(gateway)))

    print(f"\n{sum(sum(c.values()) for c in statuses.values())} requests in {seconds:.0f} s "
          f"at {rate:g}/s, 2 workers")  # fmt: skip
    print(f"{'function':14} {'statuses':44} {'p50 ms':>8} {'p99 ms':>8}")
    for function in sorted(statuses):
        times = sorted(latencies[function])
        p50, p99 = statistics.median(times), statistics.quantiles(times, n=100)[98]
        counts = ", ".join(f"{code}: {n}" for code, n in sorted(statuses[function].items()))
        print(f"{function:14} {counts:44} {p50 * 1000:8.1f} {p99 * 1000:8.1f}")
    print("\nRSS over time (MB per worker):")
    for at, sizes in samples[::2]:
        print(f"  {at:6.0f} s  " + "  ".join(f"{size / 2**20:7.1f}" for size in sizes))

    ok = True
    healthy_bad = [u for u in unexpected if u.split("/")[1].split("?")[0] in HEALTHY]
    print(f"\nunexpected statuses: {len(unexpected)} ({len(healthy_bad)} from healthy functions)")
    for line in unexpected[:20]:
        print("  " + line)
    if unexpected:
        ok = False
    if worker_pids(gateway) != pids:
        print("a worker was replaced during the soak")
        ok = False
    # A worker's RSS swings by a tenth or more with the pool slots its instances
    # happen to use, so each end of the run is the median of a window of samples.
    window = min(60.0, (seconds - warmup) / 3)
    after_warmup = [s for at, s in samples if warmup <= at < warmup + window]
    at_end = [s for at, s in samples if at >= samples[-1][0] - window]
    for worker in range(len(pids)):
        before = statistics.median(s[worker] for s in after_warmup)
        after = statistics.median(s[worker] for s in at_end)
        change = (after - before) / before
        verdict = "ok" if abs(change) <= 0.10 else "NOT MET"
        print(f"worker {worker}: median {before / 2**20:.1f} MB in the {window:.0f} s after "
              f"warm-up, {after / 2**20:.1f} MB in the last {window:.0f} s ({change:+.1%}, "
              f"target within 10 %): {verdict}")  # fmt: skip
        ok = ok and verdict == "ok"
    print("soak:", "passed" if ok else "FAILED")
    return ok


if __name__ == "__main__":
    main()
