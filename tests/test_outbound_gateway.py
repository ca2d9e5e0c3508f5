"""Outbound HTTP end to end: functions behind a real gateway fetch from a loopback
origin (tests/origin_server.py), and every way the origin or the URL misbehaves
gives its documented outcome while the gateway stays healthy.

No request here reaches a non-loopback address: URLs naming one (169.254.169.254)
must be refused before any connection, which the host's own tests prove in process
(the connect step patched to fail); here the outcome and how fast it came.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from origin_server import OriginServer, originals

import attacks
from edgefn_contract.outbound import STATUSES
from edgefn_platform import build
from edgefn_platform.client import AdminClient
from edgefn_platform.gateway import pack_assets
from gateway_process import ROOT, GatewayProcess, closed_port
from images import decode

pytestmark = pytest.mark.wasm

AREA = "Outbound HTTP (tests/test_outbound_gateway.py)"
FUNCTION = Path(__file__).resolve().parent / "functions" / "outbound"
RESIZE = ROOT / "functions" / "image_resize"
TIMEOUT = 2.0  # the outbound function's [limits] timeout
MiB = 1024 * 1024
# The operator's caps for this module's gateway (per fetch, per request, fetches).
LIMITS = {
    "EDGEFN_OUTBOUND_ALLOWED_NETWORKS": "127.0.0.1/32",
    "EDGEFN_OUTBOUND_MAX_RESPONSE_BYTES": "4MiB",
    "EDGEFN_OUTBOUND_MAX_TOTAL_BYTES": "6MiB",
    "EDGEFN_OUTBOUND_MAX_FETCHES": "4",
    "EDGEFN_OUTBOUND_MAX_REDIRECTS": "5",
    "EDGEFN_OBSERVABILITY_USAGE_HEADER": "1",
}


def with_env(manifest: str, **values: str) -> str:
    """`manifest` with its [env] variables `values` set (each must be there)."""
    for name, value in values.items():
        manifest, found = re.subn(
            rf"^{name} = .*$", f"{name} = {json.dumps(value)}", manifest, flags=re.MULTILINE
        )
        assert found == 1, f"{name} is not in the manifest's [env]"
    return manifest


def deploy(gateway: GatewayProcess, folder: Path, manifest: str, temp: Path) -> None:
    """`folder`'s function (built once, cached), deployed with `manifest`: the
    component does not depend on [env], so the origins' ports need no rebuild."""
    result = build(folder)
    archive = None
    if result.manifest.assets:
        archive = temp / f"{result.manifest.name}-assets.tar.gz"
        pack_assets(folder / result.manifest.assets, archive)
    AdminClient(gateway.admin_url, gateway.token).deploy(manifest, result.path, archive)
    gateway.wait_serving(result.manifest.name)


def resize_manifest(origin: OriginServer) -> str:
    """image_resize's manifest allowing `origin` (through its [env] ORIGIN when the
    shipped manifest has one, else added here)."""
    manifest = (RESIZE / "edgefn.toml").read_text()
    if "allowed_outbound_hosts" not in manifest:
        head, env = manifest.split("[env]\n", 1)
        manifest = f'allowed_outbound_hosts = ["{{{{ ORIGIN }}}}"]\n{head}[env]\nORIGIN = ""\n{env}'
    return with_env(manifest, ORIGIN=origin.base)


@pytest.fixture(scope="module")
def other() -> Iterator[OriginServer]:
    """A second origin on 127.0.0.2: loopback, but outside allowed_networks."""
    with OriginServer("127.0.0.2") as server:
        yield server


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, origin: OriginServer, other: OriginServer
) -> Iterator[GatewayProcess]:
    temp = tmp_path_factory.mktemp("outbound")
    manifest = with_env(
        (FUNCTION / "edgefn.toml").read_text(),
        ORIGIN=origin.base,
        OTHER_ORIGIN=other.base,
        LOCALHOST=f"http://localhost:{origin.port}",
    )
    with GatewayProcess(temp / "data", extra_env=LIMITS) as process:
        deploy(process, FUNCTION, manifest, temp)
        deploy(process, RESIZE, resize_manifest(origin), temp)
        yield process


