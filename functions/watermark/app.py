"""watermark: crop, stamp text and/or a logo, and convert images at the edge.

POST /watermark?w=800&h=800&fit=cover&text=edgefn&logo=1&format=webp   (image in the body)
GET  /watermark/sample.jpg?logo=1&position=southeast&scale=0.25
"""

from __future__ import annotations

import os
import re
import time

from edgefn import App, HTTPError, Request, Response, signing
from edgefn.image import FITS, FORMATS, GRAVITIES, Image

app = App()

_COLOR = re.compile(r"#?[0-9a-fA-F]{6}")
_CROP = ("w", "h", "fit", "gravity")  # image_resize's, with its names and messages
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
    *_CROP,
)
_SOURCE_PARAMS = ("src",)  # query parameters that name the source, not the pipeline
_YEAR = 31536000


@app.post("/")
@app.get("/")
@app.get("/sample.jpg")
def watermark_request(request: Request) -> Response:
    return watermark(request, source(request))


def source(request: Request) -> Image:
    """The image to work on: the one place that knows where images come from.

    `src=<absolute URL>`: the original on an origin the manifest allows (its
    `ORIGIN` in [env]), fetched by the host; else the body of a POST; else the
    bundled sample."""
    src = request.query.get("src")
    if src is not None:
        if request.method == "POST" or request.path == "/sample.jpg":
            raise HTTPError(400, "give the image as src=... or as the body, not both")
        if not src.startswith(("http://", "https://")):
            raise HTTPError(
                400, f"src must be an absolute http:// or https:// URL, got {src[:200]!r}"
            )
        return Image.from_url(src)
    if request.method == "POST":
        return Image.from_body()
    if request.path == "/":
        raise HTTPError(400, "give src=<absolute URL> of the original, or POST the image")
    return Image.from_asset("sample.jpg")


def watermark(request: Request, image: Image) -> Response:
    key = os.environ.get("SIGNING_KEY", "")  # read per request: set at deploy, not build
    expires = signing.verify(request, key) if key else None  # 403 unless signed
    query = request.query
    unknown = sorted(set(query) - set(_PARAMS) - set(_SOURCE_PARAMS) - set(signing.PARAMS))
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
    crop = crop_params(query)
    if crop["w"] or crop["h"]:
        # First, so that the stamps are sized and placed on the picture that is sent.
        image = image.resize(crop["w"], crop["h"], fit=crop["fit"], gravity=crop["gravity"])
    # At one position the logo sits nearest the edge, the text beside it (the host
    # stacks stamps that share a gravity, in this order).
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
    # The same query gives the same picture: the edge cache (and any cache in
    # front) keeps it, but a signed URL with an expiry must not outlive it there.
    max_age = _YEAR if expires is None else max(0, min(_YEAR, expires - int(time.time())))
    headers = {"cache-control": f"public, max-age={max_age}"}
    return image.send(fmt, int(quality), headers=headers)


# crop_params, _int and _choice are image_resize's, copied: each function is built
# from its own folder, so it cannot import its neighbour, and four query parameters
# are no SDK API. tests/test_app.py checks both answer the same for the same input.
def crop_params(query) -> dict:
    """w, h (1-8192, none by default), fit (default contain) and gravity (default center)."""
    return {
        "w": _int(query, "w", 1, 8192, None),
        "h": _int(query, "h", 1, 8192, None),
        "fit": _choice(query, "fit", FITS, "contain"),
        "gravity": _choice(query, "gravity", GRAVITIES, "center"),
    }


def _int(query, name: str, low: int, high: int, default: int | None) -> int | None:
    raw = query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise HTTPError(400, f"{name} must be a whole number from {low} to {high}, got {raw!r}")
    return int(raw)


def _choice(query, name: str, allowed: tuple[str, ...], default: str) -> str:
    value = query.get(name, default)
    if value not in allowed:
        raise HTTPError(400, f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


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
