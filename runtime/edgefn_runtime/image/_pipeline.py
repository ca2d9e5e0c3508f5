"""Image pipelines with Pillow: probe, decode, operations, encode.

Pure host code with no wasmtime in it: the sandbox's image capability calls it
for guests, and `edgefn.testing` calls it in-process, so both give the same
bytes for the same pipeline.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageColor, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

# The SDK's vocabulary is the contract's: the host accepts exactly what it records.
from edgefn.image import FITS, GRAVITIES, ImageInfo

__all__ = ["FORMATS", "Budget", "ImageFailure", "Rendered", "probe", "render"]

# Decoders allowed: no EPS/PDF/PSD and friends, whose parsers are attack surface.
_DECODERS = ["JPEG", "PNG", "WEBP", "GIF", "AVIF", "BMP", "TIFF"]
FORMATS = {
    "jpeg": ("JPEG", "image/jpeg"),
    "png": ("PNG", "image/png"),
    "webp": ("WEBP", "image/webp"),
    "avif": ("AVIF", "image/avif"),
    "gif": ("GIF", "image/gif"),
}
# Image.open refuses past twice this; our own check (Budget.max_pixels) comes first.
Image.MAX_IMAGE_PIXELS = None


class ImageFailure(Exception):
    """The pipeline cannot run; `kind` is one of the WIT `failure` kinds."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class Budget:
    """What one pipeline may use. `charge(pixels)` raises when fuel runs out."""

    max_pixels: int = 40_000_000
    max_decoded_bytes: int = 1 << 30
    max_output_bytes: int = 1 << 30
    charge: Callable[[int], None] = lambda _pixels: None


@dataclass(frozen=True)
class Rendered:
    data: bytes
    width: int
    height: int
    format: str
    content_type: str


def probe(data: bytes) -> ImageInfo:
    """Header facts and a sha256 of `data`; no pixels are decoded."""
    with _open(data) as image:
        return ImageInfo(
            width=image.width,
            height=image.height,
            format=(image.format or "").lower(),
            orientation=_orientation(image),
            animated=bool(getattr(image, "is_animated", False)),
            digest=hashlib.sha256(data).hexdigest(),
        )


def render(data: bytes, pipeline: dict[str, Any], assets: Path | None, budget: Budget) -> Rendered:
    """Run `pipeline` on the encoded image `data`."""
    output = pipeline.get("output", {})
    fmt = output.get("format", "jpeg")
    if fmt not in FORMATS:
        raise ImageFailure("invalid_pipeline", f"format must be one of {', '.join(FORMATS)}")
    ops = pipeline.get("ops", [])
    with _open(data) as source:
        if source.width * source.height > budget.max_pixels:
            raise ImageFailure(
                "image_too_large",
                f"the image is {source.width}x{source.height} "
                f"({source.width * source.height / 1e6:.1f} MP); the limit is "
                f"{budget.max_pixels / 1e6:.0f} MP",
            )
        orient = pipeline.get("auto_orient", True)
        _draft(source, ops, orient)
        bands = len(source.getbands())
        if source.width * source.height * bands > budget.max_decoded_bytes:
            raise ImageFailure(
                "memory_limit",
                "decoding the image needs more memory than the "
                f"limit of {budget.max_decoded_bytes // 2**20} MiB",
            )
        budget.charge(source.width * source.height)
        try:
            source.load()
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageFailure(
                "invalid_image", f"the image is corrupt or truncated: {exc}"
            ) from None
        image: Image.Image = source
        if orient and _orientation(source) != 1:
            image = ImageOps.exif_transpose(image)
        image = _normalise_mode(image)
    for op in ops:
        image = _apply(image, op, assets, budget)
    return _encode(image, fmt, output, budget)


