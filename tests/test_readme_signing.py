"""The README's signed-URL recipe, followed to the letter against a real gateway
serving functions/image_resize with the README's key: the example URL, an HMAC
computed by hand from the three documented lines, the `openssl` pipeline and
`edgefn sign`'s output are all served; and `w`/`h` times `dpr` past the SDK's
cap is the documented 400, not a 500."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest

from edgefn.signing import sign_url
from edgefn_platform import build
from edgefn_platform.gateway import pack_assets
from gateway_process import ROOT, GatewayProcess, serving

README = (ROOT / "README.md").read_text()
RESIZE = ROOT / "functions" / "image_resize"
SAMPLE = (RESIZE / "assets" / "sample.jpg").read_bytes()
# The README's example key, as its Python and shell examples spell it.
KEY = re.search(r'^KEY = "([0-9a-f]{64})"', README, re.MULTILINE).group(1)  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One worker serving image_resize at its own route, with SIGNING_KEY = KEY."""
    tmp = tmp_path_factory.mktemp("readme-signing")
    component = build(RESIZE).path
    manifest = (
        (RESIZE / "edgefn.toml").read_text().replace('SIGNING_KEY = ""', f'SIGNING_KEY = "{KEY}"')
    )
    assert KEY in manifest
    pack_assets(RESIZE / "assets", tmp / "assets.tar.gz")
    with serving(GatewayProcess(tmp / "data")) as process:
        response = process.admin(
            "POST",
            "/v1/functions",
            data={"manifest": manifest},
            files={
                "component": ("c.wasm", component.read_bytes()),
                "assets": ("a.tar.gz", (tmp / "assets.tar.gz").read_bytes()),
            },
        )
        assert response.status_code == 201, response.text
        process.wait_serving("image-resize")
        yield process


def readme_signature(method: str, path: str, params: list[tuple[str, str]]) -> str:
    """`sig` computed from the README's words, not from edgefn.signing."""
    # quote() leaves letters, digits and -._~ as they are, plus what `safe` names.
    lines = [
        method.upper(),  # 1. the method, upper case
        quote(path, safe="/"),  # 2. the path, route included
        # 3. every parameter but sig, name=value each encoded (/ too), sorted, joined by &
        "&".join(sorted(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params)),
    ]
    text = "\n".join(lines)  # joined by \n, no newline at the end
    return hmac.new(bytes.fromhex(KEY), text.encode(), hashlib.sha256).hexdigest()


PNG = ("format", "png")


def served_png(response: httpx.Response, width: int) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.content.startswith(b"\x89PNG")
    assert int.from_bytes(response.content[16:20], "big") == width  # IHDR width


def test_the_readme_example_url_is_served(gateway: GatewayProcess) -> None:
    (url,) = re.findall(r"^# '(/image_resize/[^']*sig=[0-9a-f]{64})'$", README, re.MULTILINE)
    served_png(gateway.get(url), 120)


def test_the_readme_openssl_recipe_signs_a_url_that_is_served(gateway: GatewayProcess) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl to run the shell recipe with")
    recipe = re.search(r"```sh\n(KEY=.*?openssl dgst.*?)\n```", README, re.DOTALL)
    assert recipe is not None
    # The recipe as printed, then the same pipeline for a body POST to the bare route.
    printed = recipe.group(1)
    signed = re.search(r"printf '([A-Z]+)\\n(/[^\\]*)\\n([^']*)'", printed)
    assert signed is not None
    method, path, query = signed.groups()
    assert (method, path, query) == (
        "GET",
        "/image_resize/sample.jpg",
        "exp=1893456000&format=png&w=120",
    )
    post = printed.replace(signed.group(0), "printf 'POST\\n/image_resize\\nformat=png&w=48'")
    for script, request in (
        (printed, lambda sig: gateway.get(f"{path}?{query}&sig={sig}")),
        (post, lambda sig: httpx.post(
            f"{gateway.public_url}/image_resize?w=48&format=png&sig={sig}", content=SAMPLE
        )),
    ):  # fmt: skip
        shell = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
        sig = shell.stdout.strip()
        assert re.fullmatch(r"[0-9a-f]{64}", sig), shell.stdout
        served_png(request(sig), 120 if script is printed else 48)


