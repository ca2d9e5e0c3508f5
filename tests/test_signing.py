"""edgefn.signing: the documented recipe, its edges, the README's example and `edgefn sign`."""

from __future__ import annotations

import re
import shutil
import subprocess
import time

import pytest
from click.testing import CliRunner

from edgefn import App, HTTPError, Request, signing
from edgefn.signing import sign_url, signature, string_to_sign, verify
from edgefn_platform.cli import main
from gateway_process import ROOT

KEY = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"


def request(method: str, url: str, route: str = "/fn", **headers: str) -> Request:
    """`url` (route included) as the gateway hands it to the function."""
    path, _, query = url.partition("?")
    items = [*headers.items(), ("x-edgefn-route", route)]  # the gateway's comes last
    return Request(method, path.removeprefix(route) or "/", query_string=query, headers=items)


def refusal(method: str, url: str, route: str = "/fn", **headers: str) -> tuple[int, str]:
    with pytest.raises(HTTPError) as refused:
        verify(request(method, url, route, **headers), KEY)
    return refused.value.status, refused.value.code


def test_the_string_to_sign_is_the_documented_text() -> None:
    url = "/image_resize/sample.jpg?w=120&format=png&exp=1893456000&sig=ignored"
    expected = "GET\n/image_resize/sample.jpg\nexp=1893456000&format=png&w=120"
    assert string_to_sign("get", url) == expected


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("/fn/a%41?x=a+b", "/fn/aA?x=a%20b"),  # percent-encoding and `+` do not matter
        ("/fn/a?b=2&a=1&a=0", "/fn/a?a=0&b=2&a=1"),  # nor the order of the parameters
        ("https://cdn.example/fn/a?k=v", "/fn/a?k=v"),  # nor the host
    ],
)
def test_equivalent_urls_sign_alike(one: str, other: str) -> None:
    assert signature(KEY, "GET", one) == signature(KEY, "GET", other)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("/fn/a%0Ab=1", "/fn/a?b=1"),  # a newline in the path cannot forge the query line
        ("/fn/a?b=1%26c%3D2", "/fn/a?b=1&c=2"),  # nor an encoded & and = in a value
        ("/fn/a%3Fb=1", "/fn/a?b=1"),  # nor an encoded ?
        ("/fn/a?x=", "/fn/a"),  # an empty parameter is a parameter
    ],
)
def test_different_requests_sign_differently(one: str, other: str) -> None:
    assert string_to_sign("GET", one) != string_to_sign("GET", other)


def test_a_signed_url_verifies_for_its_method_path_and_route_only() -> None:
    url = sign_url(KEY, "GET", "/fn/item?id=7")
    assert verify(request("GET", url), KEY) is None
    assert verify(request("HEAD", url), KEY) is None  # GET without the body
    assert refusal("DELETE", url) == (403, "invalid_signature")
    assert refusal("GET", url.replace("/fn/", "/other/"), route="/other") == (
        403,
        "invalid_signature",
    )


def test_a_signature_is_for_one_method_in_an_app() -> None:
    app = App()

    @app.route("/item", methods=["GET", "DELETE"])
    def item(request: Request) -> str:
        verify(request, KEY)
        return request.method

    url = sign_url(KEY, "GET", "/fn/item?id=7")
    assert app.handle(request("GET", url)).body == b"GET"
    deleted = app.handle(request("DELETE", url))
    assert deleted.status == 403 and b"invalid_signature" in deleted.body


def test_the_gateway_route_header_wins_over_a_client_one() -> None:
    url = sign_url(KEY, "GET", "/signed/a")
    # The client asks /other/a and sends its own X-Edgefn-Route naming the signed route;
    # the gateway appends the real one after it.
    forged = request(
        "GET", url.replace("/signed/", "/other/"), "/other", **{"X-Edgefn-Route": "/signed"}
    )
    with pytest.raises(HTTPError) as refused:
        verify(forged, KEY)
    assert refused.value.code == "invalid_signature"


def test_the_bare_route_and_its_slash_both_verify() -> None:
    for public in ("/fn", "/fn/"):
        url = sign_url(KEY, "POST", public + "?w=1")
        assert verify(request("POST", url), KEY) is None


def test_expiry() -> None:
    url = sign_url(KEY, "GET", "/fn/a", expires=1_000)
    assert verify(request("GET", url), KEY, now=1_000) == 1_000
    with pytest.raises(HTTPError) as expired:
        verify(request("GET", url), KEY, now=1_001)
    assert (expired.value.status, expired.value.code) == (403, "signature_expired")
    assert "expired 1 s ago" in expired.value.message


