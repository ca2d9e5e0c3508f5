"""Many requests in flight at once: 200 concurrent requests, 64 MiB limit each.

Through `edgefn serve --workers 2`, each request holds 16 MiB of guest memory
for 300 ms, so all of them are inside a sandbox at the same time. Prints the
statuses (target: all 200), the wall time, and each worker's resident memory
before, at its peak and after.

    python bench/inflight.py [--requests 200]
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from edgefn_platform import build  # noqa: E402
from gateway_process import GatewayProcess, worker_pids  # noqa: E402

MANIFEST = """name = "bench"
[limits]
memory = "64MiB"
concurrency = 128
"""


# Room for every request of the burst: none waits for a sandbox thread or is shed.
SETTINGS = {
    "EDGEFN_BACKPRESSURE_GLOBAL_CONCURRENCY": "128",
    "EDGEFN_BACKPRESSURE_QUEUE_LENGTH": "256",
    "EDGEFN_BACKPRESSURE_QUEUE_WAIT": "10s",
}


def rss_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def workers(gateway: GatewayProcess) -> list[int]:
    """The gateway's worker processes (not multiprocessing's resource tracker)."""
    return [
        pid
        for pid in worker_pids(gateway)
        if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


def burst(url: str, requests: int) -> tuple[collections.Counter[int], float]:
    """`requests` GETs of `url` all sent at once; their statuses and the wall time."""
    limits = httpx.Limits(max_connections=requests)
    with httpx.Client(limits=limits, timeout=60) as client, ThreadPoolExecutor(requests) as pool:
        started = time.perf_counter()
        calls = [pool.submit(client.get, url) for _ in range(requests)]
        statuses = collections.Counter(call.result().status_code for call in calls)
        return statuses, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    result = build(HERE / "functions" / "bench")
    with tempfile.TemporaryDirectory() as temp:
        gateway = GatewayProcess(Path(temp) / "data", workers=2, extra_env=SETTINGS).start()
        try:
            gateway.admin(
                "POST",
                "/v1/functions",
                data={"manifest": MANIFEST},
                files={"component": ("bench.wasm", result.path.read_bytes())},
            ).raise_for_status()
            time.sleep(1.5)
            pids = workers(gateway)
            before = {pid: rss_mb(pid, "VmRSS") for pid in pids}
            counts, elapsed = burst(f"{gateway.public_url}/bench/hold?mb=16&ms=300", args.requests)
            peak = {pid: rss_mb(pid, "VmHWM") for pid in pids}
            time.sleep(2)
            after = {pid: rss_mb(pid, "VmRSS") for pid in pids}
        finally:
            gateway.stop()
    print(
        f"{args.requests} requests in flight, 64 MiB limit, 16 MiB held 300 ms each: "
        f"statuses {dict(counts)} in {elapsed:.2f} s"
    )
    for pid in pids:
        print(
            f"  worker {pid}: RSS {before[pid]:.0f} MB before, peak {peak[pid]:.0f} MB, "
            f"{after[pid]:.0f} MB after"
        )
    ok = counts.get(200, 0) == args.requests
    print(f"  {'ok' if ok else 'FAILED'}: {counts.get(200, 0)}/{args.requests} answered 200")


if __name__ == "__main__":
    main()
