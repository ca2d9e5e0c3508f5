"""Both image functions behind a real gateway with two workers."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from PIL import Image

import attacks
from edgefn.signing import sign_url
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
    with GatewayProcess(data_dir, workers=2, extra_env=limit) as process:
        for directory in (RESIZE, WATERMARK, ROOT / "functions" / "hello"):
            result = CliRunner().invoke(
                main,
                [
                    "deploy",
                    str(directory),
                    "--gateway",
                    process.admin_url,
                    "--token",
                    process.token,
                ],
            )
            assert result.exit_code == 0, result.output
        for name in ("image-resize", "watermark", "hello"):
            process.wait_serving(name)
        yield process


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


def test_pixels_are_counted_per_function(gateway: GatewayProcess) -> None:
    def pixels(function: str) -> float:
        return gateway.metric("edgefn_image_pixels_total", function=function)

    before = pixels("image-resize")
    # A width no other test asks for: the edge cache cannot answer it.
    response = gateway.get("/image_resize/sample.jpg?w=317&format=png")
    assert response.status_code == 200, response.text
    assert pixels("image-resize") >= before + 317 * 211  # at least the output's
    assert gateway.get("/hello/").status_code == 200
    assert pixels("hello") == 0


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


def test_upload_crop_watermark_and_convert_in_one_request(gateway: GatewayProcess) -> None:
    body = encode(photo(1200, 900), "JPEG", quality=90)
    query = "w=400&h=400&fit=cover&text=edgefn&logo=1&format=webp"
    served = httpx.post(f"{gateway.public_url}/watermark?{query}", content=body)
    assert served.status_code == 200 and served.headers["content-type"] == "image/webp"
    assert decode(served.content).size == (400, 400)
    native = TestClient(load_app(WATERMARK), assets=WATERMARK / "assets").post(
        f"/?{query}", body=body
    )
    assert served.content == native.body


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
        assert response.json()["error"]["code"] == "image_too_large"
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
    error = response.json()["error"]
    assert error["code"] == "image_too_large" and "the limit is 5 MP" in error["message"]


KEY = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
SIGNED_AREA = "Signed URLs (tests/test_image_gateway.py, functions/*/tests)"


def _deploy_signed(gateway: GatewayProcess, tmp_path: Path, name: str, route: str) -> None:
    """image_resize again, under `name` at `route`, requiring signatures with KEY."""
    manifest = (
        (RESIZE / "edgefn.toml")
        .read_text()
        .replace('name = "image-resize"', f'name = "{name}"')
        .replace('route = "/image_resize"', f'route = "{route}"')
        .replace('SIGNING_KEY = ""', f'SIGNING_KEY = "{KEY}"')
    )
    archive = tmp_path / f"{name}.tar.gz"
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
    # Every worker has it once ten requests in a row, on new connections, find it.
    deadline, streak = time.monotonic() + 30, 0
    while streak < 10:
        assert time.monotonic() < deadline, f"{route} was not served in 30 s"
        streak = streak + 1 if gateway.get(f"{route}/sample.jpg").status_code != 404 else 0


def _refused(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def test_signed_urls(gateway: GatewayProcess, tmp_path: Path) -> None:
    _deploy_signed(gateway, tmp_path, "signed", "/signed")
    _deploy_signed(gateway, tmp_path, "signed-two", "/signed2")
    public = "/signed/sample.jpg?w=120&format=png"
    soon = int(time.time()) + 300
    good = sign_url(KEY, "GET", public, expires=soon)
    served = gateway.get(good)
    assert served.status_code == 200, served.text
    assert decode(served.content).size == (120, 80)
    assert httpx.head(gateway.public_url + good).status_code == 200
    assert gateway.get(sign_url(KEY, "GET", public)).status_code == 200  # no exp: no expiry

    assert _refused(gateway.get(public)) == (403, "missing_signature")
    assert _refused(gateway.get(public + "&sig=" + "0" * 64)) == (403, "invalid_signature")
    elsewhere = good.replace("/signed/", "/signed2/")
    cases = {
        "signed URL replayed on another route of the same function": gateway.get(elsewhere),
        "signed URL replayed on another route with a forged X-Edgefn-Route naming the signed one":
            gateway.get(elsewhere, headers={"x-edgefn-route": "/signed"}),
        "URL signed for POST replayed as GET":
            gateway.get(sign_url(KEY, "POST", public, expires=soon)),
        "signed URL with its exp pushed later":
            gateway.get(good.replace(f"exp={soon}", f"exp={soon + 86400}")),
        "signed URL with a parameter changed": gateway.get(good.replace("w=120", "w=4000")),
        "sig of non-ASCII text (was a 500 TypeError in the function)":
            gateway.get(public + "&sig=%C3%A9"),
    }  # fmt: skip
    for attack, response in cases.items():
        assert _refused(response) == (403, "invalid_signature"), attack
        attacks.record(SIGNED_AREA, attack, "403 invalid_signature")
    expired = gateway.get(sign_url(KEY, "GET", public, expires=int(time.time()) - 10))
    assert _refused(expired) == (403, "signature_expired")
    assert "expired" in expired.json()["error"]["message"]
    attacks.record(
        SIGNED_AREA, "signed URL used after its exp", "403 signature_expired (the guest's clock)"
    )
