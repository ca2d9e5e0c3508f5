"""watermark natively, through edgefn.testing."""

import io
import time
from pathlib import Path

import pytest
from PIL import Image, ImageChops

from edgefn.signing import sign_url
from edgefn.testing import TestClient, load_app

HERE = Path(__file__).resolve().parent.parent
client = TestClient(load_app(HERE), assets="assets")  # read from HERE, whatever the cwd
# The crop parameters are image_resize's: both functions must answer alike.
resize_client = TestClient(load_app(HERE.parent / "image_resize"), assets="assets")


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


def test_crop_watermark_and_convert_in_one_request() -> None:
    body = (HERE / "assets" / "sample.jpg").read_bytes()
    response = client.post("/?w=800&h=800&fit=cover&text=edgefn&logo=1&format=webp", body=body)
    assert response.status == 200
    assert response.headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(response.body)).size == (800, 800)


@pytest.mark.parametrize(
    "crop",
    ["w=400&h=400&fit=cover&gravity=west", "w=300&h=500&fit=fill", "h=200", "w=1500&h=1000"],
)
def test_the_crop_is_image_resizes(crop: str) -> None:
    # An invisible logo leaves the pixels as the crop made them (PNG: lossless).
    marked = decode(client.get(f"/sample.jpg?logo=1&opacity=0&{crop}&format=png").body)
    resized = decode(resize_client.get(f"/sample.jpg?{crop}&format=png").body)
    assert marked.size == resized.size
    assert ImageChops.difference(marked, resized).getbbox() is None


def test_contain_pads_to_the_box() -> None:
    padded = decode(client.get("/sample.jpg?w=1500&h=1000&fit=contain&format=png").body)
    assert padded.size == (1500, 1000)  # the 1200x800 sample, centred, not enlarged


def test_w_alone_is_a_width() -> None:
    assert decode(client.get("/sample.jpg?w=600&format=png").body).size == (600, 400)
    inside = decode(client.get("/sample.jpg?w=600&h=600&fit=inside&format=png").body)
    assert inside.size == (600, 400)


def box(a: Image.Image, b: Image.Image) -> tuple[int, int, int, int]:
    found = ImageChops.difference(a, b).getbbox()
    assert found is not None
    return found


@pytest.mark.parametrize("position", ["southeast", "north", "center"])
def test_text_and_logo_at_one_position_do_not_overlap(position: str) -> None:
    plain = decode(client.get("/sample.jpg?logo=1&opacity=0&format=png").body)
    logo = decode(client.get(f"/sample.jpg?logo=1&position={position}&format=png").body)
    both = decode(
        client.get(f"/sample.jpg?logo=1&text=edgefn&opacity=1&position={position}&format=png").body
    )
    logo_box, text_box = box(plain, logo), box(logo, both)  # what each stamp changed
    assert not (
        logo_box[0] < text_box[2]
        and text_box[0] < logo_box[2]
        and logo_box[1] < text_box[3]
        and text_box[1] < logo_box[3]
    )


@pytest.mark.parametrize(
    "query",
    ["w=0", "w=abc", "h=99999", "h=-1", "fit=squash", "gravity=up", "w=10&fit=Cover"],
)
def test_crop_parameters_are_checked_as_image_resize_checks_them(query: str) -> None:
    response = client.get(f"/sample.jpg?text=a&{query}")
    assert response.status == 400
    expected = resize_client.get(f"/sample.jpg?{query}").json()["error"]
    assert response.json()["error"] == expected


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
        ("text=a&h=0", "h"),
        ("text=a&fit=squash", "fit"),
        ("text=a&gravity=up", "gravity"),
        ("txt=a", "txt"),
    ],
)
def test_invalid_parameters_are_400(query: str, name: str) -> None:
    response = client.get(f"/sample.jpg?{query}")
    assert response.status == 400
    assert name in response.json()["error"]["message"]


KEY = "a11ce0a11ce0a11ce0a11ce0a11ce0a11ce0a11ce0a11ce0a11ce0a11ce0a11c"
ROUTE = {"x-edgefn-route": "/watermark"}  # what the gateway sets


def signed_get(public: str, route: str = "/watermark", **kwargs: int) -> tuple[int, str]:
    """GET the function's part of `public`, signed; the status and error code if any."""
    url = sign_url(KEY, "GET", public, **kwargs).removeprefix(route)
    response = client.get(url, headers=ROUTE)
    code = response.json()["error"]["code"] if response.status >= 400 else ""
    return response.status, code


def test_signed_urls_when_a_key_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGNING_KEY", KEY)
    public = "/watermark/sample.jpg?text=hi&w=100&format=png"
    assert signed_get(public) == (200, "")
    assert signed_get(public, expires=int(time.time()) + 60) == (200, "")
    assert signed_get(public, expires=int(time.time()) - 1) == (403, "signature_expired")
    assert signed_get("/elsewhere/sample.jpg?text=hi", route="/elsewhere") == (
        403,
        "invalid_signature",
    )
    unsigned = client.get("/sample.jpg?text=hi", headers=ROUTE)
    assert unsigned.status == 403 and unsigned.json()["error"]["code"] == "missing_signature"


def test_unsigned_urls_when_no_key_is_set() -> None:
    assert client.get("/sample.jpg?text=hi&w=100", headers=ROUTE).status == 200


ORIGIN = "http://127.0.0.1:9000"  # the manifest's [env] ORIGIN; TestClient answers for it


def test_src_crops_stamps_and_converts_the_fetched_original() -> None:
    sample = (HERE / "assets" / "sample.jpg").read_bytes()
    fetching = TestClient(load_app(HERE), assets="assets", fetch={f"{ORIGIN}/sample.jpg": sample})
    query = "w=200&h=200&fit=cover&text=edgefn&logo=1&format=webp"
    fetched = fetching.get(f"/?src={ORIGIN}/sample.jpg&{query}")
    assert fetched.status == 200 and fetched.headers["content-type"] == "image/webp"
    assert fetched.body == fetching.post(f"/?{query}", body=sample).body
    assert fetching.get("/?text=a").status == 400  # GET / names its source


def test_a_variant_is_cacheable_for_a_year() -> None:
    # The gateway's edge cache stores it: one pipeline run per variant.
    response = client.get("/sample.jpg?text=hi&format=png")
    assert response.status == 200
    assert response.headers["cache-control"] == "public, max-age=31536000"
