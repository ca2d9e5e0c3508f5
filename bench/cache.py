"""Edge cache benchmark: cache hits through the gateway against a plain FastAPI app.

1. hello with `Cache-Control: public, max-age=60` (bench/functions/bench `/cached`)
   answered from the edge cache by `edgefn serve --workers 2`, against the plain
   FastAPI hello (bench/baseline_app.py, 2 workers), same run, same load
   generator (wrk, 50 connections). Target: >= 1.0x FastAPI's requests/s: a hit
   runs no function and should beat any Python handler.
2. The image variant: a 3 MP JPEG on a loopback origin -> 800 px + text -> WebP
   (the watermark function with `src=`, as bench/origin.py): p50 of a hit against
   p50 of a miss (each miss a new variant, so the pipeline runs every time).

    python bench/cache.py [--seconds 10] [--connections 50] [--requests 100]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from baseline import start_baseline  # noqa: E402
from gateway import deploy, load_python, load_wrk  # noqa: E402
from origin import ORIGIN, QUERY, deploy_watermark, webp_latencies  # noqa: E402

from edgefn_platform import build  # noqa: E402
from gateway_process import GatewayProcess  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()
    load = load_wrk if shutil.which("wrk") else load_python
    function = HERE / "functions" / "bench"
    result = build(function)
    manifest = "reuse = true\n" + (function / "edgefn.toml").read_text()
    origin_process = subprocess.Popen(
        [sys.executable, str(ORIGIN)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert origin_process.stdout is not None
        origin = origin_process.stdout.readline().decode().split()[1]
        with tempfile.TemporaryDirectory() as temp:
            env = {"EDGEFN_OUTBOUND_ALLOWED_NETWORKS": "127.0.0.1/32"}
            with GatewayProcess(Path(temp) / "data", workers=2, extra_env=env) as gateway:
                deploy(gateway, manifest, result.path.read_bytes())
                gateway.wait_serving("bench")
                hit_url = f"{gateway.public_url}/bench/cached"
                for _ in range(4):  # stored by the first; each worker's memory tier after
                    httpx.get(hit_url).raise_for_status()
                answered = httpx.get(hit_url).headers.get("x-edgefn-cache")
                assert answered == "HIT", f"expected a cache hit, got {answered}"
                hits = load(hit_url, args.seconds, args.connections)
                deploy_watermark(gateway, origin, Path(temp))
                src = quote(f"{origin}/photo.jpg", safe="")
                base = f"/watermark/?src={src}&{QUERY}"
                misses = webp_latencies(
                    gateway.port, [f"{base}&text=v{i}" for i in range(args.requests)]
                )
                hit_times = webp_latencies(gateway.port, [base] * (args.requests + 1))[1:]
            baseline, port = start_baseline("baseline_app:app", "/bench/")
            try:
                native = load(f"http://127.0.0.1:{port}/bench/", args.seconds, args.connections)
            finally:
                baseline.terminate()
                baseline.wait()
    finally:
        assert origin_process.stdin is not None
        origin_process.stdin.close()
        origin_process.wait(10)
    print(f"load generator: {load.__name__}, {args.connections} connections, {args.seconds} s")
    print(f"{'':24} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for label, (rps, p50, p99, _) in (("edgefn cache hits", hits), ("fastapi hello", native)):
        print(f"{label:24} {rps:8.0f} {p50:8.2f} {p99:8.2f}")
    print(f"hits vs fastapi: {hits[0] / native[0]:.2f}x req/s (target >= 1.0)")
    miss, hit = statistics.median(misses), statistics.median(hit_times)
    print(
        f"3 MP -> 800 px WebP, {args.requests} requests each: miss p50 {miss:.2f} ms, "
        f"hit p50 {hit:.2f} ms ({miss / hit:.0f}x faster)"
    )


if __name__ == "__main__":
    main()
