"""Both image functions behind a real gateway with two workers."""

from __future__ import annotations

import hashlib
import hmac
import io
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from click.testing import CliRunner
from PIL import Image

import attacks
from edgefn.testing import TestClient, load_app
from edgefn_platform.cli import main
from edgefn_platform.gateway import pack_assets
from gateway_process import ROOT, GatewayProcess, worker_rss
from images import (
    encode,
    gif_with_screen,
    jpeg_declaring,
    jpeg_with_absurd_exif,
    photo,
    png_bomb,
)

AREA = "Hostile images (tests/test_image_gateway.py)"
RESIZE = ROOT / "functions" / "image_resize"
WATERMARK = ROOT / "functions" / "watermark"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    data_dir = tmp_path_factory.mktemp("images") / "data"
    # The operator caps decoded images at 5 MP for every function.
    limit = {"EDGEFN_MAXIMUMS_MAX_IMAGE_PIXELS": "5000000"}
    process = GatewayProcess(data_dir, workers=2, extra_env=limit).start()
    for directory in (RESIZE, WATERMARK, ROOT / "functions" / "hello"):
        result = CliRunner().invoke(
            main,
            ["deploy", str(directory), "--gateway", process.admin_url, "--token", process.token],
        )
        assert result.exit_code == 0, result.output
    time.sleep(1)
    yield process
    process.stop()


def decode(body: bytes) -> Image.Image:
    return Image.open(io.BytesIO(body))


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp", "avif", "gif"])
def test_every_format_through_the_gateway(gateway: GatewayProcess, fmt: str) -> None:
    response = gateway.get(f"/image_resize/sample.jpg?w=320&format={fmt}")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == f"image/{fmt}"
    assert int(response.headers["content-length"]) == len(response.content)
    assert decode(response.content).size == (320, 213)


def test_gateway_bytes_equal_native_bytes(gateway: GatewayProcess) -> None:
    query = "w=300&h=300&fit=cover&gravity=north&format=png"
    served = gateway.get(f"/image_resize/sample.jpg?{query}").content
    native = TestClient(load_app(RESIZE), assets=RESIZE / "assets").get(f"/sample.jpg?{query}")
    assert served == native.body


def test_auto_format_is_negotiated(gateway: GatewayProcess) -> None:
    for accept, fmt in (("image/avif,image/webp", "avif"), ("image/webp", "webp"), ("", "jpeg")):
        response = gateway.get("/image_resize/sample.jpg?w=100", headers={"accept": accept})
        assert response.headers["content-type"] == f"image/{fmt}"
        assert response.headers["vary"] == "Accept"


def test_if_none_match_answers_304(gateway: GatewayProcess) -> None:
    first = gateway.get("/image_resize/sample.jpg?w=100&format=webp")
    etag = first.headers["etag"]
    again = gateway.get(
        "/image_resize/sample.jpg?w=100&format=webp", headers={"if-none-match": etag}
    )
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == etag


def test_uploaded_image_and_watermark(gateway: GatewayProcess) -> None:
    body = encode(photo(900, 600), "JPEG", quality=90)
    resized = httpx.post(gateway.public_url + "/image_resize?w=450&format=png", content=body)
    assert decode(resized.content).size == (450, 300)
    stamped = httpx.post(
        gateway.public_url + "/watermark?text=edgefn&logo=1&format=jpeg", content=body
    )
    assert stamped.status_code == 200 and decode(stamped.content).size == (900, 600)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"not an image at all", 415, "unsupported_image"),
        (encode(photo(300, 200), "JPEG")[:1500], 422, "invalid_image"),
        (png_bomb(), 413, "image_too_large"),
    ],
)
def test_bad_images_get_their_status(
    gateway: GatewayProcess, body: bytes, status: int, code: str
) -> None:
    response = httpx.post(gateway.public_url + "/image_resize?w=100", content=body)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert gateway.get("/hello/").status_code == 200


def test_a_100_megapixel_bomb_is_refused_fast_without_memory_growth(
    gateway: GatewayProcess,
) -> None:
    bomb = png_bomb(10_000, 10_000)
    before = sum(rss for rss in worker_rss(gateway))
    started = time.perf_counter()
    for _ in range(10):
        response = httpx.post(gateway.public_url + "/image_resize?w=100", content=bomb)
        assert response.status_code == 413
    assert (time.perf_counter() - started) / 10 < 0.25
    assert sum(worker_rss(gateway)) - before < 100 * 2**20


