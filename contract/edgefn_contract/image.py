"""The image capability's contract: what a pipeline may say and what comes back.

`edgefn.image` records pipelines in this vocabulary and the host's Pillow
pipeline accepts exactly it, inside a component and natively alike. The WIT
interface `edgefn:http/image` (`wit/edgefn.wit`) carries the same records.
"""

from __future__ import annotations

import re
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
    "NEGOTIATED_HEADER",
    "Source",
    "negotiate",
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


# A response header saying "I chose my format with `negotiate`": the gateway's
# edge cache then keys `Vary: Accept` on that choice instead of the header's
# exact text (and never sends this header on).
NEGOTIATED_HEADER = "x-edgefn-negotiated"


def negotiate(accept: str, fallback: str = DEFAULT_FORMAT) -> str:
    """The best output format for a client's `Accept` header: AVIF, WebP or `fallback`.

    The format with the highest q-value wins (`image/avif;q=0` never gets AVIF);
    ties go to the server's preference: AVIF, then WebP when the client names
    them, then `fallback`. A wildcard (`image/*`, `*/*`) makes AVIF and WebP
    acceptable too, but is not reason enough to prefer them to `fallback`:
    clients that cannot decode them send `*/*` as well (curl, older browsers).
    With no acceptable format, or no header, the answer is `fallback`.

    Answers chosen this way should carry `Vary: Accept`. In the contract because
    the gateway's cache negotiates the same way to key image variants (one
    entry per format, not one per browser's exact header).
    """
    # Hand-written rather than taken from a library (werkzeug's MIMEAccept, say):
    # this runs inside the component, where only the standard library and the
    # SDK are importable, and the SDK imposes no requirements on functions.
    ranges = _accept_ranges(accept) or [("*", "*", 1.0)]  # no header: anything (RFC 9110)
    best, best_rank = fallback, (0.0, 0, 0)
    for fmt in dict.fromkeys((*_PREFERRED, fallback)):  # in order, without repeats
        kind, _, subtype = MEDIA_TYPES.get(fmt, f"image/{fmt}").partition("/")
        weight, specificity = _weight(ranges, kind, subtype)
        if weight <= 0:
            continue  # not acceptable (q=0, or no range covers it)
        named = specificity == 2
        if fmt == fallback:
            tier = 1
        else:
            tier = 2 if named else 0
        preference = len(_PREFERRED) - _PREFERRED.index(fmt) if fmt in _PREFERRED else 0
        rank = (weight, tier, preference)
        if rank > best_rank:
            best, best_rank = fmt, rank
    return best


_PREFERRED = ("avif", "webp")  # smallest first, for the same quality
_QVALUE = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?")


def _accept_ranges(accept: str) -> list[tuple[str, str, float]]:
    """An Accept header's media ranges and weights (RFC 9110 §12.5.1).

    Malformed elements are skipped. Media-type parameters other than q are
    ignored: no format this service sends has any.
    """
    ranges = []
    for element in accept.split(","):
        media_range, *parameters = element.split(";")
        kind, slash, subtype = media_range.strip().lower().partition("/")
        if not slash or not kind or not subtype or (kind == "*" and subtype != "*"):
            continue
        weight: float | None = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":  # the first q is the weight
                value = value.strip()
                weight = float(value) if _QVALUE.fullmatch(value) else None
                break
        if weight is not None:
            ranges.append((kind, subtype, weight))
    return ranges


def _weight(ranges: list[tuple[str, str, float]], kind: str, subtype: str) -> tuple[float, int]:
    """The weight the most specific matching range gives `kind/subtype`, and that
    range's specificity (2 named, 1 `kind/*`, 0 `*/*`); (0, -1) when none matches.

    Among equally specific matches (a header that repeats itself) the highest wins.
    """
    found: tuple[int, float] = (-1, 0.0)
    for range_kind, range_subtype, weight in ranges:
        if range_kind == "*":
            specificity = 0
        elif range_kind != kind:
            continue
        elif range_subtype == "*":
            specificity = 1
        elif range_subtype == subtype:
            specificity = 2
        else:
            continue
        found = max(found, (specificity, weight))
    return found[1], found[0]
