"""Origin benchmark: the CDN edge image service, fetch included.

A 3 MP JPEG on a local origin (tests/origin_server.py, in a process of its own)
-> 800 px wide + text watermark -> WebP q85: through `edgefn serve --workers 2`
(the watermark function with `src=<origin URL>`, its manifest allowing the origin)
against FastAPI + urllib3 + Pillow doing the same fetch and pipeline with 2
workers (bench/baseline_origin.py), in the same run, with the same client.
Prints p50/p99 latency and the ratios (target: p50 <= 1.0x the baseline).

    python bench/origin.py [--requests 200] [--concurrency 2] [--native-only]

The function's manifest names the origin through its [env] ORIGIN, as the
README tells users to point the example functions at their own origin.
"""

from __future__ import annotations

import argparse
import http.client
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote, urlsplit

import urllib3

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
from baseline import start_baseline  # noqa: E402

from edgefn_platform import build  # noqa: E402
from edgefn_platform.client import AdminClient  # noqa: E402
from edgefn_platform.gateway import pack_assets  # noqa: E402
from gateway_process import GatewayProcess  # noqa: E402

ORIGIN = ROOT / "tests" / "origin_server.py"
QUERY = "w=800&text=edgefn&size=0.05&opacity=0.5&format=webp&q=85"


def webp_latencies(port: int, targets: list[str]) -> list[float]:
    """ms for each GET of `targets` on 127.0.0.1:`port`, in turn, on one kept-alive
    connection; each answer must be a WebP."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times = []
    try:
        for target in targets:
            started = time.perf_counter()
            connection.request("GET", target)
            response = connection.getresponse()
            body = response.read()
            times.append((time.perf_counter() - started) * 1000)
            if response.status != 200 or body[8:12] != b"WEBP":
                raise RuntimeError(f"{target} answered {response.status}: {body[:300]!r}")
    finally:
        connection.close()
    return times


def measure(url: str, requests: int, concurrency: int) -> list[float]:
    """Latencies in ms of GET `url`, `concurrency` clients each on its own
    kept-alive connection (http.client: the leanest client leaves the 2 cores
    to the servers; see bench/images.py)."""
    parts = urlsplit(url)
    target = f"{parts.path}?{parts.query}"

    def client(count: int) -> list[float]:
        return webp_latencies(parts.port or 80, [target] * count)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, [5] * concurrency))  # warm up both workers
        runs = pool.map(client, [requests // concurrency] * concurrency)
        return [t for run in runs for t in run]


def deploy_watermark(gateway: GatewayProcess, origin: str, temp: Path) -> None:
    """The shipped watermark function, deployed with its manifest's [env] ORIGIN
    (which its allowed_outbound_hosts names) set to `origin`; the component is
    built from functions/watermark, which [env] does not change."""
    function = ROOT / "functions" / "watermark"
    manifest, found = re.subn(
        r"^ORIGIN = .*$",
        f'ORIGIN = "{origin}"',
        (function / "edgefn.toml").read_text(),
        flags=re.MULTILINE,
    )
    assert found == 1, "functions/watermark/edgefn.toml has no [env] ORIGIN"
    result = build(function)
    archive = temp / "assets.tar.gz"
    pack_assets(function / "assets", archive)
    AdminClient(gateway.admin_url, gateway.token).deploy(manifest, result.path, archive)
    gateway.wait_serving("watermark")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument(
        "--native-only", action="store_true", help="measure the FastAPI baseline alone"
    )
    args = parser.parse_args()
    origin_process = subprocess.Popen(
        [sys.executable, str(ORIGIN)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    rows: dict[str, list[float]] = {}
    try:
        assert origin_process.stdout is not None
        origin = origin_process.stdout.readline().decode().split()[1]
        src = quote(f"{origin}/photo.jpg", safe="")
        size = int(urllib3.request("HEAD", f"{origin}/photo.jpg").headers["content-length"])
        print(
            f"input: 2121x1414 JPEG ({size / 1e6:.2f} MB) on {origin}; "
            f"{args.requests} requests, {args.concurrency} at a time"
        )
        with tempfile.TemporaryDirectory() as temp:
            if not args.native_only:
                gateway = GatewayProcess(
                    Path(temp) / "data",
                    workers=2,
                    # The edge cache off: every request runs the pipeline, as the
                    # baseline's does (bench/cache.py measures the cache's hits).
                    extra_env={
                        "EDGEFN_OUTBOUND_ALLOWED_NETWORKS": "127.0.0.1/32",
                        "EDGEFN_CACHE_ENABLED": "false",
                    },
                )
                with gateway:
                    deploy_watermark(gateway, origin, Path(temp))
                    rows["edgefn"] = measure(
                        f"{gateway.public_url}/watermark/?src={src}&{QUERY}",
                        args.requests,
                        args.concurrency,
                    )
            baseline, port = start_baseline("baseline_origin:app", "/ready")
            try:
                rows["fastapi+urllib3"] = measure(
                    f"http://127.0.0.1:{port}/watermark/?src={src}&{QUERY}",
                    args.requests,
                    args.concurrency,
                )
            finally:
                baseline.terminate()
                baseline.wait()
    finally:
        assert origin_process.stdin is not None
        origin_process.stdin.close()
        origin_process.wait(10)
    print(f"{'':16} {'p50 ms':>8} {'p99 ms':>8}")
    for name, times in rows.items():
        q = statistics.quantiles(times, n=100)
        print(f"{name:16} {q[49]:8.1f} {q[98]:8.1f}")
    if "edgefn" in rows:
        edgefn, native = rows["edgefn"], rows["fastapi+urllib3"]
        p50 = statistics.median(edgefn) / statistics.median(native)
        p99 = statistics.quantiles(edgefn, n=100)[98] / statistics.quantiles(native, n=100)[98]
        print(f"ratio p50 {p50:.2f}x (target <= 1.0), p99 {p99:.2f}x")


if __name__ == "__main__":
    main()