def _hostile_images() -> list[tuple[str, bytes, int, str]]:
    png = encode(photo(300, 200), "PNG")
    jpeg = encode(photo(300, 200), "JPEG")
    return [
        ("PNG declaring 100,000 x 100,000", png_bomb(), 413, "image_too_large"),
        ("JPEG declaring 65,500 x 65,500", jpeg_declaring(65_500, 65_500), 413, "image_too_large"),
        ("GIF with a 65,535 x 65,535 logical screen", gif_with_screen(65_535, 65_535), 413,
         "image_too_large"),
        ("truncated PNG", png[: len(png) // 2], 422, "invalid_image"),
        ("truncated JPEG", jpeg[:1500], 422, "invalid_image"),
        ("PNG with a broken magic number", b"\x89PNX" + png[5:], 415, "unsupported_image"),
        ("random bytes", bytes(range(256)) * 64, 415, "unsupported_image"),
        ("CMYK JPEG", encode(photo(300, 200, "CMYK"), "JPEG"), 200, ""),
        ("16-bit greyscale PNG", encode(photo(300, 200, "I;16"), "PNG"), 200, ""),
        ("palette PNG", encode(photo(300, 200, "P"), "PNG"), 200, ""),
        ("greyscale + alpha (LA) PNG", encode(photo(300, 200, "LA"), "PNG"), 200, ""),
        ("JPEG with absurd EXIF values", jpeg_with_absurd_exif(), 200, ""),
    ]  # fmt: skip


def test_hostile_images_never_crash_or_grow_memory(gateway: GatewayProcess) -> None:
    before = sum(worker_rss(gateway))
    peak = before
    for attack, body, status, code in _hostile_images():
        for _ in range(3):  # repeated, so that a leak would show
            response = httpx.post(gateway.public_url + "/image_resize?w=100", content=body)
            assert response.status_code == status, (attack, response.text)
            if code:
                assert response.json()["error"]["code"] == code, attack
            else:
                assert decode(response.content).size[0] == 100, attack
            peak = max(peak, sum(worker_rss(gateway)))
        observed = f"{status} `{code}`" if code else "200, resized"
        attacks.record(AREA, attack, observed)
    assert gateway.get("/hello/").status_code == 200
    growth = (peak - before) / 2**20
    assert growth < 100, f"workers grew by {growth:.0f} MB"
    attacks.record(
        AREA, "all of the above, three times each", f"worker RSS grew by {growth:.0f} MB at most"
    )


def test_the_operator_pixel_limit_applies(gateway: GatewayProcess) -> None:
    body = encode(photo(3000, 2000), "JPEG", quality=80)  # 6 MP
    response = httpx.post(gateway.public_url + "/image_resize?w=100", content=body)
    assert response.status_code == 413
    assert "the limit is 5 MP" in response.json()["error"]["message"]


def test_signed_urls(gateway: GatewayProcess, tmp_path: Path) -> None:
    manifest = (RESIZE / "edgefn.toml").read_text()
    manifest = (
        manifest.replace('name = "image-resize"', 'name = "signed"')
        .replace('route = "/image_resize"', 'route = "/signed"')
        .replace('SIGNING_KEY = ""', 'SIGNING_KEY = "k3y"')
    )
    archive = tmp_path / "assets.tar.gz"
    pack_assets(RESIZE / "assets", archive)
    response = gateway.admin(
        "POST",
        "/v1/functions",
        data={"manifest": manifest},
        files={
            "component": ("c.wasm", (RESIZE / ".edgefn" / "image-resize.wasm").read_bytes()),
            "assets": ("a.tar.gz", archive.read_bytes()),
        },
    )
    assert response.status_code == 201, response.text
    time.sleep(1)
    query = urlencode(sorted({"w": "120", "format": "png"}.items()))
    sig = hmac.new(b"k3y", f"/signed/sample.jpg?{query}".encode(), hashlib.sha256).hexdigest()
    assert gateway.get(f"/signed/sample.jpg?{query}&sig={sig}").status_code == 200
    refused = gateway.get(f"/signed/sample.jpg?{query}&sig={'0' * 64}")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "invalid_signature"
    assert gateway.get(f"/signed/sample.jpg?{query}").status_code == 403
