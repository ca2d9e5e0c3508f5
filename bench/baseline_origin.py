"""The native baseline for bench/origin.py: fetch the original from the origin
with urllib3 (the host's client), then the Pillow pipeline of bench/images.py
(JPEG draft decode, 800 px wide with Lanczos, a text watermark in the south-east
corner), encoded as WebP - what the watermark function does with `src=`.
"""

import urllib3
from baseline_images import render  # the same Pillow calls as the upload baseline
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

app = FastAPI()
# One pool per worker, reused across requests, as the gateway's workers keep theirs.
_http = urllib3.PoolManager(maxsize=4, retries=False)


@app.get("/watermark/")
async def watermark(
    src: str,
    w: int = 800,
    text: str = "edgefn",
    size: float = 0.05,
    opacity: float = 0.5,
    format: str = "webp",
    q: int = 85,
) -> Response:
    # Off the event loop, as edgefn does: urllib3 blocks, and Pillow releases the
    # GIL while it decodes and resizes, so two requests on one worker overlap.
    data = await run_in_threadpool(fetch, src)
    out = await run_in_threadpool(render, data, w, text, size, opacity, q, format)
    return Response(out, media_type=f"image/{format}")


def fetch(url: str) -> bytes:
    response = _http.request("GET", url, redirect=False, timeout=5.0)
    if response.status != 200:
        raise RuntimeError(f"{url} answered {response.status}")
    return response.data


@app.get("/ready")
def ready() -> dict[str, bool]:
    return {"ready": True}
