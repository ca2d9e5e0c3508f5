"""Streamed responses: the time to the first body byte and to the last, through
`edgefn serve` and from a FastAPI baseline in the same run, for a CSV export
made in ~60 KiB chunks (the bench function's `/export`, ~2.2 MiB by default),
streamed (`StreamingResponse`) and whole, and what a chunk costs (10,000 chunks
of a line each, streamed and whole). One request at a time, medians.
Issue 20's streaming lever gets a met / NOT MET line: a streamed body's first
byte leaves before its last is made (within a quarter of the whole time).

    python bench/streaming.py [--requests 10] [--rows 120000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from _targets import verdict  # noqa: E402
from baseline import start_baseline  # noqa: E402
from gateway import deploy  # noqa: E402

from edgefn_platform import build  # noqa: E402
from gateway_process import GatewayProcess  # noqa: E402

# Chunks of one CSV line each, for what a chunk costs.
SMALL_CHUNKS = 10_000


def timed(client: httpx.Client, url: str) -> tuple[float, float, int]:
    """Seconds to the first body byte and to the last, and the body's size."""
    started = time.perf_counter()
    first, size = 0.0, 0
    with client.stream("GET", url) as response:
        response.raise_for_status()
        for data in response.iter_raw():
            first = first or time.perf_counter() - started
            size += len(data)
    return first, time.perf_counter() - started, size


def measure(url: str, requests: int) -> tuple[float, float, int]:
    # One kept-alive connection: a client's set-up (its TLS context, ~20 ms) is
    # not the server's.
    with httpx.Client(timeout=60) as client:
        timed(client, url)  # warm: the first request after a deploy has its own benchmark
        runs = [timed(client, url) for _ in range(requests)]
    return (
        statistics.median(first for first, _, _ in runs),
        statistics.median(total for _, total, _ in runs),
        runs[0][2],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--rows", type=int, default=120_000)
    args = parser.parse_args()
    function = HERE / "functions" / "bench"
    result = build(function)
    rows: dict[str, tuple[float, float, int]] = {}
    with tempfile.TemporaryDirectory() as temp:
        gateway = GatewayProcess(Path(temp) / "data", workers=2).start()
        baseline, port = start_baseline("baseline_app:app", "/bench/")
        try:
            deploy(gateway, (function / "edgefn.toml").read_text(), result.path.read_bytes())
            gateway.wait_serving("bench")
            bases = {"edgefn": gateway.public_url, "fastapi": f"http://127.0.0.1:{port}"}
            small = f"rows={SMALL_CHUNKS}&lines=1"
            for how, query in (
                ("streamed", f"rows={args.rows}&stream=1"),
                ("whole", f"rows={args.rows}"),
                ("line by line", f"{small}&stream=1"),
                ("lines whole", small),
            ):
                for server, base in bases.items():
                    url = f"{base}/bench/export?{query}"
                    rows[f"{server}, {how}"] = measure(url, args.requests)
        finally:
            gateway.stop()
            baseline.terminate()
            baseline.wait()
    print(f"{args.requests} requests each, medians")
    print(f"{'':18} {'first byte ms':>14} {'last byte ms':>13} {'MiB':>6}")
    for label, (first, total, size) in rows.items():
        print(f"{label:18} {first * 1000:14.1f} {total * 1000:13.1f} {size / 2**20:6.2f}")
    for server in ("edgefn", "fastapi"):
        streamed, whole = rows[f"{server}, streamed"], rows[f"{server}, whole"]
        by_line = rows[f"{server}, line by line"][1] - rows[f"{server}, lines whole"][1]
        print(
            f"{server}: streamed, the first byte in {streamed[0] / whole[0]:.2f}x the time "
            f"of a whole body's; the last in {streamed[1] / whole[1]:.2f}x; "
            f"a chunk costs {by_line / SMALL_CHUNKS * 1e6:.0f} us"
        )
    streamed = rows["edgefn, streamed"]
    verdict(
        "a streamed body's first byte, in its whole time",
        f"{streamed[0] * 1000:.1f} of {streamed[1] * 1000:.1f} ms",
        "<= 0.25x",
        streamed[0] <= streamed[1] / 4,
    )


if __name__ == "__main__":
    main()
