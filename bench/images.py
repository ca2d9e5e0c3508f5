"""Image benchmark: 3 MP JPEG -> 800 px wide + text watermark -> JPEG q85.

Through `edgefn serve --workers 2` (the watermark function as shipped, with
`reuse = true`) against the same Pillow pipeline in a plain FastAPI app with 2
workers, in the same run, with the same client. Prints p50/p99 latency and the
ratios (target: p50 <= 1.1x the baseline and <= 47 ms).

    python bench/images.py [--requests 200] [--concurrency 2]
"""

from __future__ import annotations

import argparse
import http.client
import io
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
from baseline import start_baseline  # noqa: E402

from edgefn_platform import build  # noqa: E402
from edgefn_platform.client import AdminClient  # noqa: E402
from edgefn_platform.gateway import pack_assets  # noqa: E402
from gateway_process import GatewayProcess  # noqa: E402
from images import encode, photo  # noqa: E402

QUERY = "w=800&text=edgefn&size=0.05&opacity=0.5&format=jpeg&q=85"


def camera_like_jpeg(width: int, height: int) -> bytes:
    """About the size of a phone photo: detail (grain) everywhere, quality 92."""
    grain = Image.effect_noise((width, height), 60).convert("RGB")
    return encode(Image.blend(photo(width, height), grain, 0.2), "JPEG", quality=92)


def measure(url: str, body: bytes, requests: int, concurrency: int) -> list[float]:
    """Latencies in ms, `concurrency` clients each on its own kept-alive connection.

    http.client, not httpx: the client shares the 2 cores with both servers, and
    a leaner client leaves them more of it (httpx.post also builds an SSL
    context per call, ~10 ms).
    """
    parts = urlsplit(url)
    target = f"{parts.path}?{parts.query}"
    headers = {"content-type": "image/jpeg"}

    def client(count: int) -> list[float]:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        times = []
        try:
            for _ in range(count):
                started = time.perf_counter()
                connection.request("POST", target, body, headers)
                response = connection.getresponse()
                response.read()
                times.append((time.perf_counter() - started) * 1000)
                if response.status != 200:
                    raise RuntimeError(f"{url} answered {response.status}")
        finally:
            connection.close()
        return times

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, [5] * concurrency))  # warm up both workers
        runs = pool.map(client, [requests // concurrency] * concurrency)
        return [t for run in runs for t in run]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()

    body = camera_like_jpeg(2121, 1414)  # 3.0 MP
    with Image.open(io.BytesIO(body)) as image:
        print(
            f"input: {image.width}x{image.height} JPEG, {len(body) / 1e6:.2f} MB; "
            f"{args.requests} requests, {args.concurrency} at a time"
        )
    function = ROOT / "functions" / "watermark"
    result = build(function)
    with tempfile.TemporaryDirectory() as temp:
        gateway = GatewayProcess(Path(temp) / "data", workers=2)
        manifest = (function / "edgefn.toml").read_text()
        gateway.start()
        baseline, port = start_baseline("baseline_images:app", "/watermark/")
        try:
            archive = Path(temp) / "assets.tar.gz"
            pack_assets(function / "assets", archive)
            AdminClient(gateway.admin_url, gateway.token).deploy(manifest, result.path, archive)
            gateway.wait_serving("watermark")
            edgefn = measure(
                f"{gateway.public_url}/watermark/?{QUERY}", body, args.requests, args.concurrency
            )
            native = measure(
                f"http://127.0.0.1:{port}/watermark/?{QUERY}", body, args.requests, args.concurrency
            )
        finally:
            gateway.stop()
            baseline.terminate()
            baseline.wait()
    rows = {"edgefn": edgefn, "fastapi+pillow": native}
    print(f"{'':16} {'p50 ms':>8} {'p99 ms':>8}")
    for name, times in rows.items():
        q = statistics.quantiles(times, n=100)
        print(f"{name:16} {q[49]:8.1f} {q[98]:8.1f}")
    p50 = statistics.median(edgefn) / statistics.median(native)
    p99 = statistics.quantiles(edgefn, n=100)[98] / statistics.quantiles(native, n=100)[98]
    print(f"ratio p50 {p50:.2f}x (target <= 1.1, and <= 47 ms), p99 {p99:.2f}x")


if __name__ == "__main__":
    main()
