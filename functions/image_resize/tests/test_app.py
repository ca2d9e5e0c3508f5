"""image_resize natively, through edgefn.testing (the same Pillow pipeline as the host)."""

import hashlib
import hmac
import io
from pathlib import Path
from urllib.parse import urlencode

import pytest
from PIL import Image

from edgefn.testing import TestClient, load_app

HERE = Path(__file__).resolve().parent.parent
client = TestClient(load_app(HERE), assets=HERE / "assets")


def decode(body: bytes) -> Image.Image:
    return Image.open(io.BytesIO(body))


def test_resizes_the_sample() -> None:
    response = client.get("/sample.jpg?w=300&format=png")
    assert response.status == 200
    assert response.headers["content-type"] == "image/png"
    assert decode(response.body).size == (300, 200)


def test_resizes_the_body_with_dpr_and_cover() -> None:
    body = (HERE / "assets" / "sample.jpg").read_bytes()
    response = client.post("/?w=100&h=100&fit=cover&dpr=2&format=webp", body=body)
    assert decode(response.body).size == (200, 200)
    assert decode(response.body).format == "WEBP"


@pytest.mark.parametrize(
    ("accept", "fmt"),
    [("image/avif,image/webp,*/*", "avif"), ("image/webp,*/*", "webp"), ("*/*", "jpeg")],
)
def test_auto_format_follows_accept(accept: str, fmt: str) -> None:
    response = client.get("/sample.jpg?w=64", headers={"accept": accept})
    assert response.headers["content-type"] == f"image/{fmt}"
    assert response.headers["vary"] == "Accept"


def test_etag_and_304_without_pixel_work() -> None:
    first = client.get("/sample.jpg?w=64&format=jpeg")
    etag = first.headers["etag"]
    assert first.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert "vary" not in first.headers
    again = client.get("/sample.jpg?format=jpeg&w=64", headers={"if-none-match": etag})
    assert again.status == 304 and again.body == b""
    other = client.get("/sample.jpg?w=65&format=jpeg")
    assert other.headers["etag"] != etag


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("w=0", "w"),
        ("w=abc", "w"),
        ("h=99999", "h"),
        ("fit=squash", "fit"),
        ("format=bmp", "format"),
        ("q=101", "q"),
        ("dpr=4", "dpr"),
        ("gravity=up", "gravity"),
        ("bg=red", "bg"),
        ("width=10", "width"),
    ],
)
def test_invalid_parameters_are_400_naming_the_parameter(query: str, name: str) -> None:
    response = client.get(f"/sample.jpg?{query}")
    assert response.status == 400
    assert f"{name}" in response.json()["error"]["message"]


def test_bad_images_have_their_statuses() -> None:
    assert client.post("/?w=10", body=b"not an image").status == 415
    truncated = (HERE / "assets" / "sample.jpg").read_bytes()[:3000]
    assert client.post("/?w=10", body=truncated).status == 422


def test_signed_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGNING_KEY", "secret")
    params = {"w": "64", "format": "png"}
    signed = "/image_resize/sample.jpg?" + urlencode(sorted(params.items()))
    sig = hmac.new(b"secret", signed.encode(), hashlib.sha256).hexdigest()
    headers = {"x-edgefn-route": "/image_resize"}
    good = client.get(f"/sample.jpg?w=64&format=png&sig={sig}", headers=headers)
    assert good.status == 200
    assert client.get("/sample.jpg?w=64&format=png&sig=00", headers=headers).status == 403
    assert client.get("/sample.jpg?w=65&format=png", headers=headers).status == 403
