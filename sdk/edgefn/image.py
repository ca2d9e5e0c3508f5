"""Image processing for functions: record a pipeline, run it in one host call.

>>> from edgefn.image import Image
>>> @app.post("/thumb")
... def thumb(request):
...     return Image.from_body().resize(800, fit="contain").text("© edgefn").send("webp", 80)

Pixels never enter the function: the host decodes the source, applies every
operation and writes the encoded result straight into the response body.
Natively (`edgefn.testing`) the same pipeline runs in-process with Pillow.
"""

from __future__ import annotations

import json as _json
from dataclasses import dataclass, field
from typing import Any, Protocol

# The vocabulary is the contract's, shared with the host (edgefn_contract is
# compiled into every component beside this SDK).
from edgefn_contract.image import (
    DEFAULT_BACKGROUND,
    DEFAULT_FIT,
    DEFAULT_FORMAT,
    DEFAULT_GRAVITY,
    DEFAULT_QUALITY,
    DEFAULT_STAMP_GRAVITY,
    DIRECTIONS,
    FITS,
    FORMATS,
    GRAVITIES,
    MAX_SIDE,
    MAX_SOURCE_BYTES,
    NEGOTIATED_HEADER,
    ImageInfo,
    negotiate,
)
from edgefn_contract.outbound import IMAGE_FAILURE_PREFIX

from . import outbound
from ._exceptions import HTTPError
from ._responses import Response

__all__ = [
    "ACCEPT_NEGOTIATED",
    "FITS",
    "FORMATS",
    "GRAVITIES",
    "Image",
    "ImageError",
    "ImageInfo",
    "ImageTooLarge",
    "InvalidImage",
    "MAX_SIDE",
    "MAX_SOURCE_BYTES",
    "RenderedResponse",
    "UnsupportedImage",
    "negotiate",
    "raise_failure",
    "use_backend",
]


# The headers of an answer whose format `negotiate` chose from `Accept`: `Vary:
# Accept`, and a word to the gateway's edge cache that it may key the answer by
# that choice (one entry per format, not per browser's exact header); the
# gateway never sends the second on.
ACCEPT_NEGOTIATED = {"vary": "Accept", NEGOTIATED_HEADER: "1"}


class ImageError(HTTPError):
    """The image service refused the input or the pipeline; answers with its status."""


class UnsupportedImage(ImageError):
    def __init__(self, message: str) -> None:
        super().__init__(415, message, code="unsupported_image")


class InvalidImage(ImageError):
    def __init__(self, message: str) -> None:
        super().__init__(422, message, code="invalid_image")


class ImageTooLarge(ImageError):
    def __init__(self, message: str) -> None:
        super().__init__(413, message, code="image_too_large")


_ERRORS: dict[str, Any] = {
    "unsupported_image": UnsupportedImage,
    "invalid_image": InvalidImage,
    "image_too_large": ImageTooLarge,
}


def raise_failure(kind: str, message: str) -> None:
    """Raise the SDK exception for a failure `kind` reported by the image service."""
    if kind.startswith(IMAGE_FAILURE_PREFIX):
        # A `url` source the host could not fetch: the same error `fetch` raises.
        outbound.raise_failure(kind.removeprefix(IMAGE_FAILURE_PREFIX), message)
    error = _ERRORS.get(kind)
    if error is not None:
        raise error(message)
    if kind == "response_too_large":
        raise ImageError(502, message, code="response_too_large")
    if kind == "budget_exceeded":
        # The sandbox answers this as the fuel it is (503 fuel_exhausted); natively too.
        raise ImageError(503, message, code="fuel_exhausted")
    if kind == "memory_limit":
        raise ImageError(503, message, code=kind)
    if kind == "timeout":
        raise ImageError(504, message, code=kind)
    raise ValueError(f"image pipeline rejected: {message}")


class Backend(Protocol):
    """Runs pipelines: the host capability in wasm, Pillow in-process natively."""

    def probe(self, source: tuple[str, Any]) -> ImageInfo: ...

    def render(self, source: tuple[str, Any], pipeline: str) -> Response: ...


class RenderedResponse(Response):
    """An image response whose body (`length` bytes) the host rendered and holds."""

    def __init__(self, content_type: str, length: int) -> None:
        super().__init__(b"", headers={"content-type": content_type})
        self.length = length


_backend: Backend | None = None


def use_backend(backend: Backend) -> None:
    """Set by the guest glue or `edgefn.testing`; functions never call this."""
    global _backend
    _backend = backend


def _current() -> Backend:
    if _backend is None:
        raise RuntimeError("edgefn.image needs the edgefn runtime or edgefn.testing")
    return _backend


