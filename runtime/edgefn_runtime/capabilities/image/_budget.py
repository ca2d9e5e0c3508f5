"""What image work costs, charged to the request before the work is done.

Pillow runs in the gateway process, outside the sandbox: its memory is not the
guest's linear memory and its CPU time burns no wasm fuel. So every allocation
and every pass over pixels is priced here first, and refused when the request
cannot pay: bytes against the function's memory limit, work against its fuel
and its wall-clock deadline. The prices are measured, not guessed (see below);
a pipeline that would break a budget fails before Pillow allocates a byte of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from PIL import Image

from edgefn_contract.image import ImageFailure  # shared with edgefn.testing's native runs

__all__ = [
    "COPY_FUEL",
    "DECODE_FUEL",
    "DECODE_MEMORY",
    "ENCODE_FUEL",
    "ENCODE_MEMORY",
    "PASTE_FUEL",
    "RASTER_FUEL",
    "RESIZE_FUEL",
    "STAMP_FUEL",
    "Budget",
    "ImageFailure",
    "image_bytes",
]

MiB = 1024 * 1024


# Pillow stores 1-byte modes in one byte a pixel, 16-bit ones in two, and every
# other mode (LA, RGB, RGBA, CMYK, I, F ...) in four: an RGB image of N pixels
# holds 4N bytes, not 3N.
_ONE_BYTE = frozenset({"1", "L", "P"})


def image_bytes(width: int, height: int, mode: str) -> int:
    """Bytes Pillow allocates for a `width` x `height` image in `mode`."""
    per_pixel = 1 if mode in _ONE_BYTE else 2 if mode.startswith("I;16") else 4
    return width * height * per_pixel


# Fuel per pixel. One unit is about a nanosecond of host CPU on the reference
# machine (2-core x86-64, Pillow 13), the same order as a wasm instruction, so
# a function's fuel bounds its host work and its own code alike. Each figure is
# the worst case measured there: 4 MP of RGB noise, which no codec compresses.
DECODE_FUEL = {"JPEG": 25, "PNG": 35, "GIF": 30, "WEBP": 110, "AVIF": 120, "BMP": 15, "TIFF": 40}
ENCODE_FUEL = {"jpeg": 30, "png": 470, "webp": 560, "avif": 2300, "gif": 110}
RESIZE_FUEL = 40  # Lanczos, per pixel of the larger of input and output
COPY_FUEL = 6  # new canvas, convert, crop, transpose, paste
STAMP_FUEL = 15  # paste through a mask, per mask pixel
PASTE_FUEL = 2500  # each paste call, whatever its size (a tiling makes thousands)
RASTER_FUEL = 20  # FreeType drawing text into its mask, per mask pixel

# Host memory a codec holds beyond the image it decodes into or encodes from,
# as a multiple of that image's bytes: the peak RSS growth measured for the same
# 4 MP image (libwebp decodes into a buffer of its own, then Pillow copies it;
# libavif and libwebp encoders convert to YUV and keep their analysis buffers).
DECODE_MEMORY = {"WEBP": 3.0, "AVIF": 1.0}
ENCODE_MEMORY = {"jpeg": 0.5, "png": 1.5, "webp": 5.5, "avif": 7.5, "gif": 2.2}

# Seconds of host CPU one unit of fuel stands for: a step predicted to run past
# the deadline is refused at once, since no Pillow call can be interrupted.
SECONDS_PER_FUEL = 1e-9


class Budget:
    """What one pipeline may use, and what it holds now.

    `max_memory` bounds the bytes of live Pillow images at any moment (with the
    codecs' own buffers); `spend(fuel)` takes fuel from the request and raises
    `ImageFailure("budget_exceeded")` when it runs out; `deadline` is the
    request's end on `time.monotonic()`'s clock.
    """

    def __init__(
        self,
        *,
        max_pixels: int = 40_000_000,
        max_memory: int = 1 << 30,
        max_output_bytes: int = 1 << 30,
        deadline: float | None = None,
        spend: Callable[[int], None] | None = None,
    ) -> None:
        self.max_pixels = max_pixels
        self.max_memory = max_memory
        self.max_output_bytes = max_output_bytes
        self.deadline = deadline
        self._spend = spend
        self.held = 0  # bytes of the images the pipeline keeps between steps
        self.peak = 0  # the most bytes held at once, with the step's own
        self.pixels = 0  # pixels decoded, produced, stamped or encoded

    def reserve(
        self, what: str, new_bytes: float, pixels: int, price: int, overhead: int = 0
    ) -> None:
        """Charge a step that allocates `new_bytes` next to what is held and
        passes over `pixels` at `price` fuel each (plus `overhead`), or raise
        `ImageFailure` without charging anything."""
        needed = self.held + int(new_bytes)
        if needed > self.max_memory:
            raise ImageFailure(
                "memory_limit",
                f"{what} needs {needed / MiB:.0f} MiB of host memory; the function's "
                f"memory limit is {self.max_memory / MiB:g} MiB",
            )
        fuel = pixels * price + overhead
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0 or fuel * SECONDS_PER_FUEL > left:
                raise ImageFailure(
                    "timeout",
                    f"{what} would take about {fuel * SECONDS_PER_FUEL:.1f} s; "
                    f"{max(left, 0):.1f} s of the request's time is left",
                )
        if self._spend is not None:
            self._spend(fuel)
        self.pixels += pixels
        self.peak = max(self.peak, needed)

    def hold(self, *images: Image.Image) -> None:
        """What the pipeline keeps from now on: exactly `images`."""
        self.held = sum(image_bytes(i.width, i.height, i.mode) for i in images)
