"""Test images made with Pillow: no binary fixtures."""

from __future__ import annotations

import io
import math
import random
import struct
import zlib
from dataclasses import dataclass
from urllib.parse import urlencode

from PIL import Image, ImageChops, ImageStat, PngImagePlugin, TiffImagePlugin


def photo(width: int = 600, height: int = 400, mode: str = "RGB", seed: int = 1) -> Image.Image:
    """A photographic-like picture: smooth gradients, shapes and noise."""
    rng = random.Random(seed)
    gradient = Image.linear_gradient("L").resize((width, height))
    radial = Image.radial_gradient("L").resize((width, height))
    noise = Image.frombytes("L", (width, height), rng.randbytes(width * height))
    noise = noise.point(lambda value: 96 + value // 4)
    image = Image.merge("RGB", (gradient, radial, noise))
    for _ in range(6):
        x, y = rng.randrange(width), rng.randrange(height)
        r = rng.randrange(10, max(11, width // 6))
        color = tuple(rng.randrange(256) for _ in range(3))
        image.paste(color, (max(0, x - r), max(0, y - r), min(width, x + r), min(height, y + r)))
    if mode == "RGBA":
        alpha = Image.linear_gradient("L").rotate(90).resize((width, height))
        image.putalpha(alpha)
    return image.convert(mode) if mode not in ("RGB", "RGBA") else image


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def jpeg_with_orientation(orientation: int, width: int = 400, height: int = 200) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(photo(width, height), "JPEG", quality=95, exif=exif.tobytes())


def animated_gif() -> bytes:
    frames = [photo(120, 80, seed=s).convert("P") for s in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header declares `width` x `height` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + 3 * min(width, 4096))
    data = compressor.compress(row * 16) + compressor.flush()
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


def psnr(a: Image.Image, b: Image.Image) -> float:
    """Peak signal-to-noise ratio in dB (inf when identical)."""
    assert a.size == b.size, (a.size, b.size)
    difference = ImageChops.difference(a.convert("RGB"), b.convert("RGB"))
    mse = sum(ImageStat.Stat(difference).sum2) / (a.width * a.height * 3)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) claims `width` x `height` (at most 65535)."""
    data = bytearray(encode(photo(64, 48), "JPEG", quality=80))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_with_screen(width: int, height: int) -> bytes:
    """A GIF with a 1x1 frame on a `width` x `height` logical screen."""
    return (
        b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
        b",\0\0\0\0\x01\0\x01\0\0\x02\x02\x44\x01\0;"
    )


def jpeg_with_absurd_exif() -> bytes:
    """A JPEG whose EXIF has an out-of-range orientation, a huge resolution and garbage."""
    exif = Image.Exif()
    exif[0x0112] = 65535  # orientation: only 1-8 mean anything
    exif[0x011A] = TiffImagePlugin.IFDRational(2**32 - 1, 1)  # x resolution
    exif[0x010F] = "x" * 10_000  # camera make
    exif[0x9286] = b"\xff" * 5000  # user comment
    return encode(photo(300, 200), "JPEG", quality=90, exif=exif.tobytes())


@dataclass(frozen=True)
class Bomb:
    """A request that makes the host's image work expensive, and what it must get."""

    name: str
    path: str  # with its query, under the gateway's public URL
    body: bytes
    status: int
    code: str


def noise(width: int, height: int, seed: int = 1) -> Image.Image:
    """RGB noise: what no codec compresses, the worst case for every encoder."""
    rng = random.Random(seed)
    return Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))


def image_bombs() -> list[Bomb]:
    """Small requests whose image work, uncharged, would cost the gateway GBs or
    many seconds; each against the shipped examples (128 MiB, 5 s, 4e9 fuel)."""
    wide = encode(Image.new("RGB", (16384, 1), (200, 30, 30)), "PNG")
    wide_rgba = encode(Image.new("RGBA", (16384, 1), (200, 30, 30, 128)), "PNG")
    resize = "/image_resize?w=8192&h=8192&dpr=2"
    return [
        Bomb("16384x1 PNG padded to 16384x16384 PNG", f"{resize}&format=png", wide, 413,
             "image_too_large"),
        Bomb("16384x1 RGBA PNG padded to 16384x16384 JPEG", f"{resize}&format=jpeg", wide_rgba,
             413, "image_too_large"),
        Bomb("6000x1 RGBA PNG padded to 6000x6000 (36 MP) JPEG",
             "/image_resize?w=6000&h=6000&format=jpeg",
             encode(Image.new("RGBA", (6000, 1), (200, 30, 30, 128)), "PNG"), 503,
             "memory_limit"),
        Bomb("200 x 'W' at size=0.5 on a 4000x1 PNG",
             "/watermark?" + urlencode({"text": "W" * 200, "size": "0.5", "format": "png"}),
             encode(Image.new("RGB", (4000, 1)), "PNG"), 503, "memory_limit"),
        Bomb("16-bit greyscale PNG, 6000x6000, flat", "/image_resize?format=png",
             encode(Image.new("I;16", (6000, 6000), 1000), "PNG"), 503, "memory_limit"),
        Bomb("36 MP JPEG re-encoded at full size", "/image_resize?format=jpeg",
             encode(Image.new("RGB", (6000, 6000), (90, 120, 150)), "JPEG"), 503,
             "memory_limit"),
        Bomb("1600x1600 noise encoded as AVIF (~6 s of encoder CPU)", "/image_resize?format=avif",
             encode(noise(1600, 1600), "PNG", compress_level=1), 504, "timeout"),
        Bomb("'.' tiled with no margin over 3000x3000",
             "/watermark?text=.&size=0.01&margin=0&position=tile&format=jpeg",
             encode(Image.new("RGB", (3000, 3000)), "PNG"), 500, "function_error"),
    ]  # fmt: skip


def tiled_tiff(width: int, height: int, tile: int) -> bytes:
    """An RGB TIFF of `width` x `height` stored as one deflated `tile` x `tile` tile."""
    data = zlib.compress(bytes(tile * tile * 3), 9)
    bits_at = 8 + len(data)
    entries = [
        (256, 4, 1, width), (257, 4, 1, height), (258, 3, 3, bits_at), (259, 3, 1, 8),
        (262, 3, 1, 2), (277, 3, 1, 3), (284, 3, 1, 1), (322, 4, 1, tile), (323, 4, 1, tile),
        (324, 4, 1, 8), (325, 4, 1, len(data)),
    ]  # fmt: skip
    ifd = struct.pack("<H", len(entries))
    ifd += b"".join(struct.pack("<HHII", *entry) for entry in entries) + struct.pack("<I", 0)
    header = b"II*\0" + struct.pack("<I", bits_at + 8)
    return header + data + struct.pack("<HHHH", 8, 8, 8, 0) + ifd


def jpeg_with_repeated_scans(copies: int, size: int = 600) -> bytes:
    """A progressive JPEG whose second scan is repeated `copies` times."""
    data = encode(Image.new("L", (size, size), 128), "JPEG", progressive=True, quality=90)
    first = data.index(b"\xff\xda")
    second = data.index(b"\xff\xda", first + 2)
    third = data.index(b"\xff\xda", second + 2)
    return data[:second] + data[second:third] * copies + data[third:]


def png_with_text(chunks: int, size: int = 1 << 20) -> bytes:
    """A 1x1 PNG carrying `chunks` zTXt chunks that each inflate to `size` bytes."""
    info = PngImagePlugin.PngInfo()
    for i in range(chunks):
        info.add_text(f"k{i}", "a" * size, zip=True)
    return encode(Image.new("RGB", (1, 1)), "PNG", pnginfo=info)