@dataclass(frozen=True)
class Image:
    """An image source and the operations to apply, in order. Each method returns
    a new `Image`; nothing runs until `send()` (or `probe()`)."""

    source: tuple[str, Any]
    ops: tuple[dict[str, Any], ...] = ()
    auto_orient: bool = True
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_body(cls) -> Image:
        """The request body."""
        return cls(("body", None))

    @classmethod
    def from_asset(cls, name: str) -> Image:
        """A file in the function's assets folder."""
        return cls(("asset", name))

    @classmethod
    def from_bytes(cls, data: bytes) -> Image:
        """Small bytes the function holds (at most 64 KiB): a logo it embeds, an
        image it made. Larger images come as the request body or an asset."""
        data = bytes(data)
        if len(data) > MAX_SOURCE_BYTES:
            raise ValueError(
                f"Image.from_bytes takes at most 64 KiB, got {len(data):,} bytes; "
                "send larger images as the request body or an asset"
            )
        return cls(("bytes", data))

    @classmethod
    def from_url(cls, url: str) -> Image:
        """An absolute http(s) URL the host fetches and decodes itself, under the
        manifest's `allowed_outbound_hosts`: the bytes never enter the function.
        A refused or failed fetch raises `fetch`'s errors (`OutboundNotAllowed`, ...)."""
        if not isinstance(url, str):
            raise TypeError(f"Image.from_url takes a str, got {type(url).__name__}")
        if not url[:8].lower().startswith(("http://", "https://")):
            raise ValueError(
                f"Image.from_url needs an absolute http:// or https:// URL, got {url!r}"
            )
        return cls(("url", url))

    def _with(self, op: dict[str, Any]) -> Image:
        return Image(self.source, (*self.ops, op), self.auto_orient, self.settings)

    def resize(
        self,
        width: int | None = None,
        height: int | None = None,
        *,
        fit: str = DEFAULT_FIT,
        gravity: str = DEFAULT_GRAVITY,
        upscale: bool = False,
        background: str = DEFAULT_BACKGROUND,
    ) -> Image:
        """Scale to `width` and/or `height`. Fits: cover (fill the box, crop the rest),
        contain (fit inside, pad to the box), fill (stretch), inside (fit inside, no
        padding), outside (cover the box, no crop). Never enlarges unless `upscale`."""
        _check(fit, FITS, "fit")
        _check(gravity, GRAVITIES, "gravity")
        for name, value in (("width", width), ("height", height)):
            if value is not None and (not isinstance(value, int) or not 1 <= value <= MAX_SIDE):
                raise ValueError(f"{name} must be an int from 1 to {MAX_SIDE}, got {value!r}")
        if width is None and height is None:
            raise ValueError("resize needs a width, a height or both")
        return self._with(
            {
                "op": "resize",
                "width": width,
                "height": height,
                "fit": fit,
                "gravity": gravity,
                "upscale": upscale,
                "background": background,
            }
        )

    def crop(
        self,
        width: int,
        height: int,
        *,
        gravity: str = DEFAULT_GRAVITY,
        left: int | None = None,
        top: int | None = None,
    ) -> Image:
        """Cut `width` x `height`: at `left`/`top`, or placed by `gravity`."""
        if left is not None or top is not None:
            return self._with(
                {"op": "crop", "left": left or 0, "top": top or 0, "width": width, "height": height}
            )
        _check(gravity, GRAVITIES, "gravity")
        return self._with({"op": "crop", "width": width, "height": height, "gravity": gravity})

    def rotate(self, degrees: int) -> Image:
        """Rotate clockwise by 90, 180 or 270 degrees."""
        if degrees % 90:
            raise ValueError(f"rotate takes multiples of 90 degrees, got {degrees}")
        return self._with({"op": "rotate", "degrees": degrees % 360})

    def flip(self, direction: str = "horizontal") -> Image:
        """Mirror left-right (`horizontal`) or top-bottom (`vertical`)."""
        _check(direction, DIRECTIONS, "direction")
        return self._with({"op": "flip", "direction": direction})

    def orient(self, auto: bool = True) -> Image:
        """Apply EXIF orientation first (the default) or keep the stored pixels."""
        return Image(self.source, self.ops, auto, self.settings)

    def text(
        self,
        text: str,
        *,
        size: float = 0.05,
        color: str = "#ffffff",
        opacity: float = 0.5,
        gravity: str = DEFAULT_STAMP_GRAVITY,
        margin: float = 0.02,
        tile: bool = False,
    ) -> Image:
        """Stamp `text`; `size` and `margin` are fractions of the image width."""
        op = {"op": "text", "text": text, "size": size, "color": color}
        return self._stamp(op, opacity, gravity, margin, tile)

    def overlay(
        self,
        asset: str,
        *,
        scale: float = 0.2,
        opacity: float = 1.0,
        gravity: str = DEFAULT_STAMP_GRAVITY,
        margin: float = 0.02,
        tile: bool = False,
    ) -> Image:
        """Stamp an image from the assets; `scale` is its width over the image's width."""
        op = {"op": "overlay", "asset": asset, "scale": scale}
        return self._stamp(op, opacity, gravity, margin, tile)

    def _stamp(
        self, op: dict[str, Any], opacity: float, gravity: str, margin: float, tile: bool
    ) -> Image:
        _check(gravity, GRAVITIES, "gravity")
        placement = {"opacity": opacity, "gravity": gravity, "margin": margin, "tile": tile}
        return self._with({**op, **placement})

    def pipeline(
        self,
        format: str = DEFAULT_FORMAT,
        quality: int = DEFAULT_QUALITY,
        background: str = DEFAULT_BACKGROUND,
    ) -> str:
        """The JSON the host runs (what `send` sends)."""
        _check(format, FORMATS, "format")
        if not isinstance(quality, int) or not 1 <= quality <= 100:
            raise ValueError(f"quality must be an int from 1 to 100, got {quality!r}")
        output = {"format": format, "quality": quality, "background": background}
        return _json.dumps(
            {"auto_orient": self.auto_orient, "ops": list(self.ops), "output": output}
        )

    def send(
        self,
        format: str = DEFAULT_FORMAT,
        quality: int = DEFAULT_QUALITY,
        *,
        background: str = DEFAULT_BACKGROUND,
        status: int = 200,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """Run the pipeline and answer with the encoded image (metadata stripped but
        for the source's colour profile; transparency flattened onto `background`
        for JPEG)."""
        response = _current().render(self.source, self.pipeline(format, quality, background))
        response.status = status
        for key, value in (headers or {}).items():
            response.headers[key] = value
        return response

    def probe(self) -> ImageInfo:
        """Width, height, format, EXIF orientation, animation and sha256 of the source,
        read from its header without decoding pixels."""
        return _current().probe(self.source)


def _check(value: str, allowed: tuple[str, ...], name: str) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
