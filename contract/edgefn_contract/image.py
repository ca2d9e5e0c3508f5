"""The image capability's contract: what a pipeline may say and what comes back.

`edgefn.image` records pipelines in this vocabulary and the host's Pillow
pipeline accepts exactly it, inside a component and natively alike. The WIT
interface `edgefn:http/image` (`wit/edgefn.wit`) carries the same records.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "DEFAULT_BACKGROUND",
    "DEFAULT_FIT",
    "DEFAULT_FORMAT",
    "DEFAULT_GRAVITY",
    "DEFAULT_QUALITY",
    "DEFAULT_STAMP_GRAVITY",
    "DIRECTIONS",
    "ENTRY_POINT_GROUP",
    "ENTRY_POINT_NAME",
    "FAILURE_KINDS",
    "FITS",
    "FORMATS",
    "GRAVITIES",
    "INPUT_FORMATS",
    "MAX_SIDE",
    "MAX_SOURCE_BYTES",
    "MEDIA_TYPES",
    "STOPPING_KINDS",
    "Encoded",
    "ImageFailure",
    "ImageInfo",
    "ImageService",
    "ImageServiceFactory",
    "Source",
]

# Output formats, in no order of preference, and the media type each is sent as.
MEDIA_TYPES = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "avif": "image/avif",
    "gif": "image/gif",
}
FORMATS = tuple(MEDIA_TYPES)

# The formats the host decodes, and no other: each parser is attack surface, so
# EPS, PDF, PSD and Pillow's other readers stay off. As the README names them.
INPUT_FORMATS = ("JPEG", "PNG", "WebP", "AVIF", "GIF", "BMP", "TIFF")

FITS = ("cover", "contain", "fill", "inside", "outside")
GRAVITIES = (
    "north",
    "northeast",
    "east",
    "southeast",
    "south",
    "southwest",
    "west",
    "northwest",
    "center",
)
DIRECTIONS = ("horizontal", "vertical")

# What a pipeline means when it leaves a field out. The SDK always writes these
# fields, but a pipeline recorded by hand may not, and the host must then read it
# as the SDK would have written it.
DEFAULT_FIT = "contain"
DEFAULT_GRAVITY = "center"  # of a resize or a crop
DEFAULT_STAMP_GRAVITY = "southeast"  # of a text or an overlay
DEFAULT_FORMAT = "jpeg"
DEFAULT_QUALITY = 85
DEFAULT_BACKGROUND = "#ffffff"

# The largest width or height a resize may ask for (the pixel limit still applies
# to what it produces: a 16384-pixel side fits it only when the other is short).
MAX_SIDE = 16384

# Small bytes a function holds may be an image source up to this size: the host
# refuses more, whatever the guest claims (larger ones: the body or an asset).
MAX_SOURCE_BYTES = 64 * 1024

Source = tuple[str, Any]
"""("body", None), ("asset", name), ("bytes", data) or ("url", url): an image's input
as the SDK holds it."""

# The WIT `failure.kind` values (besides a `url` source's outbound failures,
# `outbound.IMAGE_FAILURE_PREFIX` + an `outbound.FAILURE_KINDS` kind). The
# stopping kinds are budget breaches: the host also stops the guest and the
# sandbox reports the limit, whatever the guest does.
STOPPING_KINDS = ("budget_exceeded", "memory_limit", "timeout")
FAILURE_KINDS = (
    "unsupported_image",
    "invalid_image",
    "image_too_large",
    "invalid_pipeline",
    "response_too_large",
    *STOPPING_KINDS,
)


class ImageFailure(Exception):
    """The pipeline cannot run; `kind` is one of `FAILURE_KINDS`."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class ImageInfo:
    """What `probe()` reads from the image header (the WIT `info` record)."""

    width: int
    height: int
    format: str
    orientation: int
    animated: bool
    digest: str


class Encoded(Protocol):
    """A rendered image as a native image service hands it back."""

    @property
    def data(self) -> bytes: ...

    @property
    def content_type(self) -> str: ...


class ImageService(Protocol):
    """The host's image capability for one request, run in-process.

    Raises `ImageFailure` with the kind and message the WIT interface would
    have returned for the same input.
    """

    def probe(self, source: Source) -> ImageInfo: ...

    def render(self, source: Source, pipeline: str) -> Encoded: ...


ImageServiceFactory = Callable[..., ImageService]
"""Called as `factory(body=bytes, assets=Path | None)` for each native request."""

# Where `edgefn.testing` finds the host's native image service: an entry point
# the runtime registers, so the SDK never imports the runtime.
ENTRY_POINT_GROUP = "edgefn.testing"
ENTRY_POINT_NAME = "image"
