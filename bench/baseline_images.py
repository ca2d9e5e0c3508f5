"""The native baseline for bench/images.py: the same Pillow pipeline in FastAPI.

Decode with JPEG draft scaling, resize to 800 px wide (Lanczos), stamp a text
watermark in the south-east corner, encode JPEG q85 - what the watermark
function asks the host image service to do.
"""

import io

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from PIL import Image, ImageDraw, ImageFont

app = FastAPI()


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


def render(data: bytes, w: int, text: str, size: float, opacity: float, q: int) -> bytes:
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
    image.save(out, "JPEG", quality=q)
    return out.getvalue()


@app.get("/watermark/")
def ready() -> dict[str, bool]:
    return {"ready": True}
