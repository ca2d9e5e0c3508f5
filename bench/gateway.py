"""Gateway benchmark: the hello handler through `edgefn serve` vs a plain FastAPI app.

Both run with 2 worker processes on loopback, in the same run, loaded with the
same client: `wrk` when installed, else a bounded asyncio load generator. The
function runs twice: with a fresh instance per request (the default) and with
`reuse = true`. Prints requests/s and p50/p99 latency for each and the ratios, then
the first request after a deploy and after a restart against the median warm one.
Issue 20's targets get a met / NOT MET line each: `reuse = true` >= 0.6x the
baseline's requests/s with p99 <= 1.5x, and a first request <= 2x the warm median.

    python bench/gateway.py [--seconds 10] [--connections 50]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from _targets import verdict  # noqa: E402
from baseline import start_baseline  # noqa: E402

from edgefn_platform import build  # noqa: E402
from gateway_process import GatewayProcess  # noqa: E402


def load_wrk(url: str, seconds: int, connections: int) -> tuple[float, float, float]:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def percentile(p: str) -> float:
        value, unit = re.search(rf"{p}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return rps, percentile("50"), percentile("99")


def load_python(url: str, seconds: int, connections: int) -> tuple[float, float, float]:
    async def run() -> tuple[float, float, float]:
        latencies: list[float] = []
        errors = 0
        deadline = time.monotonic() + seconds
        limits = httpx.Limits(max_connections=connections)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:

            async def worker() -> None:
                nonlocal errors
                while time.monotonic() < deadline:
                    started = time.perf_counter()
                    response = await client.get(url)
                    latencies.append((time.perf_counter() - started) * 1000)
                    errors += response.status_code != 200

            started = time.monotonic()
            await asyncio.gather(*(worker() for _ in range(connections)))
            elapsed = time.monotonic() - started
        if errors:
            print(f"  warning: {errors} non-200 responses")
        quantiles = statistics.quantiles(latencies, n=100)
        return len(latencies) / elapsed, quantiles[49], quantiles[98]

    return asyncio.run(run())


def first_and_warm(base: str, path: str) -> tuple[float, float]:
    """Latency of the first request to `path`, and the median of the next 100, all on
    one connection opened beforehand (so the first one does not pay for TCP set-up)."""
    times = []
    with httpx.Client(base_url=base) as client:
        client.get("/healthz").raise_for_status()
        for _ in range(101):
            started = time.perf_counter()
            client.get(path).raise_for_status()
            times.append((time.perf_counter() - started) * 1000)
    return times[0], statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    args = parser.parse_args()
    load = load_wrk if shutil.which("wrk") else load_python
    print(
        f"load generator: {'wrk' if load is load_wrk else 'python (install wrk for less noise)'}"
        f", {args.connections} connections, {args.seconds} s each"
    )

    function = HERE / "functions" / "bench"
    result = build(function)
    manifest = (function / "edgefn.toml").read_text()
    rows: dict[str, tuple[float, float, float]] = {}
    with tempfile.TemporaryDirectory() as temp:
        gateway = GatewayProcess(Path(temp) / "data", workers=2).start()
        baseline, port = start_baseline("baseline_app:app", "/bench/")
        try:
            for label, reuse in (("edgefn", "false"), ("edgefn reuse", "true")):
                # Top-level keys go before the manifest's [limits] table.
                deploy(gateway, f"reuse = {reuse}\n{manifest}", result.path.read_bytes())
                gateway.wait_serving("bench")
                rows[label] = load(f"{gateway.public_url}/bench/", args.seconds, args.connections)
            rows["fastapi"] = load(
                f"http://127.0.0.1:{port}/bench/", args.seconds, args.connections
            )
            # A new version (fresh instances again): each worker loads and warms it
            # before switching, within a second.
            deploy(gateway, manifest, result.path.read_bytes())
            gateway.wait_serving("bench")
            after_deploy = first_and_warm(gateway.public_url, "/bench/")
            gateway.stop()
            gateway.start()
            after_restart = first_and_warm(gateway.public_url, "/bench/")
        finally:
            gateway.stop()
            baseline.terminate()
            baseline.wait()
    native = rows["fastapi"]
    print(f"{'':14} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}   vs fastapi: req/s    p99")
    for label, (rps, p50, p99) in rows.items():
        ratios = (
            "" if label == "fastapi" else f"   {rps / native[0]:14.2f}x {p99 / native[2]:6.2f}x"
        )
        print(f"{label:14} {rps:8.0f} {p50:8.2f} {p99:8.2f}{ratios}")
    reuse_rps, _, reuse_p99 = rows["edgefn reuse"]
    verdict(
        "reuse = true hello, req/s vs FastAPI",
        f"{reuse_rps / native[0]:.2f}x",
        ">= 0.6x",
        reuse_rps / native[0] >= 0.6,
    )
    verdict(
        "reuse = true hello, p99 vs FastAPI",
        f"{reuse_p99 / native[2]:.2f}x",
        "<= 1.5x",
        reuse_p99 / native[2] <= 1.5,
    )
    for event, (first, warm) in (("deploy", after_deploy), ("restart", after_restart)):
        verdict(
            f"first request after a {event} vs the warm median",
            f"{first:.2f} ms / {warm:.2f} ms = {first / warm:.2f}x",
            "<= 2x",
            first / warm <= 2,
        )


def deploy(gateway: GatewayProcess, manifest: str, component: bytes) -> None:
    gateway.admin(
        "POST",
        "/v1/functions",
        data={"manifest": manifest},
        files={"component": ("bench.wasm", component)},
    ).raise_for_status()


if __name__ == "__main__":
    main()
