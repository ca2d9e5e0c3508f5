"""watermark: stamp text and/or a logo on images at the edge.

POST /watermark?text=%C2%A9%20me&position=tile      (image in the body)
GET  /watermark/sample.jpg?logo=1&position=southeast&scale=0.25
"""

from __future__ import annotations

import os
import re

from edgefn import App, HTTPError, Request, Response, signing
from edgefn.image import FORMATS, GRAVITIES, Image

app = App()

_COLOR = re.compile(r"#?[0-9a-fA-F]{6}")
_PARAMS = (
    "text",
    "size",
    "color",
    "opacity",
    "position",
    "margin",
    "logo",
    "scale",
    "format",
    "q",
    "w",
)


@app.post("/")
def watermark_body(request: Request) -> Response:
    return watermark(request, Image.from_body())


@app.get("/sample.jpg")
def watermark_sample(request: Request) -> Response:
    return watermark(request, Image.from_asset("sample.jpg"))


def watermark(request: Request, image: Image) -> Response:
    key = os.environ.get("SIGNING_KEY", "")  # read per request: set at deploy, not build
    if key:
        signing.verify(request, key)  # 403 unless signed, as in image_resize
    query = request.query
    unknown = sorted(set(query) - set(_PARAMS) - set(signing.PARAMS))
    if unknown:
        raise HTTPError(400, f"unknown parameter {unknown[0]!r} (allowed: {', '.join(_PARAMS)})")
    text = query.get("text", "")
    logo = query.get("logo", "0" if text else "1")  # the logo, when nothing else is asked for
    if logo not in ("0", "1"):
        raise HTTPError(400, f"logo must be 0 or 1, got {logo!r}")
    if not text and logo == "0":
        raise HTTPError(400, "give text=... and/or logo=1")
    if len(text) > 200:
        raise HTTPError(400, "text must be at most 200 characters")
    position = query.get("position", "southeast")
    if position not in (*GRAVITIES, "tile"):
        raise HTTPError(
            400, f"position must be one of {', '.join(GRAVITIES)}, tile; got {position!r}"
        )
    placement = {
        "gravity": "center" if position == "tile" else position,
        "tile": position == "tile",
        "margin": _number(query, "margin", 0, 0.5, 0.02),
        "opacity": _number(query, "opacity", 0, 1, 0.5 if text else 1.0),
    }
    width = query.get("w")
    if width is not None:
        if not width.isdigit() or not 1 <= int(width) <= 8192:
            raise HTTPError(400, f"w must be a whole number from 1 to 8192, got {width!r}")
        image = image.resize(int(width), fit="inside")
    if logo == "1":
        image = image.overlay("logo.png", scale=_number(query, "scale", 0.01, 1, 0.2), **placement)
    if text:
        color = query.get("color", "ffffff")
        if not _COLOR.fullmatch(color):
            raise HTTPError(400, f"color must be a hex colour like ff8800, got {color!r}")
        image = image.text(
            text,
            size=_number(query, "size", 0.01, 0.5, 0.05),
            color="#" + color.lstrip("#"),
            **placement,
        )
    fmt = query.get("format", "jpeg")
    if fmt not in FORMATS:
        raise HTTPError(400, f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    quality = query.get("q", "85")
    if not quality.isdigit() or not 1 <= int(quality) <= 100:
        raise HTTPError(400, f"q must be a whole number from 1 to 100, got {quality!r}")
    return image.send(fmt, int(quality))


def _number(query, name: str, low: float, high: float, default: float) -> float:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:
        raise HTTPError(400, f"{name} must be a number from {low} to {high}, got {raw!r}")
    return value