def call(gateway: GatewayProcess, route: str, **params: str) -> tuple[httpx.Response, float]:
    """GET /outbound/`route` with `params`; the response and how long it took (s)."""
    started = time.perf_counter()
    response = gateway.get(f"/outbound/{route}", params=params)
    return response, time.perf_counter() - started


def error_code(response: httpx.Response) -> str:
    return str(response.json()["error"]["code"])


def refused(response: httpx.Response, kind: str) -> None:
    """`response` is the uncaught Outbound* error of `kind`: its status and code."""
    assert (response.status_code, error_code(response)) == STATUSES[kind], response.text


def still_serving(gateway: GatewayProcess, origin: OriginServer) -> None:
    assert gateway.get("/healthz").status_code == 200
    response = gateway.get("/outbound/fetch", params={"url": origin.url("/big?bytes=3")})
    assert (response.status_code, response.json()["text"]) == (200, "xxx"), response.text


# --- what works -------------------------------------------------------------


@pytest.mark.parametrize("path", ["/image.jpg", "/image.png", "/image.webp"])
def test_fetches_originals(gateway: GatewayProcess, origin: OriginServer, path: str) -> None:
    response, _ = call(gateway, "fetch", url=origin.url(path))
    assert response.status_code == 200, response.text
    got = response.json()
    data, content_type = originals()[path]
    assert (got["status"], got["length"]) == (200, len(data))
    assert got["headers"]["content-type"] == content_type
    assert origin.hits(path) == 1


def test_fetches_show_in_timing_usage_and_metrics(
    gateway: GatewayProcess, origin: OriginServer
) -> None:
    """Fetch time in Server-Timing, fetches and bytes in the usage header and the
    metrics, by status class or failure kind (never the URL)."""
    size = len(originals()["/image.png"][0])
    before = {
        "ok": gateway.metric(
            "edgefn_outbound_requests_total", function="outbound", status_class="2xx"
        ),
        "refused": gateway.metric(
            "edgefn_outbound_requests_total", function="outbound", status_class="not_allowed"
        ),
        "bytes": gateway.metric("edgefn_outbound_bytes_total", function="outbound"),
    }
    response, _ = call(gateway, "fetch", url=origin.url("/image.png"))
    assert response.status_code == 200, response.text
    assert re.search(r"(^|, )fetch;dur=\d+\.\d+", response.headers["server-timing"]), (
        response.headers
    )
    assert f"fetches=1, fetch_bytes={size}" in response.headers["x-edgefn-usage"]
    refused(call(gateway, "fetch", url="http://undeclared.invalid/")[0], "not_allowed")
    assert (
        gateway.metric("edgefn_outbound_requests_total", function="outbound", status_class="2xx")
        == before["ok"] + 1
    )
    assert (
        gateway.metric(
            "edgefn_outbound_requests_total", function="outbound", status_class="not_allowed"
        )
        == before["refused"] + 1
    )
    assert (
        gateway.metric("edgefn_outbound_bytes_total", function="outbound") == before["bytes"] + size
    )
    lines = [
        line
        for line in gateway.admin("GET", "/metrics").text.splitlines()
        if line.startswith("edgefn_outbound")
    ]
    assert lines and not any("127.0.0.1" in line or "invalid" in line for line in lines), lines


def test_method_headers_body_and_traceparent_reach_the_origin(
    gateway: GatewayProcess, origin: OriginServer
) -> None:
    trace = secrets.token_hex(16)
    parent = f"00-{trace}-{secrets.token_hex(8)}-01"
    response = gateway.get(
        "/outbound/fetch",
        params={
            "url": origin.url("/echo?x=1"),
            "method": "POST",
            "body": "hello origin",
            "header": "x-edge:yes",
        },
        headers={"traceparent": parent},
    )
    assert response.status_code == 200, response.text
    seen = json.loads(response.json()["text"])
    assert (seen["method"], seen["query"], seen["body"]) == ("POST", {"x": "1"}, "hello origin")
    assert seen["headers"]["x-edge"] == "yes"
    assert seen["headers"]["host"] == f"127.0.0.1:{origin.port}"
    # The same trace, a new span: the origin's logs line up with the gateway's.
    version, trace_id, span, flags = seen["headers"]["traceparent"].split("-")
    assert (version, trace_id) == ("00", trace)
    assert span != parent.split("-")[2] and len(span) == 16


