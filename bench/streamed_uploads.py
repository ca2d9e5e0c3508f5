"""Streamed request bodies: an upload's answer time and the worker's memory, with the
body read whole before the function runs and read as it arrives
(`stream_request_body = true`), beside a FastAPI baseline (`request.stream()`) in
the same run. The function hashes the body (the bench function's `/digest`).

1. One upload at a time of `--size-mib`, sent at `--mib-per-s` (a client on a
   link of that speed): the time from its last byte to the answer, median of
   `--requests`. Read whole, the function starts only then.
2. `--uploads` concurrent uploads of 25 MiB against one worker: its RSS growth.

Issue 20's lever (request bodies streamed into the sandbox) gets two met / NOT MET
lines: a streamed upload is answered within 0.5x the time after its last byte of
one read whole, and the storm grows the worker by at most 0.25x as much.

    python bench/streamed_uploads.py [--requests 5] [--size-mib 8] [--mib-per-s 50] [--uploads 20]
"""

from __future__ import annotations

import argparse
import re
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from _targets import verdict  # noqa: E402
from baseline import start_baseline  # noqa: E402
from gateway import deploy  # noqa: E402

from edgefn_platform import build  # noqa: E402
from gateway_process import GatewayProcess  # noqa: E402
from uploads import storm  # noqa: E402

# Room for a 25 MiB body read whole, and the fuel to hash it in the guest.
LIMITS = """
[limits]
max_body = "32MiB"
memory = "128MiB"
fuel = 20_000_000_000
timeout = "30s"
"""
PIECE = 256 * 1024


def paced_upload(port: int, path: str, body: bytes, rate: float) -> float:
    """Seconds from the last byte sent to the whole answer, `body` sent at `rate`
    bytes a second."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        )
        started = time.perf_counter()
        for offset in range(0, len(body), PIECE):
            sock.sendall(body[offset : offset + PIECE])
            pause = started + (offset + PIECE) / rate - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
        sent = time.perf_counter()
        received = b""
        while not (match := re.search(rb"content-length: (\d+)\r\n", received, re.I)) or len(
            received.partition(b"\r\n\r\n")[2]
        ) < int(match.group(1)):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        answered = time.perf_counter()
    assert received.startswith(b"HTTP/1.1 200"), received[:300]
    return answered - sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--size-mib", type=int, default=8)
    parser.add_argument("--mib-per-s", type=float, default=50)
    parser.add_argument("--uploads", type=int, default=20)
    args = parser.parse_args()
    function = HERE / "functions" / "bench"
    component = build(function).path.read_bytes()
    body = bytes(range(256)) * (args.size_mib * 4096)
    after: dict[str, float] = {}
    storms: dict[str, str] = {}
    growth: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as temp:
        gateway = GatewayProcess(Path(temp) / "data", workers=1).start()
        baseline, port = start_baseline("baseline_app:app", "/bench/")
        try:
            deploy(gateway, 'name = "whole"\n' + LIMITS, component)
            deploy(gateway, 'name = "streamed"\nstream_request_body = true\n' + LIMITS, component)
            for name in ("whole", "streamed"):
                gateway.wait_serving(name)
            targets = {
                "edgefn, read whole": (gateway.port, "/whole/digest"),
                "edgefn, streamed": (gateway.port, "/streamed/digest"),
                "FastAPI, streamed": (port, "/bench/digest"),
            }
            rate = args.mib_per_s * 2**20
            for label, (target, path) in targets.items():
                paced_upload(target, path, body[: 1 << 20], rate)  # warm
                runs = [paced_upload(target, path, body, rate) for _ in range(args.requests)]
                after[label] = statistics.median(runs)
            assert gateway.process is not None
            for name in ("whole", "streamed"):
                result = storm(
                    gateway.port,
                    gateway.process.pid,
                    f"/{name}/digest",
                    f"{gateway.public_url}/whole/",
                    count=args.uploads,
                )
                storms[name], growth[name] = result.summary(), result.growth
        finally:
            gateway.stop()
            baseline.terminate()
            baseline.wait()
    print(
        f"{args.size_mib} MiB sent at {args.mib_per_s:g} MiB/s "
        f"({args.size_mib / args.mib_per_s:.2f} s), hashed; median of {args.requests}:"
    )
    for label, seconds in after.items():
        print(f"  {label:20} answered {seconds * 1000:7.1f} ms after the last byte")
    for name, summary in storms.items():
        print(f"{args.uploads} x 25 MiB at once, {name}: {summary}")
    whole, streamed = after["edgefn, read whole"], after["edgefn, streamed"]
    verdict(
        "a streamed upload's answer after its last byte, in a whole one's",
        f"{streamed * 1000:.1f} of {whole * 1000:.1f} ms",
        "<= 0.5x",
        streamed <= whole / 2,
    )
    verdict(
        "the worker's RSS growth under streamed uploads, in whole ones'",
        f"{growth['streamed'] / 2**20:.0f} of {growth['whole'] / 2**20:.0f} MiB",
        "<= 0.25x",
        growth["streamed"] <= growth["whole"] / 4,
    )


if __name__ == "__main__":
    main()
