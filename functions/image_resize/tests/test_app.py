"""image_resize natively, through edgefn.testing (the same Pillow pipeline as the host)."""

import io
import time
from pathlib import Path

import pytest
from PIL import Image

from edgefn.signing import sign_url
from edgefn.testing import TestClient, TestResponse, load_app

HERE = Path(__file__).resolve().parent.parent
client = TestClient(load_app(HERE), assets="assets")  # read from HERE, whatever the cwd


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
        ("w=8000&dpr=3", "w"),  # each in range, their product past the SDK's 16384
        ("h=6000&dpr=2.75", "h"),
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


KEY = "5ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75e"
ROUTE = {"x-edgefn-route": "/image_resize"}  # what the gateway sets


@pytest.fixture
def signed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGNING_KEY", KEY)


def relative(url: str, route: str = "/image_resize") -> str:
    """A signed public URL as the gateway hands it to the function: without its route."""
    rest = url.removeprefix(route)
    return rest if rest.startswith("/") else "/" + rest


def error(response: TestResponse) -> tuple[int, str]:
    return response.status, response.json()["error"]["code"]


@pytest.mark.usefixtures("signed")
def test_a_signed_url_is_served() -> None:
    url = sign_url(KEY, "GET", "/image_resize/sample.jpg?w=64&format=png")
    response = client.get(relative(url), headers=ROUTE)
    assert response.status == 200
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"


@pytest.mark.usefixtures("signed")
def test_a_signed_body_post_to_the_bare_route() -> None:
    body = (HERE / "assets" / "sample.jpg").read_bytes()
    for public in ("/image_resize?w=10&format=png", "/image_resize/?w=10&format=png"):
        url = sign_url(KEY, "POST", public)
        assert client.post(relative(url), body=body, headers=ROUTE).status == 200


@pytest.mark.usefixtures("signed")
def test_an_expiring_url_is_served_until_exp_and_cached_no_longer() -> None:
    expires = int(time.time()) + 600
    url = sign_url(KEY, "GET", "/image_resize/sample.jpg?w=64&format=png", expires=expires)
    response = client.get(relative(url), headers=ROUTE)
    assert response.status == 200
    max_age = int(response.headers["cache-control"].split("max-age=")[1].split(",")[0])
    assert 590 <= max_age <= 600


@pytest.mark.usefixtures("signed")
def test_an_expired_url_is_refused() -> None:
    url = sign_url(KEY, "GET", "/image_resize/sample.jpg?w=64", expires=int(time.time()) - 5)
    response = client.get(relative(url), headers=ROUTE)
    assert error(response) == (403, "signature_expired")
    assert "expired" in response.json()["error"]["message"]


@pytest.mark.usefixtures("signed")
@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("/sample.jpg?w=64&format=png", "missing_signature"),
        ("/sample.jpg?w=64&format=png&sig=" + "0" * 64, "invalid_signature"),
        ("/sample.jpg?w=64&format=png&sig=%C3%A9", "invalid_signature"),  # not ASCII: no 500
    ],
)
def test_missing_and_wrong_signatures_are_refused(url: str, code: str) -> None:
    assert error(client.get(url, headers=ROUTE)) == (403, code)


@pytest.mark.usefixtures("signed")
def test_a_signature_covers_every_parameter_and_exp() -> None:
    url = relative(sign_url(KEY, "GET", "/image_resize/sample.jpg?w=64", expires=2**31))
    assert client.get(url, headers=ROUTE).status == 200
    for forged in (url.replace("w=64", "w=65"), url.replace("exp=", "exp=9"), url + "&h=10"):
        assert error(client.get(forged, headers=ROUTE)) == (403, "invalid_signature")


@pytest.mark.usefixtures("signed")
def test_a_signature_is_for_one_method() -> None:
    posted = relative(sign_url(KEY, "POST", "/image_resize/sample.jpg?w=64"))
    assert error(client.get(posted, headers=ROUTE)) == (403, "invalid_signature")
    got = relative(sign_url(KEY, "GET", "/image_resize/?w=64"))
    body = (HERE / "assets" / "sample.jpg").read_bytes()
    assert error(client.post(got, body=body, headers=ROUTE)) == (403, "invalid_signature")


@pytest.mark.usefixtures("signed")
def test_a_signature_is_for_one_route() -> None:
    url = sign_url(KEY, "GET", "/thumbs/sample.jpg?w=64")  # the same function at /thumbs
    as_thumbs = client.get(relative(url, "/thumbs"), headers={"x-edgefn-route": "/thumbs"})
    assert as_thumbs.status == 200
    replayed = client.get(relative(url, "/thumbs"), headers=ROUTE)
    assert error(replayed) == (403, "invalid_signature")


def test_a_key_that_is_not_hex_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGNING_KEY", "secret")
    response = client.get("/sample.jpg?w=64", headers=ROUTE)
    assert error(response) == (500, "invalid_signing_key")
    assert "secret" not in response.text


ORIGIN = "http://127.0.0.1:9000"  # the manifest's [env] ORIGIN; TestClient answers for it
SAMPLE = (HERE / "assets" / "sample.jpg").read_bytes()
fetching = TestClient(
    load_app(HERE), assets="assets", fetch={f"{ORIGIN}/photos/sample.jpg": SAMPLE}
)


def test_src_fetches_the_original_and_equals_posting_it() -> None:
    fetching.fetched.clear()
    query = "w=300&h=300&fit=cover&format=webp"
    fetched = fetching.get(f"/?src={ORIGIN}/photos/sample.jpg&{query}")
    posted = fetching.post(f"/?{query}", body=SAMPLE)
    assert fetched.status == 200 and fetched.body == posted.body
    # Probed (for the ETag), then rendered: fetched once, natively as in the sandbox.
    assert [request.url for request in fetching.fetched] == [f"{ORIGIN}/photos/sample.jpg"]


@pytest.mark.parametrize(
    ("method", "url", "says"),
    [
        ("GET", "/?w=10", "give src="),
        ("GET", "/?src=photos/sample.jpg&w=10", "absolute"),
        ("POST", f"/?src={ORIGIN}/photos/sample.jpg", "not both"),
        ("GET", f"/sample.jpg?src={ORIGIN}/photos/sample.jpg", "not both"),
    ],
)
def test_src_mistakes_are_400(method: str, url: str, says: str) -> None:
    response = fetching.request(method, url, body=SAMPLE if method == "POST" else b"")
    assert response.status == 400 and says in response.json()["error"]["message"]


def test_an_unreachable_src_is_the_outbound_error() -> None:
    response = fetching.get(f"/?src={ORIGIN}/missing.jpg&w=10")
    assert response.status == 500
    assert response.json()["error"]["code"] == "outbound_not_allowed"


@pytest.mark.usefixtures("signed")
def test_a_signature_covers_src() -> None:
    url = sign_url(KEY, "GET", f"/image_resize/?src={ORIGIN}/photos/sample.jpg&w=50")
    assert fetching.get(relative(url), headers=ROUTE).status == 200
    other = relative(url).replace("sample.jpg", "other.jpg")
    assert fetching.get(other, headers=ROUTE).status == 403
