"""The native baseline for bench/images.py: the same Pillow pipelines in FastAPI.

`/watermark/`: decode with JPEG draft scaling, resize to 800 px wide (Lanczos),
stamp a text watermark in the south-east corner, encode JPEG q85 - what the
watermark function asks the host image service to do.

`/seed/`: the seed's pipeline - the same decode, 800x800 `cover` (scale, then
crop the centre), the logo (decoded and scaled per request, as the host does
with the asset) in the south-east corner and the text stacked above it, both at
opacity 0.5, encode WebP q85.
"""

import io
import math
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from PIL import Image, ImageDraw, ImageFont

app = FastAPI()
LOGO = (Path(__file__).resolve().parent.parent / "functions/watermark/assets/logo.png").read_bytes()


@app.post("/watermark/")
async def watermark(
    request: Request,
    w: int = 800,
    text: str = "edgefn",
    size: float = 0.05,
    opacity: float = 0.5,
    q: int = 85,
) -> Response:
    # Off the event loop, as edgefn does: Pillow releases the GIL while it
    # decodes and resizes, so two requests on one worker run side by side.
    data = await request.body()
    jpeg = await run_in_threadpool(render, data, w, text, size, opacity, q)
    return Response(jpeg, media_type="image/jpeg")


def render(
    data: bytes, w: int, text: str, size: float, opacity: float, q: int, fmt: str = "jpeg"
) -> bytes:
    image = Image.open(io.BytesIO(data))
    height = round(image.height * w / image.width)
    image.draft("RGB", (w, height))
    image = image.convert("RGB").resize((w, height), Image.Resampling.LANCZOS, reducing_gap=3.0)
    font = ImageFont.load_default(size=round(size * w))
    left, top, right, bottom = font.getbbox(text)
    mask = Image.new("L", (int(right - left), int(bottom - top)), 0)
    ImageDraw.Draw(mask).text((-left, -top), text, font=font, fill=round(255 * opacity))
    margin = round(0.02 * w)
    position = (w - mask.width - margin, height - mask.height - margin)
    image.paste(
        (255, 255, 255), (*position, position[0] + mask.width, position[1] + mask.height), mask
    )
    out = io.BytesIO()
    image.save(out, fmt.upper(), quality=q)
    return out.getvalue()


@app.post("/seed/")
async def seed(
    request: Request,
    w: int = 800,
    h: int = 800,
    text: str = "edgefn",
    opacity: float = 0.5,
    q: int = 85,
) -> Response:
    data = await request.body()
    webp = await run_in_threadpool(render_seed, data, w, h, text, opacity, q)
    return Response(webp, media_type="image/webp")


def render_seed(data: bytes, w: int, h: int, text: str, opacity: float, q: int) -> bytes:
    image = Image.open(io.BytesIO(data))
    scale = min(1.0, max(w / image.width, h / image.height))
    size = (round(image.width * scale), round(image.height * scale))
    image.draft("RGB", size)
    image = image.convert("RGB").resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    left, top = (size[0] - w) // 2, (size[1] - h) // 2
    image = image.crop((left, top, left + w, top + h))
    margin = round(0.02 * w)
    # The logo, 0.2 of the width, in the corner.
    logo = Image.open(io.BytesIO(LOGO)).convert("RGBA")
    logo_w = round(0.2 * w)
    logo = logo.resize((logo_w, round(logo.height * logo_w / logo.width)), Image.Resampling.LANCZOS)
    mask = logo.getchannel("A").point(lambda a: math.floor(a * opacity))
    corner = (w - logo.width - margin, h - logo.height - margin)
    image.paste(logo.convert("RGB"), corner, mask)
    # The text, 0.05 of the width, stacked above the logo.
    font = ImageFont.load_default(size=round(0.05 * w))
    x0, y0, x1, y1 = font.getbbox(text)
    text_mask = Image.new("L", (int(x1 - x0), int(y1 - y0)), 0)
    ImageDraw.Draw(text_mask).text((-x0, -y0), text, font=font, fill=round(255 * opacity))
    position = (w - text_mask.width - margin, corner[1] - margin - text_mask.height)
    image.paste((255, 255, 255), position, text_mask)
    out = io.BytesIO()
    image.save(out, "WEBP", quality=q)
    return out.getvalue()


@app.get("/watermark/")
def ready() -> dict[str, bool]:
    return {"ready": True}