def test_an_origin_error_is_a_response_not_a_failure(
    gateway: GatewayProcess, origin: OriginServer
) -> None:
    response, _ = call(gateway, "fetch", url=origin.url("/status/500"))
    assert response.status_code == 200, response.text
    assert (response.json()["status"], json.loads(response.json()["text"])) == (
        500,
        {"status": 500},
    )


def test_a_redirect_chain_is_followed_up_to_the_limit(
    gateway: GatewayProcess, origin: OriginServer
) -> None:
    response, _ = call(gateway, "fetch", url=origin.url("/chain/5"))
    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["text"]) == (200, "chain end")
    assert origin.hits("/chain/0") == 1
    origin.reset()
    response, took = call(gateway, "fetch", url=origin.url("/chain/6"))  # 6 hops > 5
    refused(response, "failed")
    assert origin.hits("/chain/0") == 0
    assert origin.hits("/chain/6") == 1
    attacks.record(
        AREA, "a redirect chain of 6 hops (limit 5)", f"502 `outbound_failed` in {took:.2f} s"
    )


# --- refused before any connection -------------------------------------------


def test_undeclared_host_is_refused_and_says_how_to_allow_it(
    gateway: GatewayProcess, origin: OriginServer
) -> None:
    with closed_port() as port:
        url = f"http://127.0.0.1:{port}/"
        response, took = call(gateway, "fetch", url=url)
        refused(response, "not_allowed")
        caught, _ = call(gateway, "catch", url=url)
    got = caught.json()
    assert got["error"] == "OutboundNotAllowed", got
    assert "allowed_outbound_hosts" in got["message"], got
    assert took < 1
    still_serving(gateway, origin)
    attacks.record(
        AREA,
        "fetch of a host the manifest does not declare",
        "500 `outbound_not_allowed`, before connecting",
    )


def test_blocked_network_by_ip_literal(
    gateway: GatewayProcess, origin: OriginServer, other: OriginServer
) -> None:
    """127.0.0.2 is declared in the manifest, but the operator exempts only
    127.0.0.1/32 from the blocked loopback network: the second origin, listening
    there, is never contacted."""
    response, took = call(gateway, "fetch", url=other.url("/echo"))
    refused(response, "not_allowed")
    caught, _ = call(gateway, "catch", url=other.url("/echo"))
    assert "127.0.0.0/8" in caught.json()["message"], caught.json()
    assert "allowed_networks" in caught.json()["message"], caught.json()
    assert other.hits("/echo") == 0
    assert took < 1
    attacks.record(
        AREA,
        "fetch of a declared loopback address outside allowed_networks (127.0.0.2)",
        "500 `outbound_not_allowed`; the server there never contacted",
    )


def test_cloud_metadata_by_ip_literal(gateway: GatewayProcess, origin: OriginServer) -> None:
    """Declared in the manifest, still refused: link-local is a blocked network
    (refused before connecting: proved in process by the host's tests)."""
    response, took = call(gateway, "catch", url="http://169.254.169.254/latest/meta-data/")
    got = response.json()
    assert (got["error"], got["kind"]) == ("OutboundNotAllowed", "not_allowed"), got
    assert "169.254.0.0/16" in got["message"], got
    assert took < 1
    attacks.record(
        AREA,
        "fetch of http://169.254.169.254/ (cloud metadata), declared",
        "500 `outbound_not_allowed`",
    )


