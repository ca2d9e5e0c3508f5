"""Image benchmark: a 3 MP JPEG upload through two watermark pipelines.

1. 800 px wide + text watermark -> JPEG q85;
2. the seed's pipeline, upload -> 800x800 `cover` + text + logo -> WebP q85, in
   one request to the watermark function.

Each through `edgefn serve --workers 2` (the watermark function as shipped, with
`reuse = true`) against the same Pillow pipeline in a plain FastAPI app with 2
workers (`baseline_images.py`), in the same run, with the same client. Prints
p50/p99 latency and the ratios (target: p50 <= 1.1x the baseline and <= 47 ms,
the seed's figure).

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
from typing import NamedTuple
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

SEED_MS = 47.0  # the seed's p50 target for an image request


class Pipeline(NamedTuple):
    name: str
    edgefn: str  # the watermark function's path and query, after the gateway's address
    native: str  # the same work in baseline_images.py
    content_type: str


PIPELINES = (
    Pipeline(
        "800w+text->jpeg",
        "/watermark/?w=800&text=edgefn&size=0.05&opacity=0.5&format=jpeg&q=85",
        "/watermark/?w=800&text=edgefn&size=0.05&opacity=0.5&q=85",
        "image/jpeg",
    ),
    Pipeline(
        "seed: 800x800 cover+text+logo->webp",
        "/watermark/?w=800&h=800&fit=cover&text=edgefn&logo=1&format=webp&q=85",
        "/seed/?w=800&h=800&text=edgefn&opacity=0.5&q=85",
        "image/webp",
    ),
)


def camera_like_jpeg(width: int, height: int) -> bytes:
    """About the size of a phone photo: detail (grain) everywhere, quality 92."""
    grain = Image.effect_noise((width, height), 60).convert("RGB")
    return encode(Image.blend(photo(width, height), grain, 0.2), "JPEG", quality=92)


def measure(
    url: str, body: bytes, requests: int, concurrency: int, content_type: str
) -> list[float]:
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
                if response.getheader("content-type") != content_type:
                    raise RuntimeError(f"{url} sent {response.getheader('content-type')}")
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
            results = {}
            for pipeline in PIPELINES:
                load = (args.requests, args.concurrency, pipeline.content_type)
                results[pipeline] = (
                    measure(f"{gateway.public_url}{pipeline.edgefn}", body, *load),
                    measure(f"http://127.0.0.1:{port}{pipeline.native}", body, *load),
                )
        finally:
            gateway.stop()
            baseline.terminate()
            baseline.wait()
    for pipeline, (edgefn, native) in results.items():
        report(pipeline.name, edgefn, native)


def report(name: str, edgefn: list[float], native: list[float]) -> None:
    print(f"\n{name}")
    print(f"{'':16} {'p50 ms':>8} {'p99 ms':>8}")
    for label, times in {"edgefn": edgefn, "fastapi+pillow": native}.items():
        q = statistics.quantiles(times, n=100)
        print(f"{label:16} {q[49]:8.1f} {q[98]:8.1f}")
    p50 = statistics.median(edgefn) / statistics.median(native)
    p99 = statistics.quantiles(edgefn, n=100)[98] / statistics.quantiles(native, n=100)[98]
    print(
        f"ratio p50 {p50:.2f}x (target <= 1.1), p99 {p99:.2f}x; "
        f"p50 {statistics.median(edgefn):.1f} ms vs the seed's {SEED_MS:g} ms "
        f"({statistics.median(edgefn) / SEED_MS:.2f}x)"
    )


if __name__ == "__main__":
    main()
