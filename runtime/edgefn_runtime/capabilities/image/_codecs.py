"""Decoding and encoding with Pillow: which formats, what each costs, and the
checks every image passes (pixel count, response size) before work is done."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageColor, PngImagePlugin, UnidentifiedImageError

from edgefn_contract.image import (
    DEFAULT_BACKGROUND,
    DEFAULT_QUALITY,
    INPUT_FORMATS,
    MEDIA_TYPES,
    ImageInfo,
)

from ._budget import COPY_FUEL, ENCODE_FUEL, ENCODE_MEMORY, Budget, ImageFailure, image_bytes

__all__ = [
    "FORMATS",
    "Rendered",
    "check_pixels",
    "color",
    "color_profile",
    "encode",
    "open_image",
    "orientation",
    "probe",
    "reserve_copy",
]

# Pillow's own decompression-bomb guard (Image.MAX_IMAGE_PIXELS, 89 MP; refused
# past twice that) stays on as a second fence behind `Budget.max_pixels`.

# PNG text chunks are inflated into `info` when the header is read, before any
# budget can see them: Pillow allows 64 MiB (63 zTXt chunks of 1 MiB each made a
# 74 KB file cost 65 MiB and 0.2 s per probe). Images need none of it.
PngImagePlugin.MAX_TEXT_MEMORY = 1 << 20

# Decoders allowed (Pillow's names for the contract's INPUT_FORMATS), no others.
_DECODERS = [name.upper() for name in INPUT_FORMATS]


def read_asset(assets: Path | None, name: str, no_assets: str) -> bytes:
    """The bytes of the file `name` in a function's assets; `no_assets` is the
    message when the function has none. Nothing outside the folder is read."""
    if assets is None:
        raise ImageFailure("invalid_pipeline", no_assets)
    path = (assets / name).resolve()
    if assets.resolve() not in path.parents or not path.is_file():
        raise ImageFailure("invalid_pipeline", f"no asset named {name!r}")
    return path.read_bytes()


# Output format -> (Pillow's name for it, media type).
FORMATS = {name: (name.upper(), media_type) for name, media_type in MEDIA_TYPES.items()}

# libaom at speed 8 (imgproxy's default) encodes 2.3x faster than Pillow's 6
# for the same quality target; at 6 a 4 MP AVIF took 18 s of host CPU here.
_AVIF_SPEED = 8


@dataclass(frozen=True)
class Rendered:
    data: bytes
    width: int
    height: int
    format: str
    content_type: str


def probe(data: bytes) -> ImageInfo:
    """Header facts and a sha256 of `data`; no pixels are decoded."""
    with open_image(data) as image:
        return ImageInfo(
            width=image.width,
            height=image.height,
            format=(image.format or "").lower(),
            orientation=orientation(image),
            animated=bool(getattr(image, "is_animated", False)),
            digest=hashlib.sha256(data).hexdigest(),
        )


def check_pixels(width: int, height: int, budget: Budget, what: str = "the image is") -> None:
    """Refuse an input or a result of more pixels than the function may handle."""
    if width * height > budget.max_pixels:
        raise ImageFailure(
            "image_too_large",
            f"{what} {width}x{height} ({width * height / 1e6:.1f} MP); the limit is "
            f"{budget.max_pixels / 1e6:g} MP",
        )


def reserve_copy(
    budget: Budget, what: str, size: tuple[int, int], mode: str, extra: int = 0
) -> None:
    """Reserve a new `size` image in `mode` (plus `extra` bytes) and one pass over it."""
    budget.reserve(what, image_bytes(*size, mode) + extra, size[0] * size[1], COPY_FUEL)


def open_image(data: bytes) -> Image.Image:
    """Identify `data` and read its header; nothing is decoded yet."""
    try:
        return Image.open(io.BytesIO(data), formats=_DECODERS)
    except UnidentifiedImageError:
        raise ImageFailure(
            "unsupported_image",
            f"the input is not an image in a supported format ({', '.join(INPUT_FORMATS)})",
        ) from None
    except Image.DecompressionBombError as exc:  # Pillow's own fence, past 179 MP
        raise ImageFailure("image_too_large", f"the image is too large: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageFailure("invalid_image", f"the image header is corrupt: {exc}") from None


def orientation(image: Image.Image) -> int:
    # Image.getexif() decodes a whole PNG to look for EXIF after the pixels: a
    # bomb's worth of work. Read only EXIF the header already carried.
    raw = image.info.get("exif")
    if not isinstance(raw, bytes):
        return 1
    exif = Image.Exif()
    try:
        exif.load(raw)
        value = int(exif.get(0x0112, 1) or 1)
    except Exception:  # malformed EXIF is ignored, as browsers do
        return 1
    return value if 1 <= value <= 8 else 1


def color(value: str, mode: str) -> Any:
    try:
        return ImageColor.getcolor(value, mode)
    except ValueError:
        raise ImageFailure("invalid_pipeline", f"not a colour: {value!r}") from None


class _BoundedBuffer(io.BytesIO):
    """The encoder's output, refused as soon as it passes the response limit."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self._limit = limit

    def write(self, data: Any) -> int:
        if self.tell() + len(data) > self._limit:
            raise ImageFailure(
                "response_too_large",
                f"the encoded image is over the response limit of {self._limit} bytes",
            )
        return super().write(data)


