"""Image pipelines with Pillow: decode, operations, encode.

Pure host code with no wasmtime in it: the sandbox's image capability calls it
for guests, and `edgefn.testing` calls it in-process, so both give the same
bytes for the same pipeline. Every step reserves its memory, fuel and time from
the request's `Budget` before Pillow does the work (see `_budget.py`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont, ImageOps

# The contract's vocabulary, which the SDK records: the host accepts exactly it.
from edgefn_contract.image import (
    DEFAULT_BACKGROUND,
    DEFAULT_FIT,
    DEFAULT_FORMAT,
    DEFAULT_GRAVITY,
    DEFAULT_STAMP_GRAVITY,
    FITS,
    GRAVITIES,
)

from ._budget import (
    DECODE_FUEL,
    DECODE_MEMORY,
    PASTE_FUEL,
    RASTER_FUEL,
    RESIZE_FUEL,
    STAMP_FUEL,
    Budget,
    ImageFailure,
    image_bytes,
)
from ._codecs import (
    FORMATS,
    Rendered,
    check_pixels,
    color,
    color_profile,
    encode,
    open_image,
    orientation,
    read_asset,
    reserve_copy,
)

__all__ = ["render"]


# Caps on what a pipeline may ask for, whatever the budgets: a font this large
# already fills a 4K frame, and each stamp of a tiling is a paste of its own.
MAX_FONT_PX = 1000
MAX_TILES = 10_000
MAX_MARGIN = 0.5


def render(data: bytes, pipeline: dict[str, Any], assets: Path | None, budget: Budget) -> Rendered:
    """Run `pipeline` on the encoded image `data`."""
    output = pipeline.get("output", {})
    fmt = output.get("format", DEFAULT_FORMAT)
    if fmt not in FORMATS:
        raise ImageFailure("invalid_pipeline", f"format must be one of {', '.join(FORMATS)}")
    ops = pipeline.get("ops", [])
    image, profile = _decode(data, ops, bool(pipeline.get("auto_orient", True)), budget)
    budget.hold(image)  # the decoded source is gone if its mode was converted
    layout = _Layout()
    for op in ops:
        if op.get("op") in _STAMPS:
            image = _STAMPS[op["op"]](image, op, assets, budget, layout)
        else:
            layout = _Layout()  # the image changes under earlier stamps: start over
            image = _apply(image, op, budget)
        budget.hold(image)
    return encode(image, fmt, output, budget, profile)


def _decode(
    data: bytes, ops: list[dict[str, Any]], orient: bool, budget: Budget
) -> tuple[Image.Image, bytes | None]:
    """The decoded image, oriented and in RGB, RGBA or L, and its colour profile."""
    with open_image(data) as source:
        width, height = source.size
        check_pixels(width, height, budget)
        _draft(source, ops, orient)
        decoder = source.format or ""
        scratch = DECODE_MEMORY.get(decoder, 0.0) * image_bytes(*source.size, source.mode)
        pixels, overhead = source.width * source.height, 0
        if decoder == "JPEG":
            scans = _jpeg_scans(data)
            if scans > 1:
                # Several scans (progressive, or non-interleaved baseline) are decoded
                # through full-size coefficient buffers (two bytes a sample), and each
                # scan passes over them, whatever scale draft() chose: 5,000 repeated
                # scans in a 436 KB file took 18 s of host CPU.
                scratch += width * height * len(source.getbands()) * 2
                overhead = width * height * scans * _SCAN_FUEL
        elif decoder == "TIFF":
            scratch += _tiff_buffer(source)
        budget.reserve(
            f"decoding the {source.width}x{source.height} image",
            image_bytes(*source.size, source.mode) + scratch,
            pixels,
            DECODE_FUEL.get(decoder, 40),
            overhead,
        )
        try:
            source.load()
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageFailure(
                "invalid_image", f"the image is corrupt or truncated: {exc}"
            ) from None
        image: Image.Image = source
        profile = color_profile(source)
    del source  # from here on `image` is the only reference the budget accounts for
    budget.hold(image)
    if orient and orientation(image) != 1:
        reserve_copy(budget, "applying the EXIF orientation", image.size, image.mode)
        image = ImageOps.exif_transpose(image)
        budget.hold(image)
    return _normalise_mode(image, budget), profile


# Fuel per full-size pixel and scan of a multi-scan JPEG: measured 3.6 ms a scan
# for 36 MP of (empty) scans, doubled for scans that carry data.
_SCAN_FUEL = 2
# Legitimate progressive JPEGs have about 10 scans (mozjpeg's most: 12ish).
_MAX_SCANS = 100


def _jpeg_scans(data: bytes) -> int:
    """Start-of-scan markers in a JPEG (0xFF is byte-stuffed in entropy-coded data,
    so FFDA appears only as a marker)."""
    scans = data.count(b"\xff\xda")
    if scans > _MAX_SCANS:
        raise ImageFailure("invalid_image", f"the JPEG has {scans} scans; at most {_MAX_SCANS}")
    return scans


def _tiff_buffer(image: Image.Image) -> int:
    """The tile or strip buffer libtiff fills, which a TIFF sizes as it likes (a
    16x16 image with one 8192x8192 tile inflated 196 MiB)."""
    tags = getattr(image, "tag_v2", {})
    width = int(tags.get(322, image.width))  # TileWidth, else the image's width
    rows = int(tags.get(323, tags.get(278, image.height)))  # TileLength / RowsPerStrip
    bits = tags.get(258, (8,))  # BitsPerSample, one per sample
    bits = bits if isinstance(bits, tuple) else (bits,)
    samples = int(tags.get(277, len(bits)))
    return width * min(rows, 2**31) * samples * max(int(b) for b in bits) // 8


def _draft(image: Image.Image, ops: list[dict[str, Any]], orient: bool) -> None:
    # JPEG can decode at 1/2, 1/4 or 1/8 scale straight from the DCT: far less
    # work when the first operation shrinks the image anyway.
    if image.format != "JPEG" or not ops or ops[0].get("op") != "resize":
        return
    width, height = ops[0].get("width"), ops[0].get("height")
    swapped = orient and orientation(image) in (5, 6, 7, 8)
    if swapped:
        width, height = height, width
    target = _fit_size(
        image.width, image.height, width, height, ops[0].get("fit", DEFAULT_FIT), upscale=False
    )
    # The largest reduction that still leaves at least the target size, as
    # imgproxy's shrink-on-load does; Lanczos does the rest.
    image.draft("RGB" if image.mode != "L" else "L", target)


def _normalise_mode(image: Image.Image, budget: Budget) -> Image.Image:
    if image.mode in ("RGB", "RGBA", "L"):
        return image
    if image.mode.startswith("I;16") or image.mode == "I":
        # Scaled in the image's own mode, then narrowed: no 32-bit copy of a 16-bit image.
        extra = image_bytes(*image.size, "L")
        reserve_copy(budget, "converting to 8 bits", image.size, image.mode, extra)
        return image.point(lambda value: value / 256).convert("L")
    has_alpha = "A" in image.mode or "transparency" in image.info
    target = "RGBA" if has_alpha else "RGB"
    reserve_copy(budget, f"converting {image.mode} to {target}", image.size, target)
    return image.convert(target)


def _apply(image: Image.Image, op: dict[str, Any], budget: Budget) -> Image.Image:
    kind = op.get("op")
    if kind == "resize":
        return _resize(image, op, budget)
    if kind == "crop":
        return _crop(image, op, budget)
    if kind == "rotate":
        degrees = op.get("degrees", 0) % 360
        if degrees not in (0, 90, 180, 270):
            raise ImageFailure("invalid_pipeline", "rotate takes 90, 180 or 270 degrees")
        if not degrees:
            return image
        steps = {
            90: Image.Transpose.ROTATE_270,
            180: Image.Transpose.ROTATE_180,
            270: Image.Transpose.ROTATE_90,
        }
        reserve_copy(budget, "rotating", image.size, image.mode)
        return image.transpose(steps[degrees])
    if kind == "flip":
        horizontal = op.get("direction", "horizontal") == "horizontal"
        reserve_copy(budget, "flipping", image.size, image.mode)
        return image.transpose(
            Image.Transpose.FLIP_LEFT_RIGHT if horizontal else Image.Transpose.FLIP_TOP_BOTTOM
        )
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


_REDUCING_GAP = 3.0


def _resize(image: Image.Image, op: dict[str, Any], budget: Budget) -> Image.Image:
    w, h = op.get("width"), op.get("height")
    fit = op.get("fit", DEFAULT_FIT)
    if fit not in FITS:
        raise ImageFailure("invalid_pipeline", f"fit must be one of {', '.join(FITS)}")
    upscale = bool(op.get("upscale", False))
    size = _fit_size(image.width, image.height, w, h, fit, upscale)
    check_pixels(*size, budget, "the resized image would be")
    if size != image.size:
        budget.reserve(
            f"resizing to {size[0]}x{size[1]}",
            _resize_bytes(image.mode, image.size, size),
            max(image.width * image.height, size[0] * size[1]),
            RESIZE_FUEL,
        )
        # reducing_gap: integer box reduction first, Lanczos for the last step.
        image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=_REDUCING_GAP)
        budget.hold(image)
    gravity = op.get("gravity", DEFAULT_GRAVITY)
    if w is None or h is None:
        return image
    if fit == "cover":
        return _crop(
            image,
            {"width": min(w, image.width), "height": min(h, image.height), "gravity": gravity},
            budget,
        )
    # Letterbox to exactly w x h, as contain promises, also when the image was
    # smaller than the box and so kept its size (it is never enlarged to fill it).
    if fit == "contain" and image.size != (w, h):
        check_pixels(w, h, budget, "the padded image would be")
        fill = (
            (0, 0, 0, 0)
            if image.mode == "RGBA"
            else color(op.get("background", DEFAULT_BACKGROUND), image.mode)
        )
        reserve_copy(budget, f"padding to {w}x{h}", (w, h), image.mode)
        canvas = Image.new(image.mode, (w, h), fill)
        canvas.paste(image, _place(canvas.size, image.size, gravity, 0))
        return canvas
    return image


def _resize_bytes(mode: str, source: tuple[int, int], size: tuple[int, int]) -> int:
    """What Image.resize allocates from `source` to `size`, as Pillow 13 does it."""
    in_w, in_h = source
    total = image_bytes(*size, mode)
    if mode in ("LA", "RGBA"):  # premultiplied copies of the input and the output
        total += image_bytes(in_w, in_h, mode) + image_bytes(*size, mode)
    factor_x = int(in_w / size[0] / _REDUCING_GAP) or 1
    factor_y = int(in_h / size[1] / _REDUCING_GAP) or 1
    if factor_x > 1 or factor_y > 1:
        in_w, in_h = -(-in_w // factor_x), -(-in_h // factor_y)
        total += image_bytes(in_w, in_h, mode)
    # Lanczos resamples one axis into a temporary image, then the other.
    return total + image_bytes(size[0], in_h, mode)


def _crop(image: Image.Image, op: dict[str, Any], budget: Budget) -> Image.Image:
    if "left" in op:
        box = (op["left"], op["top"], op["left"] + op["width"], op["top"] + op["height"])
        if box[0] < 0 or box[1] < 0 or box[2] > image.width or box[3] > image.height:
            raise ImageFailure(
                "invalid_pipeline",
                f"crop box {box} is outside the {image.width}x{image.height} image",
            )
    else:
        width, height = min(op["width"], image.width), min(op["height"], image.height)
        left, top = _place(image.size, (width, height), op.get("gravity", DEFAULT_GRAVITY), 0)
        box = (left, top, left + width, top + height)
    if box == (0, 0, image.width, image.height):
        return image
    reserve_copy(budget, "cropping", (box[2] - box[0], box[3] - box[1]), image.mode)
    return image.crop(box)


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


def _fraction(op: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = op.get(name, default)
    if not isinstance(value, int | float) or not low <= value <= high:
        raise ImageFailure("invalid_pipeline", f"{name} must be from {low} to {high}")
    return float(value)


class _Layout:
    """Where the stamps placed so far at each gravity lie, so that the next one at
    the same gravity goes beside them rather than over them.

    Stamps at one gravity are stacked, in pipeline order: the first sits where its
    gravity and margin put it, each next one above it (south gravities) or below it
    (all others), `margin` away, aligned as its own gravity says. Tiled stamps cover
    the image anyway and take no part.
    """

    def __init__(self) -> None:
        self._bands: dict[str, tuple[int, int]] = {}  # gravity -> (top, bottom) used

    def place(
        self, outer: tuple[int, int], inner: tuple[int, int], gravity: str, margin: int
    ) -> tuple[int, int]:
        x, y = _place(outer, inner, gravity, margin)
        if gravity not in self._bands:
            self._bands[gravity] = (y, y + inner[1])
            return x, y
        top, bottom = self._bands[gravity]
        if gravity.startswith("south"):
            y = min(y, top - margin - inner[1])
        else:
            y = max(y, bottom + margin)
        self._bands[gravity] = (min(top, y), max(bottom, y + inner[1]))
        return x, y  # past the image's edge when the stack is taller: Pillow clips


def _stamp(
    image: Image.Image,
    fill: Any,
    mask: Image.Image,
    op: dict[str, Any],
    budget: Budget,
    layout: _Layout,
) -> Image.Image:
    """Paste `fill` (a colour or an image) through `mask` at the op's gravity and
    margin, beside the stamps already there (`layout`), or tiled over the image."""
    margin = round(_fraction(op, "margin", 0.02, 0, MAX_MARGIN) * image.width)
    if op.get("tile"):
        step_x, step_y = mask.width + 2 * margin + 1, mask.height + 2 * margin + 1
        columns = len(range(margin, image.width, step_x))
        rows = len(range(margin, image.height, step_y))
        if columns * rows > MAX_TILES:
            raise ImageFailure(
                "invalid_pipeline",
                f"tiling would stamp {columns * rows:,} copies; at most {MAX_TILES:,}",
            )
        positions: Iterator[tuple[int, int]] = (
            (x, y)
            for y in range(margin, image.height, step_y)
            for x in range(margin, image.width, step_x)
        )
        count = columns * rows
    else:
        gravity = op.get("gravity", DEFAULT_STAMP_GRAVITY)
        positions = iter([layout.place(image.size, mask.size, gravity, margin)])
        count = 1
    if image.mode == "L":
        reserve_copy(budget, "converting to RGB", image.size, "RGB")
        rgb = image.convert("RGB")
        # The caller still holds the L image while the stamps are pasted.
        budget.hold(image, rgb, mask, *([fill] if isinstance(fill, Image.Image) else []))
        image = rgb
    budget.reserve(
        f"stamping {count:,} times", 0, mask.width * mask.height * count, STAMP_FUEL,
        overhead=count * PASTE_FUEL,
    )  # fmt: skip
    for position in positions:
        image.paste(fill, position, mask)
    return image


def _text(
    image: Image.Image, op: dict[str, Any], assets: Path | None, budget: Budget, layout: _Layout
) -> Image.Image:
    # `assets` unused: every stamp takes the same arguments (see _STAMPS).
    text = str(op.get("text", ""))
    if not text or len(text) > 200:
        raise ImageFailure("invalid_pipeline", "text must be 1 to 200 characters")
    size = round(_fraction(op, "size", 0.05, 0, 1) * image.width)
    size = max(6, min(size, MAX_FONT_PX))
    font = ImageFont.load_default(size=size)
    left, top, right, bottom = font.getbbox(text)  # layout only, nothing drawn yet
    mask_size = (max(1, int(right - left)), max(1, int(bottom - top)))
    opacity = min(1.0, max(0.0, float(op.get("opacity", 0.5))))
    fill = color(op.get("color", "#ffffff"), "RGB")
    # The mask, and the bitmap FreeType draws the text into before it is copied there.
    budget.reserve(
        f"drawing the text at {size} px",
        2 * image_bytes(*mask_size, "L"),
        mask_size[0] * mask_size[1],
        RASTER_FUEL,
    )
    mask = Image.new("L", mask_size, 0)
    ImageDraw.Draw(mask).text((-left, -top), text, font=font, fill=round(255 * opacity))
    budget.hold(image, mask)
    return _stamp(image, fill, mask, op, budget, layout)


def _overlay(
    image: Image.Image, op: dict[str, Any], assets: Path | None, budget: Budget, layout: _Layout
) -> Image.Image:
    data = read_asset(assets, str(op.get("asset", "")), "overlay needs the function's assets")
    width = max(1, round(_fraction(op, "scale", 0.2, 0, 1) * image.width))
    with open_image(data) as logo:
        check_pixels(logo.width, logo.height, budget)
        height = max(1, round(logo.height * width / logo.width))
        # Decoded, as RGBA, resized (premultiplied copies), then its colour and mask.
        decoded = 2 * image_bytes(*logo.size, "RGBA")  # as stored, then as RGBA
        budget.reserve(
            "decoding the overlay", decoded, logo.width * logo.height,
            DECODE_FUEL.get(logo.format or "", 40),
        )  # fmt: skip
        budget.reserve(
            f"scaling the overlay to {width}x{height}",
            decoded
            + _resize_bytes("RGBA", logo.size, (width, height))
            + image_bytes(width, height, "RGB")
            + image_bytes(width, height, "L"),
            max(logo.width * logo.height, width * height),
            RESIZE_FUEL,
        )
        rgba = logo.convert("RGBA")
    rgba = rgba.resize((width, height), Image.Resampling.LANCZOS)
    opacity = min(1.0, max(0.0, float(op.get("opacity", 1.0))))
    mask = rgba.getchannel("A").point(lambda a: math.floor(a * opacity))
    fill = rgba.convert("RGB")
    del rgba
    budget.hold(image, fill, mask)
    return _stamp(image, fill, mask, op, budget, layout)


# The operations that stamp at a gravity, which `render` lays out together.
_STAMPS = {"text": _text, "overlay": _overlay}