@pytest.mark.parametrize("exp", ["soon", "-1", "1e9", "1" * 13, "١٢٣"])
def test_a_signed_exp_that_is_not_a_time_is_400(exp: str) -> None:
    url = sign_url(KEY, "GET", f"/fn/a?exp={exp}")
    assert refusal("GET", url) == (400, "invalid_expiry")


@pytest.mark.parametrize(
    ("tail", "code"),
    [
        ("", "missing_signature"),
        ("&sig=", "invalid_signature"),
        ("&sig=%FF%FE", "invalid_signature"),  # not ASCII, not UTF-8
        ("&sig=SIG&sig=SIG", "invalid_signature"),  # a valid sig twice
    ],
)
def test_missing_and_malformed_signatures(tail: str, code: str) -> None:
    sig = signature(KEY, "GET", "/fn/a?w=1")
    assert refusal("GET", "/fn/a?w=1" + tail.replace("SIG", sig)) == (403, code)


def test_upper_case_hex_verifies() -> None:
    url = sign_url(KEY, "GET", "/fn/a?w=1")
    sig = url.rsplit("sig=", 1)[1]
    assert verify(request("GET", url.replace(sig, sig.upper())), KEY) is None


def test_sign_url_replaces_sig_and_exp_and_keeps_the_rest() -> None:
    once = sign_url(KEY, "GET", "https://cdn.example/fn/a?w=1&w=2#top", expires=5)
    assert once.startswith("https://cdn.example/fn/a?w=1&w=2&exp=5&sig=")
    assert once.endswith("#top")
    again = sign_url(KEY, "GET", once, expires=6)
    assert again.count("sig=") == 1 and "exp=6" in again and "exp=5" not in again
    with pytest.raises(ValueError, match="expires"):
        sign_url(KEY, "GET", "/fn/a", expires=-1)


@pytest.mark.parametrize("key", ["", "secret", "00" * 15, b"short"])
def test_weak_or_malformed_keys_are_refused(key: str | bytes) -> None:
    with pytest.raises(ValueError, match="signing key"):
        signing.parse_key(key)
    with pytest.raises(HTTPError) as refused:
        verify(request("GET", "/fn/a?sig=00"), key)
    assert (refused.value.status, refused.value.code) == (500, "invalid_signing_key")


def test_raw_bytes_keys() -> None:
    assert signing.parse_key(b"k" * 16) == b"k" * 16
    raw = sign_url(bytes.fromhex(KEY), "GET", "/fn/a")
    assert raw == sign_url(KEY, "GET", "/fn/a")


def test_the_readme_example_is_what_the_code_and_openssl_compute() -> None:
    readme = (ROOT / "README.md").read_text()
    url = sign_url(KEY, "GET", "/image_resize/sample.jpg?w=120&format=png", expires=1893456000)
    assert f"# '{url}'" in readme
    assert f'KEY = "{KEY}"' in readme and f"KEY={KEY}\n" in readme
    if shutil.which("openssl") is None:
        pytest.skip("no openssl to check the shell recipe with")
    recipe = re.search(r"```sh\n(KEY=.*?openssl dgst.*?)\n```", readme, re.DOTALL)
    assert recipe is not None
    shell = subprocess.run(
        ["sh", "-c", recipe.group(1)], capture_output=True, text=True, check=True
    )
    assert shell.stdout.strip() == url.rsplit("sig=", 1)[1]


def test_edgefn_sign() -> None:
    runner = CliRunner()
    env = {"EDGEFN_SIGNING_KEY": KEY}
    result = runner.invoke(
        main, ["sign", "/fn/a?w=1", "-X", "post", "--expires-in", "90m"], env=env
    )
    assert result.exit_code == 0, result.output
    url = result.output.strip()
    expires = verify(request("POST", url), KEY)
    assert expires is not None and abs(expires - (time.time() + 5400)) < 5
    assert runner.invoke(main, ["sign", "/fn/a"], env={"EDGEFN_SIGNING_KEY": "k3y"}).exit_code == 2
    no_key = runner.invoke(main, ["sign", "/fn/a"], env={"EDGEFN_SIGNING_KEY": ""})
    assert no_key.exit_code == 2 and "--key" in no_key.output