@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("to a loopback address outside allowed_networks (127.0.0.2)", "{other}/echo"),
        ("to 169.254.169.254 (cloud metadata)", "http://169.254.169.254/latest/meta-data/"),
        ("to an undeclared port of the origin's own address", "http://127.0.0.1:{closed}/"),
        ("to an undeclared host name", "http://undeclared.invalid/"),
    ],
)
def test_redirect_escapes_are_refused(
    gateway: GatewayProcess,
    origin: OriginServer,
    other: OriginServer,
    name: str,
    target: str,
) -> None:
    with closed_port() as port:
        to = target.format(other=other.base, closed=port)
        response, took = call(
            gateway, "fetch", url=origin.url(f"/redirect?to={quote(to, safe='')}")
        )
    refused(response, "not_allowed")
    assert origin.hits("/redirect") == 1
    assert other.hits("/echo") == 0
    assert took < 1
    still_serving(gateway, origin)
    attacks.record(AREA, f"origin redirects {name}", f"500 `outbound_not_allowed` in {took:.2f} s")


def test_a_name_resolving_to_loopback_is_refused_without_the_exemption(
    tmp_path: Path, origin: OriginServer
) -> None:
    """A gateway with the default policy: `localhost` (declared) resolves to a
    blocked network; so does 127.0.0.1 itself. The origin is never contacted."""
    manifest = with_env(
        (FUNCTION / "edgefn.toml").read_text(),
        ORIGIN=origin.base,
        LOCALHOST=f"http://localhost:{origin.port}",
    )
    with GatewayProcess(tmp_path / "data") as strict:
        deploy(strict, FUNCTION, manifest, tmp_path)
        for url in (f"http://localhost:{origin.port}/echo", origin.url("/echo")):
            response = strict.get("/outbound/catch", params={"url": url})
            got = response.json()
            assert (got.get("error"), got.get("kind")) == ("OutboundNotAllowed", "not_allowed"), got
            assert "127.0.0.0/8" in got["message"] or "::1" in got["message"], got
    assert origin.hits("/echo") == 0
    attacks.record(
        AREA,
        "fetch of a declared name resolving to loopback (localhost), default policy",
        "500 `outbound_not_allowed`; the origin never contacted",
    )


# --- timeouts -------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("sends nothing", "/stall?delay=30"),
        ("sends headers, then nothing", "/slow?delay=30"),
        ("drips one byte every 0.2 s", "/drip?bytes=1000"),
    ],
)
def test_a_slow_origin_ends_within_the_function_timeout(
    gateway: GatewayProcess, origin: OriginServer, name: str, path: str
) -> None:
    response, took = call(gateway, "fetch", url=origin.url(path))
    assert response.status_code == 504, response.text
    assert error_code(response) in ("outbound_timeout", "timeout"), response.text
    assert took < TIMEOUT + 0.5
    still_serving(gateway, origin)
    attacks.record(
        AREA,
        f"an origin that {name}",
        f"504 `{error_code(response)}` after {took:.2f} s (function timeout {TIMEOUT:.0f} s)",
    )


def test_the_fetch_timeout_is_the_functions_to_catch(
    gateway: GatewayProcess, origin: OriginServer
) -> None:
    response, took = call(gateway, "catch", url=origin.url("/stall?delay=30"), timeout="0.3")
    got = response.json()
    assert (got["error"], got["kind"]) == ("OutboundTimeout", "timeout"), got
    assert 0.3 <= took < 1.5


# --- caps -------------------------------------------------------------------


def test_a_never_ending_10_gib_body_is_refused(
    gateway: GatewayProcess, origin: OriginServer
) -> None:
    response, took = call(gateway, "fetch", url=origin.url("/huge"))
    refused(response, "too_large")
    assert took < TIMEOUT
    still_serving(gateway, origin)
    attacks.record(
        AREA,
        "an origin declaring Content-Length 10 GiB and sending for ever",
        f"502 `outbound_too_large` in {took:.2f} s",
    )