@pytest.mark.parametrize(
    ("method", "path", "params", "width"),
    [
        ("GET", "/image_resize/sample.jpg", [("w", "64"), ("format", "png")], 64),
        # a value that must be percent-encoded: "#ff8800" -> %23ff8800
        ("GET", "/image_resize/sample.jpg", [("w", "40"), ("bg", "#ff8800"), PNG], 40),
        ("GET", "/image_resize/sample.jpg", [("w", "32"), ("exp", "1893456000"), PNG], 32),
        ("HEAD", "/image_resize/sample.jpg", [("w", "64"), ("format", "png")], 0),
        # a body POST to the bare route and to the route with its slash
        ("POST", "/image_resize", [("w", "24"), ("format", "png")], 24),
        ("POST", "/image_resize/", [("w", "24"), ("format", "png")], 24),
    ],
)  # fmt: skip
def test_a_signature_computed_from_the_readme_is_accepted(
    gateway: GatewayProcess, method: str, path: str, params: list[tuple[str, str]], width: int
) -> None:
    # HEAD is checked as GET, so the client signs GET.
    sig = readme_signature("GET" if method == "HEAD" else method, path, params)
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params)
    url = f"{gateway.public_url}{path}?{query}&sig={sig}"
    response = httpx.request(method, url, content=SAMPLE if method == "POST" else None)
    if method == "HEAD":
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    else:
        served_png(response, width)


def test_the_path_without_the_route_does_not_verify(gateway: GatewayProcess) -> None:
    # What the function sees (`/sample.jpg`, no route) is not what is signed.
    params = [("w", "64"), ("format", "png")]
    for path in ("/sample.jpg", "sample.jpg"):
        sig = readme_signature("GET", path, params)
        response = gateway.get(f"/image_resize/sample.jpg?w=64&format=png&sig={sig}")
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "invalid_signature"


@pytest.mark.parametrize(
    ("args", "method", "width"),
    [
        (["/image_resize/sample.jpg?w=64&format=png", "--expires-in", "10m"], "GET", 64),
        (["{public}/image_resize/sample.jpg?w=56&format=png"], "GET", 56),  # a full URL
        (["-X", "POST", "/image_resize?w=24&format=png"], "POST", 24),
        (
            ["-X", "post", "{public}/image_resize/?w=20&format=png", "--expires-in", "90"],
            "POST",
            20,
        ),
    ],
)
def test_edgefn_sign_output_is_served(
    gateway: GatewayProcess, args: list[str], method: str, width: int
) -> None:
    command = [sys.executable, "-m", "edgefn_platform", "sign"]
    command += [arg.format(public=gateway.public_url) for arg in args]
    before = time.time()
    signed = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={**os.environ, "EDGEFN_SIGNING_KEY": KEY},
        timeout=60,
    )
    assert signed.returncode == 0, signed.stderr
    url = signed.stdout.strip()
    if not url.startswith("http"):
        url = gateway.public_url + url
    response = httpx.request(method, url, content=SAMPLE if method == "POST" else None)
    served_png(response, width)
    if "--expires-in" in args:
        lifetime = {"10m": 600, "90": 90}[args[args.index("--expires-in") + 1]]
        exp = int(re.search(r"[?&]exp=(\d+)", url).group(1))  # type: ignore[union-attr]
        assert before + lifetime <= exp <= time.time() + lifetime + 1  # rounded up to a second


@pytest.mark.parametrize(
    ("query", "name"),
    [("w=8000&dpr=3", "w"), ("h=8192&dpr=2.5", "h"), ("w=6000&h=6000&dpr=3", "w")],
)
def test_a_size_past_the_cap_is_a_400_naming_the_parameter(
    gateway: GatewayProcess, query: str, name: str
) -> None:
    # Each value is in its documented range; their product is past 16384.
    response = gateway.get(sign_url(KEY, "GET", f"/image_resize/sample.jpg?{query}"))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "bad_request"
    assert error["message"].startswith(f"{name} times dpr must be at most 16384 pixels")
