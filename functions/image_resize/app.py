"""image_resize: resize, crop and convert images at the edge.

POST /image_resize?w=800&format=auto      (image in the body)
GET  /image_resize/sample.jpg?w=400&h=400&fit=cover
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from urllib.parse import urlencode

from edgefn import App, HTTPError, Request, Response, signing
from edgefn.image import ACCEPT_NEGOTIATED, FITS, FORMATS, GRAVITIES, MAX_SIDE, Image, negotiate

app = App()

_COLOR = re.compile(r"#?[0-9a-fA-F]{6}")
_PARAMS = ("w", "h", "fit", "format", "q", "dpr", "gravity", "bg")
_SOURCE_PARAMS = ("src",)  # query parameters that name the source, not the pipeline
_YEAR = 31536000


@app.post("/")
@app.get("/")
@app.get("/sample.jpg")
def resize_request(request: Request) -> Response:
    return resize(request, source(request))


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


def resize(request: Request, source: Image) -> Response:
    expires = verify_signature(request)
    params = parse(request)
    fmt = params["format"]
    if fmt == "auto":
        fmt = negotiate(request.headers.get("accept", ""))
    info = source.probe()
    canonical = urlencode(sorted({**params, "format": fmt}.items()))
    etag = '"' + hashlib.sha256(f"{info.digest}?{canonical}".encode()).hexdigest()[:32] + '"'
    # A signed URL with an expiry must not outlive it in a cache in front.
    max_age = _YEAR if expires is None else max(0, min(_YEAR, expires - int(time.time())))
    headers = {"etag": etag, "cache-control": f"public, max-age={max_age}, immutable"}
    if params["format"] == "auto":
        headers.update(ACCEPT_NEGOTIATED)
    if etag in request.headers.get("if-none-match", ""):
        return Response(b"", 304, headers)  # no pixel work
    image = source
    dpr = params["dpr"]
    if params["w"] or params["h"]:
        image = image.resize(
            round(params["w"] * dpr) if params["w"] else None,
            round(params["h"] * dpr) if params["h"] else None,
            fit=params["fit"],
            gravity=params["gravity"],
            background=params["bg"],
        )
    return image.send(fmt, params["q"], background=params["bg"], headers=headers)


def parse(request: Request) -> dict:
    query = request.query
    unknown = sorted(set(query) - set(_PARAMS) - set(_SOURCE_PARAMS) - set(signing.PARAMS))
    if unknown:
        raise HTTPError(400, f"unknown parameter {unknown[0]!r} (allowed: {', '.join(_PARAMS)})")
    params = {
        **crop_params(query),
        "format": _choice(query, "format", ("auto", *FORMATS), "auto"),
        "q": _int(query, "q", 1, 100, 82),
        "dpr": _dpr(query),
        "bg": _color(query),
    }
    for name in ("w", "h"):
        # Each is in range alone, but dpr multiplies it: past the SDK's cap, resize()
        # would raise a ValueError, a 500 for what is the client's mistake.
        if params[name] and round(params[name] * params["dpr"]) > MAX_SIDE:
            raise HTTPError(
                400,
                f"{name} times dpr must be at most {MAX_SIDE} pixels, got "
                f"{name}={params[name]} and dpr={query.get('dpr')}",
            )
    return params


def verify_signature(request: Request) -> int | None:
    """With SIGNING_KEY (hex) set, 403 unless signed (see edgefn.signing); the expiry."""
    key = os.environ.get("SIGNING_KEY", "")  # read per request: set at deploy, not build
    return signing.verify(request, key) if key else None


# crop_params, _int and _choice are copied into functions/watermark (each function is
# built from its own folder); its tests check both answer the same for the same input.
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


def _dpr(query) -> float:
    raw = query.get("dpr", "1")
    try:
        dpr = float(raw)
    except ValueError:
        dpr = 0.0
    if not 1 <= dpr <= 3:
        raise HTTPError(400, f"dpr must be a number from 1 to 3, got {raw!r}")
    return dpr


def _color(query) -> str:
    raw = query.get("bg", "ffffff")
    if not _COLOR.fullmatch(raw):
        raise HTTPError(400, f"bg must be a hex colour like ff8800, got {raw!r}")
    return "#" + raw.lstrip("#")