def test_a_body_over_the_per_fetch_cap(gateway: GatewayProcess, origin: OriginServer) -> None:
    response, _ = call(gateway, "fetch", url=origin.url(f"/big?bytes={4 * MiB}"))
    assert response.status_code == 200 and response.json()["length"] == 4 * MiB, response.text
    response, _ = call(gateway, "fetch", url=origin.url(f"/big?bytes={4 * MiB + 1}"))
    refused(response, "too_large")
    attacks.record(AREA, "a body one byte over the per-fetch cap", "502 `outbound_too_large`")


def test_bodies_over_the_per_request_cap(gateway: GatewayProcess, origin: OriginServer) -> None:
    url = origin.url(f"/big?bytes={3 * MiB}")
    response, _ = call(gateway, "many", url=url, n="2")  # 6 MiB: the cap
    assert response.json() == {"fetches": 2, "bytes": 6 * MiB}, response.text
    response, _ = call(gateway, "many", url=url, n="3")
    refused(response, "too_large")
    attacks.record(
        AREA, "three 3 MiB fetches in one request (cap 6 MiB)", "502 `outbound_too_large`"
    )


def test_fetches_over_the_per_request_count(gateway: GatewayProcess, origin: OriginServer) -> None:
    url = origin.url("/big?bytes=1")
    response, _ = call(gateway, "many", url=url, n="4")
    assert response.json() == {"fetches": 4, "bytes": 4}, response.text
    origin.reset()
    response, _ = call(gateway, "many", url=url, n="5")
    refused(response, "not_allowed")
    assert "max_fetches" in response.json()["error"]["message"], response.text
    assert origin.hits("/big") == 4  # the fifth never sent
    attacks.record(
        AREA,
        "five fetches in one request (cap 4)",
        "500 `outbound_not_allowed`, the fifth not sent",
    )


# --- images from the origin -------------------------------------------------


def test_image_from_url(gateway: GatewayProcess, origin: OriginServer, other: OriginServer) -> None:
    response, _ = call(gateway, "image", src=origin.url("/photo.jpg"), w="800")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/webp"
    image = decode(response.content)
    assert (image.format, image.width) == ("WEBP", 800)
    response, _ = call(gateway, "image", src=other.url("/photo.jpg"))
    refused(response, "not_allowed")
    assert other.hits("/photo.jpg") == 0
    # An origin's error is no image: a failure, not a 500 page decoded.
    response, _ = call(gateway, "image", src=origin.url("/status/500"))
    refused(response, "failed")


def test_image_resize_src_equals_the_same_original_posted(
    gateway: GatewayProcess, origin: OriginServer
) -> None:
    query = "w=800&format=webp"
    fetched = gateway.get(f"/image_resize/?src={quote(origin.url('/photo.jpg'), safe='')}&{query}")
    assert fetched.status_code == 200, fetched.text
    posted = httpx.post(
        f"{gateway.public_url}/image_resize/?{query}",
        content=originals()["/photo.jpg"][0],
        timeout=30,
    )
    assert posted.status_code == 200, posted.text
    assert fetched.content == posted.content
    assert origin.hits("/photo.jpg") == 1


def test_the_gateway_is_still_healthy(gateway: GatewayProcess, origin: OriginServer) -> None:
    """After everything above: probes answer and a normal fetch works."""
    still_serving(gateway, origin)
    assert gateway.admin("GET", "/readyz").status_code == 200


def test_requests_looping_through_edgefn_are_refused(
    gateway: GatewayProcess, origin: OriginServer
) -> None:
    # What a function fetching itself would send on its eighth pass (RFC 8586 CDN-Loop).
    params = {"url": origin.url("/big?bytes=3")}
    looping = {"cdn-loop": ", ".join(["cdn.example", *["edgefn"] * 8])}
    response = gateway.get("/outbound/fetch", params=params, headers=looping)
    assert (response.status_code, error_code(response)) == (508, "loop_detected")
    assert origin.hits("/big") == 0
    almost = {"cdn-loop": ", ".join(["edgefn"] * 7)}
    assert gateway.get("/outbound/fetch", params=params, headers=almost).status_code == 200