# An ICC profile starts with a 128-byte header.
_ICC_HEADER = 128
# The profile's colour space, for each mode an encoder is given.
_PROFILE_SPACES = {"RGB": b"RGB ", "RGBA": b"RGB ", "L": b"GRAY", "LA": b"GRAY"}


def color_profile(image: Image.Image) -> bytes | None:
    """The ICC profile `image` came with, when it describes colours of its mode
    (RGB or grey): a CMYK profile would be wrong for the RGB pixels we make."""
    profile = image.info.get("icc_profile")
    if not isinstance(profile, bytes) or len(profile) < _ICC_HEADER:
        return None
    space = profile[16:20]  # the header's data colour space (ICC.1, 7.2.6)
    return profile if space in _PROFILE_SPACES.values() else None


def encode(
    image: Image.Image,
    fmt: str,
    output: dict[str, Any],
    budget: Budget,
    profile: bytes | None = None,
) -> Rendered:
    """`image` encoded as `fmt`, with no metadata but `profile` (the source's
    ICC profile, kept where the format carries one and it fits the mode)."""
    pil_format, content_type = FORMATS[fmt]
    quality = int(output.get("quality", DEFAULT_QUALITY))
    if not 1 <= quality <= 100:
        raise ImageFailure("invalid_pipeline", "quality must be 1 to 100")
    if image.mode == "RGBA" and fmt == "jpeg":
        background_color = color(output.get("background", DEFAULT_BACKGROUND), "RGB")
        reserve_copy(
            budget, "flattening transparency", image.size, "RGB", image_bytes(*image.size, "L")
        )
        flat = Image.new("RGB", image.size, background_color)
        flat.paste(image, (0, 0), image.getchannel("A"))
        budget.hold(image, flat)  # the caller still holds the RGBA image
        image = flat
    options: dict[str, Any] = {}
    if fmt in ("jpeg", "webp", "avif"):
        options["quality"] = quality
    if fmt == "jpeg":
        options.update(optimize=False, progressive=False)
    if fmt == "avif":
        options["speed"] = _AVIF_SPEED
    budget.reserve(
        f"encoding {image.width}x{image.height} as {fmt}",
        ENCODE_MEMORY[fmt] * image_bytes(*image.size, image.mode),
        image.width * image.height,
        ENCODE_FUEL[fmt],
    )
    if fmt == "gif" and image.mode != "L":
        # Pillow's default median cut took 4.8 s for 1 MP of noise here; the fast
        # octree takes 0.1 s, and GIF is a format of last resort anyway.
        image = image.quantize(method=Image.Quantize.FASTOCTREE)
    # Metadata is stripped: Pillow's PNG and AVIF writers copy what `info` holds
    # (the source's ICC profile, EXIF and XMP, when the image is the source).
    image.info.clear()
    if profile is not None and fmt != "gif" and _PROFILE_SPACES.get(image.mode) == profile[16:20]:
        # The colour profile is not metadata: without it, the pixels of a Display P3
        # or Adobe RGB photo are read as sRGB and look washed out.
        options["icc_profile"] = profile
    buffer = _BoundedBuffer(budget.max_output_bytes)
    image.save(buffer, pil_format, **options)
    data = buffer.getvalue()
    if len(data) > budget.max_output_bytes:
        raise ImageFailure(
            "response_too_large",
            f"the encoded image is {len(data)} bytes; "
            f"the response limit is {budget.max_output_bytes}",
        )
    return Rendered(data, image.width, image.height, fmt, content_type)