def _open(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=_DECODERS)
    except UnidentifiedImageError:
        raise ImageFailure(
            "unsupported_image",
            "the input is not an image in a supported format (JPEG, PNG, WebP, AVIF, GIF, "
            "BMP, TIFF)",
        ) from None
    except Image.DecompressionBombError as exc:
        raise ImageFailure("image_too_large", str(exc)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageFailure("invalid_image", f"the image header is corrupt: {exc}") from None


def _orientation(image: Image.Image) -> int:
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


def _draft(image: Image.Image, ops: list[dict[str, Any]], orient: bool) -> None:
    # JPEG can decode at 1/2, 1/4 or 1/8 scale straight from the DCT: far less
    # work when the first operation shrinks the image anyway.
    if image.format != "JPEG" or not ops or ops[0].get("op") != "resize":
        return
    width, height = ops[0].get("width"), ops[0].get("height")
    swapped = orient and _orientation(image) in (5, 6, 7, 8)
    if swapped:
        width, height = height, width
    target = _fit_size(
        image.width, image.height, width, height, ops[0].get("fit", "inside"), upscale=False
    )
    # The largest reduction that still leaves at least the target size, as
    # imgproxy's shrink-on-load does; Lanczos does the rest.
    image.draft("RGB" if image.mode != "L" else "L", target)


def _normalise_mode(image: Image.Image) -> Image.Image:
    if image.mode in ("RGB", "RGBA", "L"):
        return image
    if image.mode.startswith("I;16") or image.mode == "I":
        return image.convert("I").point(lambda value: value / 256).convert("L")
    has_alpha = "A" in image.mode or "transparency" in image.info
    return image.convert("RGBA" if has_alpha else "RGB")


def _apply(
    image: Image.Image, op: dict[str, Any], assets: Path | None, budget: Budget
) -> Image.Image:
    kind = op.get("op")
    if kind == "resize":
        return _resize(image, op, budget)
    if kind == "crop":
        return _crop(image, op)
    if kind == "rotate":
        degrees = op.get("degrees", 0) % 360
        if degrees not in (0, 90, 180, 270):
            raise ImageFailure("invalid_pipeline", "rotate takes 90, 180 or 270 degrees")
        steps = {
            90: Image.Transpose.ROTATE_270,
            180: Image.Transpose.ROTATE_180,
            270: Image.Transpose.ROTATE_90,
        }
        return image.transpose(steps[degrees]) if degrees else image
    if kind == "flip":
        horizontal = op.get("direction", "horizontal") == "horizontal"
        return image.transpose(
            Image.Transpose.FLIP_LEFT_RIGHT if horizontal else Image.Transpose.FLIP_TOP_BOTTOM
        )
    if kind == "text":
        return _text(image, op, budget)
    if kind == "overlay":
        return _overlay(image, op, assets, budget)
    raise ImageFailure("invalid_pipeline", f"unknown operation {kind!r}")


def _fit_size(
    width: int, height: int, w: int | None, h: int | None, fit: str, upscale: bool
) -> tuple[int, int]:
    """The size the image is scaled to (before any crop or padding)."""
    if w is None and h is None:
        return width, height
    if w is None or h is None:
        scale = (w / width) if w is not None else (h / height)  # type: ignore[operator]
    elif fit == "fill":
        return (
            (w, h) if upscale or (w <= width and h <= height) else (min(w, width), min(h, height))
        )
    elif fit in ("cover", "outside"):
        scale = max(w / width, h / height)
    else:
        scale = min(w / width, h / height)
    if not upscale:
        scale = min(scale, 1.0)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _resize(image: Image.Image, op: dict[str, Any], budget: Budget) -> Image.Image:
    w, h = op.get("width"), op.get("height")
    fit = op.get("fit", "contain")
    if fit not in FITS:
        raise ImageFailure("invalid_pipeline", f"fit must be one of {', '.join(FITS)}")
    upscale = bool(op.get("upscale", False))
    size = _fit_size(image.width, image.height, w, h, fit, upscale)
    budget.charge(size[0] * size[1])
    if size != image.size:
        # reducing_gap: integer box reduction first, Lanczos for the last step.
        image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    gravity = op.get("gravity", "center")
    if w is None or h is None:
        return image
    if fit == "cover":
        return _crop(
            image,
            {"width": min(w, image.width), "height": min(h, image.height), "gravity": gravity},
        )
    # Letterbox to exactly w x h, unless the image was too small to reach the box.
    if fit == "contain" and image.size != (w, h) and (size[0] == w or size[1] == h):
        canvas_mode = "RGBA" if image.mode == "RGBA" else image.mode
        fill = (
            (0, 0, 0, 0)
            if canvas_mode == "RGBA"
            else _color(op.get("background", "#ffffff"), canvas_mode)
        )
        canvas = Image.new(canvas_mode, (w, h), fill)
        canvas.paste(image, _place(canvas.size, image.size, gravity, 0))
        return canvas
    return image


def _crop(image: Image.Image, op: dict[str, Any]) -> Image.Image:
    if "left" in op:
        box = (op["left"], op["top"], op["left"] + op["width"], op["top"] + op["height"])
        if box[0] < 0 or box[1] < 0 or box[2] > image.width or box[3] > image.height:
            raise ImageFailure(
                "invalid_pipeline",
                f"crop box {box} is outside the {image.width}x{image.height} image",
            )
        return image.crop(box)
    width, height = min(op["width"], image.width), min(op["height"], image.height)
    left, top = _place(image.size, (width, height), op.get("gravity", "center"), 0)
    return image.crop((left, top, left + width, top + height))


def _place(
    outer: tuple[int, int], inner: tuple[int, int], gravity: str, margin: int
) -> tuple[int, int]:
    """Top-left corner of `inner` inside `outer` for a compass gravity."""
    if gravity not in GRAVITIES:
        raise ImageFailure("invalid_pipeline", f"gravity must be one of {', '.join(GRAVITIES)}")
    free_x, free_y = outer[0] - inner[0], outer[1] - inner[1]
    x = free_x // 2
    y = free_y // 2
    if "west" in gravity:
        x = margin
    elif "east" in gravity:
        x = free_x - margin
    if gravity.startswith("north"):
        y = margin
    elif gravity.startswith("south"):
        y = free_y - margin
    return x, y


def _color(value: str, mode: str) -> Any:
    try:
        return ImageColor.getcolor(value, mode)
    except ValueError:
        raise ImageFailure("invalid_pipeline", f"not a colour: {value!r}") from None


def _stamp(
    image: Image.Image, fill: Image.Image, mask: Image.Image, op: dict[str, Any], budget: Budget
) -> Image.Image:
    """Paste `fill` through `mask` at the op's gravity and margin, or tiled."""
    if image.mode == "L":
        image = image.convert("RGB")
    margin = round(op.get("margin", 0.02) * image.width)
    if op.get("tile"):
        step_x, step_y = mask.width + 2 * margin + 1, mask.height + 2 * margin + 1
        positions = [
            (x, y)
            for y in range(margin, image.height, step_y)
            for x in range(margin, image.width, step_x)
        ]
    else:
        positions = [_place(image.size, mask.size, op.get("gravity", "southeast"), margin)]
    budget.charge(mask.width * mask.height * len(positions))
    for position in positions:
        image.paste(fill, position, mask)
    return image


def _text(image: Image.Image, op: dict[str, Any], budget: Budget) -> Image.Image:
    text = str(op.get("text", ""))
    if not text or len(text) > 200:
        raise ImageFailure("invalid_pipeline", "text must be 1 to 200 characters")
    size = max(6, round(op.get("size", 0.05) * image.width))
    font = ImageFont.load_default(size=size)
    left, top, right, bottom = font.getbbox(text)
    mask = Image.new("L", (max(1, int(right - left)), max(1, int(bottom - top))), 0)
    opacity = min(1.0, max(0.0, float(op.get("opacity", 0.5))))
    ImageDraw.Draw(mask).text((-left, -top), text, font=font, fill=round(255 * opacity))
    fill = Image.new("RGB", mask.size, _color(op.get("color", "#ffffff"), "RGB"))
    return _stamp(image, fill, mask, op, budget)


def _overlay(
    image: Image.Image, op: dict[str, Any], assets: Path | None, budget: Budget
) -> Image.Image:
    if assets is None:
        raise ImageFailure("invalid_pipeline", "overlay needs the function's assets")
    path = (assets / str(op.get("asset", ""))).resolve()
    if assets.resolve() not in path.parents or not path.is_file():
        raise ImageFailure("invalid_pipeline", f"no asset named {op.get('asset')!r}")
    with _open(path.read_bytes()) as logo:
        logo = logo.convert("RGBA")
    width = max(1, round(op.get("scale", 0.2) * image.width))
    height = max(1, round(logo.height * width / logo.width))
    budget.charge(width * height)
    logo = logo.resize((width, height), Image.Resampling.LANCZOS)
    opacity = min(1.0, max(0.0, float(op.get("opacity", 1.0))))
    mask = logo.getchannel("A").point(lambda a: math.floor(a * opacity))
    return _stamp(image, logo.convert("RGB"), mask, op, budget)


def _encode(image: Image.Image, fmt: str, output: dict[str, Any], budget: Budget) -> Rendered:
    pil_format, content_type = FORMATS[fmt]
    quality = int(output.get("quality", 85))
    if not 1 <= quality <= 100:
        raise ImageFailure("invalid_pipeline", "quality must be 1 to 100")
    if image.mode == "RGBA" and fmt == "jpeg":
        background = Image.new(
            "RGB", image.size, _color(output.get("background", "#ffffff"), "RGB")
        )
        background.paste(image, (0, 0), image.getchannel("A"))
        image = background
    options: dict[str, Any] = {}
    if fmt in ("jpeg", "webp", "avif"):
        options["quality"] = quality
    if fmt == "jpeg":
        options.update(optimize=False, progressive=False)
    budget.charge(image.width * image.height)
    buffer = io.BytesIO()
    image.save(buffer, pil_format, **options)  # no exif= : metadata is stripped
    data = buffer.getvalue()
    if len(data) > budget.max_output_bytes:
        raise ImageFailure(
            "response_too_large",
            f"the encoded image is {len(data)} bytes; "
            f"the response limit is {budget.max_output_bytes}",
        )
    return Rendered(data, image.width, image.height, fmt, content_type)
