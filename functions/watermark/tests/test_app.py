"""watermark natively, through edgefn.testing."""

import io
from pathlib import Path

import pytest
from PIL import Image, ImageChops

from edgefn.testing import TestClient, load_app

HERE = Path(__file__).resolve().parent.parent
client = TestClient(load_app(HERE), assets=HERE / "assets")


def decode(body: bytes) -> Image.Image:
    return Image.open(io.BytesIO(body)).convert("RGB")


def changed(a: Image.Image, b: Image.Image, box: tuple[int, int, int, int]) -> bool:
    return ImageChops.difference(a.crop(box), b.crop(box)).getbbox() is not None


def test_text_lands_in_its_corner_only() -> None:
    plain = decode(client.get("/sample.jpg?logo=1&opacity=0&format=png").body)
    stamped = decode(client.get("/sample.jpg?text=edgefn&opacity=1&size=0.1&format=png").body)
    assert changed(plain, stamped, (800, 600, 1200, 800))
    assert not changed(plain, stamped, (0, 0, 600, 400))


def test_logo_and_tiling() -> None:
    plain = decode(client.get("/sample.jpg?logo=1&opacity=0&format=png").body)
    tiled = decode(client.get("/sample.jpg?logo=1&position=tile&scale=0.1&format=png").body)
    assert changed(plain, tiled, (0, 0, 200, 200)) and changed(plain, tiled, (900, 500, 1200, 800))


def test_the_logo_is_the_default_watermark() -> None:
    plain = decode(client.get("/sample.jpg?logo=1&opacity=0&format=png").body)
    default = decode(client.get("/sample.jpg?format=png").body)
    assert changed(plain, default, (800, 600, 1200, 800))


def test_body_resize_and_format() -> None:
    body = (HERE / "assets" / "sample.jpg").read_bytes()
    response = client.post("/?text=hi&w=300&format=webp&q=70", body=body)
    assert response.headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(response.body)).size == (300, 200)


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("logo=0", "text"),
        ("text=a&position=middle", "position"),
        ("text=a&opacity=2", "opacity"),
        ("text=a&color=red", "color"),
        ("logo=2", "logo"),
        ("text=a&format=tiff", "format"),
        ("text=a&q=0", "q"),
        ("text=a&size=9", "size"),
        ("text=a&w=0", "w"),
        ("txt=a", "txt"),
    ],
)
def test_invalid_parameters_are_400(query: str, name: str) -> None:
    response = client.get(f"/sample.jpg?{query}")
    assert response.status == 400
    assert name in response.json()["error"]["message"]
