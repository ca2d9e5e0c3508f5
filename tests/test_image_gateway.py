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

from edgefn.testing import TestClient, load_app
from edgefn_platform.cli import main
from edgefn_platform.gateway import pack_assets
from gateway_process import ROOT, GatewayProcess, worker_pids
from images import encode, photo, png_bomb

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
    before = sum(rss for rss in _rss(gateway))
    started = time.perf_counter()
    for _ in range(10):
        response = httpx.post(gateway.public_url + "/image_resize?w=100", content=bomb)
        assert response.status_code == 413
    assert (time.perf_counter() - started) / 10 < 0.25
    assert sum(_rss(gateway)) - before < 100 * 2**20


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


def _rss(gateway: GatewayProcess) -> list[int]:
    sizes = []
    for pid in worker_pids(gateway):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                sizes.append(int(line.split()[1]) * 1024)
    return sizes
