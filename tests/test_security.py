"""The admin listener lets no one in without the token and keeps it secret; the
public listener exposes nothing of the admin API or of the host."""

from __future__ import annotations

import hmac
import logging
import re
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme
from click.testing import CliRunner, Result
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

import attacks
from edgefn_platform.cli import main
from edgefn_platform.cli._gateway import serve
from edgefn_platform.gateway._admin_guards import RequireToken
from edgefn_platform.gateway.admin import AdminApp
from edgefn_platform.gateway.config import GatewayConfig, TokenError, load_token
from edgefn_platform.gateway.public import Lifecycle
from edgefn_platform.gateway.server import Worker
from gateway_process import ROOT, GatewayProcess, cli

AREA = "Admin and public listeners (tests/test_security.py)"
TOKEN = "s3cret-token-for-tests"
PROBES = {"/healthz", "/readyz"}


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    data_dir = tmp_path_factory.mktemp("security") / "data"
    config = GatewayConfig(
        data_dir=data_dir, workers=1, token=TOKEN, cache_dir=ROOT / ".cache" / "edgefn"
    )
    worker = Worker.open(config)
    with TestClient(AdminApp(worker, TOKEN, Lifecycle(worker.table))) as client:
        yield client
    worker.close()


def every_route(client: TestClient) -> list[tuple[str, str]]:
    """(method, path) of every route of the app, path parameters filled in."""
    found = []
    for route in client.app.routes:  # type: ignore[attr-defined]
        assert isinstance(route, Route), route
        path = re.sub(r"{[^}]+}", "x", route.path)
        found += [(method, path) for method in sorted(route.methods or ())]
    return found


def test_every_admin_route_needs_the_token(admin: TestClient) -> None:
    routes = every_route(admin)
    assert ("POST", "/v1/functions") in routes and ("GET", "/openapi.json") in routes
    wrong = [
        {},
        {"authorization": "Bearer wrong"},
        {"authorization": f"Basic {TOKEN}"},
        {"authorization": f"Bearer {TOKEN.upper()}"},
        {"authorization": f"Bearer {TOKEN}x"},
        {"authorization": TOKEN},
    ]
    checked = 0
    for method, path in routes:
        if path in PROBES:
            continue
        for headers in wrong:
            response = admin.request(method, path, headers=headers)
            assert response.status_code == 401, (method, path, headers)
            assert response.json()["error"]["code"] == "unauthorized"
            checked += 1
    right = admin.get("/v1/functions", headers={"authorization": f"bearer {TOKEN}"})
    assert right.status_code == 200
    for probe in PROBES:
        assert admin.get(probe).status_code in (200, 503)
    attacks.record(
        AREA,
        f"every admin route ({len(routes) - 2 * len(PROBES)} method and path pairs) "
        "without the token, with a wrong one, another scheme, or a near miss",
        f"401 `unauthorized` for all {checked} requests; only /healthz and /readyz are open",
    )


def test_unknown_admin_paths_reveal_nothing_without_the_token(admin: TestClient) -> None:
    unknown, known = admin.get("/no/such/thing"), admin.get("/v1/functions")
    assert unknown.status_code == known.status_code == 401
    # The same answer (but its request id): nothing tells an unknown path apart.
    answers = [{**r.json()["error"], "request_id": None} for r in (unknown, known)]
    assert answers[0] == answers[1] and answers[0]["code"] == "unauthorized"
    found = admin.get("/no/such/thing", headers={"authorization": f"Bearer {TOKEN}"})
    assert found.status_code == 404 and found.json()["error"]["code"] == "not_found"


def test_the_token_is_compared_in_constant_time(
    admin: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return original(a, b)

    monkeypatch.setattr("edgefn_platform.gateway._admin_guards.hmac.compare_digest", spy)
    assert admin.get("/v1/functions", headers={"authorization": "Bearer nope"}).status_code == 401
    assert compared, "the token check did not go through hmac.compare_digest"
    attacks.record(AREA, "guess the token by timing", "compared with hmac.compare_digest")


def test_an_upload_without_the_token_is_refused_before_its_body_is_read(
    admin: TestClient,
) -> None:
    read = 0

    def body() -> Iterator[bytes]:
        nonlocal read
        for _ in range(100):
            read += 1
            yield b"x" * 65536

    response = admin.post("/v1/functions", content=body())
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert read < 100, "the whole upload was read before the token was checked"


def test_the_admin_listener_binds_to_loopback_unless_told_otherwise() -> None:
    defaults = {p.name: p.default for p in serve.params}
    assert defaults["admin_host"] == "127.0.0.1"
    assert GatewayConfig().admin_host == "127.0.0.1"
    assert not GatewayConfig().admin_exposed_in_clear
    assert GatewayConfig(admin_host="0.0.0.0").admin_exposed_in_clear
    attacks.record(AREA, "reach the admin API from another host", "binds 127.0.0.1 by default")


def test_an_exposed_admin_listener_without_tls_is_warned_about(tmp_path: Path) -> None:
    with GatewayProcess(tmp_path / "data", extra_env={"EDGEFN_ADMIN_HOST": "0.0.0.0"}):
        pass
    output = (tmp_path / "data.log").read_text()
    assert "Warning: the admin API listens on 0.0.0.0 without TLS" in output
    attacks.record(AREA, "admin API exposed on 0.0.0.0 without TLS", "startup warning")


def test_the_admin_listener_can_speak_tls(tmp_path: Path) -> None:
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    certificate.cert_chain_pems[0].write_to_path(str(cert))
    certificate.private_key_pem.write_to_path(str(key))
    context = ssl.create_default_context()
    authority.configure_trust(context)
    env = {
        "EDGEFN_ADMIN_HOST": "0.0.0.0",
        "EDGEFN_ADMIN_TLS_CERT": str(cert),
        "EDGEFN_ADMIN_TLS_KEY": str(key),
    }
    with GatewayProcess(
        tmp_path / "data", extra_env=env, admin_scheme="https", verify=context
    ) as gateway:
        assert gateway.admin("GET", "/v1/functions").status_code == 200
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{gateway.admin_port}/v1/functions")
    assert "without TLS" not in (tmp_path / "data.log").read_text()
    attacks.record(AREA, "read the token off the wire", "admin API over HTTPS when given a cert")


def test_the_token_never_reaches_the_logs(tmp_path: Path) -> None:
    with GatewayProcess(tmp_path / "data", token=TOKEN) as gateway:
        assert cli(gateway, "deploy", str(ROOT / "functions" / "hello")).exit_code == 0
        for headers in ({"authorization": f"Bearer {TOKEN}"}, {"authorization": "Bearer x"}):
            httpx.get(gateway.admin_url + "/v1/functions", headers=headers)
        response = gateway.get("/hello/", headers={"authorization": f"Bearer {TOKEN}"})
        gateway.wait_logged("hello", [response.headers["x-request-id"]])
        logs = gateway.admin("GET", "/v1/functions/hello/logs").json()
        assert logs, "no log lines to search"
    searched = [(tmp_path / "data.log").read_bytes()]
    searched += [line["line"].encode() for line in logs]
    searched += [(gateway.data_dir / "registry.sqlite3").read_bytes()]
    assert not any(TOKEN.encode() in text for text in searched)
    attacks.record(
        AREA, "find the token in logs", "absent from the gateway log, access lines and registry"
    )


def test_the_public_listener_exposes_no_admin_route_docs_or_host_detail(
    admin: TestClient, tmp_path: Path
) -> None:
    with GatewayProcess(tmp_path / "data", token=TOKEN) as gateway:
        paths = {path for _, path in every_route(admin)} - PROBES
        paths |= {"/docs", "/redoc", "/openapi.json", "/v1/functions", "/metrics"}
        for path in sorted(paths):
            response = gateway.get(path, headers={"authorization": f"Bearer {TOKEN}"})
            assert response.status_code == 404, (path, response.text)
            assert response.json()["error"]["code"] == "no_route"
            assert str(gateway.data_dir) not in response.text and "Traceback" not in response.text
    attacks.record(
        AREA,
        f"admin routes, /docs, /openapi.json and /metrics on the public port ({len(paths)} paths)",
        "404 `no_route` for each, even with the token; no host path or traceback in any body",
    )


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port something else listens on, so a `serve` that gets past its checks
    fails to bind at once instead of serving (and blocking the test)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def serve_once(data_dir: Path, port: int, *options: str) -> Result:
    return CliRunner().invoke(
        main,
        ["serve", "--data-dir", str(data_dir), "--host", "127.0.0.1", "--port", str(port)]
        + ["--workers", "1", *options],
        env={"EDGEFN_TOKEN": None},
    )


@pytest.mark.parametrize("content", ["", "\n", "  \t \n"], ids=["empty", "newline", "blank"])
def test_an_empty_admin_token_file_is_refused(
    tmp_path: Path, taken_port: int, content: str
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "admin-token").write_text(content)
    (data_dir / "admin-token").chmod(0o600)
    result = serve_once(data_dir, taken_port)
    assert result.exit_code == 1
    assert result.output == (
        f"Error: the admin token from {data_dir.resolve() / 'admin-token'} is empty or only "
        "whitespace: set a long random one (openssl rand -hex 32), or remove the file to "
        "have one generated\n"
    )


@pytest.mark.parametrize("token", ["", " ", "\t  "], ids=["empty", "space", "blank"])
def test_an_empty_admin_token_option_is_refused(
    tmp_path: Path, taken_port: int, token: str
) -> None:
    result = serve_once(tmp_path / "data", taken_port, "--token", token)
    assert result.exit_code == 1
    assert result.output.startswith(
        "Error: the admin token from --token/EDGEFN_TOKEN is empty or only whitespace"
    )
    assert result.output.count("\n") == 1


def test_a_taken_port_stops_serve_with_one_line(tmp_path: Path, taken_port: int) -> None:
    result = serve_once(tmp_path / "data", taken_port, "--token", "a-real-token")
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: cannot listen on 127.0.0.1:{taken_port} (")
    assert "choose another --port" in result.output and "unexpected" not in result.output
    assert result.output.count("\n") == 1


def test_an_empty_bearer_never_authenticates() -> None:
    for blank in ("", " ", "\t"):
        with pytest.raises(TokenError):
            RequireToken(Starlette(), blank)
    with pytest.raises(TokenError):
        AdminApp(None, "", None)  # type: ignore[arg-type]
    guarded = TestClient(RequireToken(Starlette(routes=[Route("/", _ok)]), TOKEN))
    for value in ("Bearer ", "Bearer  ", "Bearer\t", "bearer", ""):
        assert guarded.get("/", headers={"authorization": value}).status_code == 401
    assert guarded.get("/", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
    attacks.record(
        AREA,
        "an empty or blank admin token (file, --token, EDGEFN_TOKEN), then `Authorization: "
        "Bearer ` with nothing after it",
        "`edgefn serve` refuses to start with one line naming where the token came from, "
        "exit 1; the admin app cannot be built with such a token",
    )


async def _ok(request: object) -> PlainTextResponse:
    return PlainTextResponse("in")


def test_a_token_file_open_to_others_is_warned_about(
    tmp_path: Path, taken_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    path = data_dir / "admin-token"
    path.write_text("a-real-token\n")
    path.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="edgefn.gateway"):
        assert load_token(GatewayConfig(data_dir=data_dir)) == "a-real-token"
    assert not caplog.records
    for mode in (0o644, 0o620, 0o604):
        path.chmod(mode)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="edgefn.gateway"):
            assert load_token(GatewayConfig(data_dir=data_dir)) == "a-real-token"
        assert [r.getMessage() for r in caplog.records] == [
            f"the admin token file {path.resolve()} can be read or written by its group or "
            f"others (mode {oct(mode)}): run chmod 600 {path.resolve()}"
        ]
    attacks.record(
        AREA,
        "an admin token file others can read or write (mode 0644)",
        "warned about at start, naming the file, its mode and the chmod that fixes it",
    )


@pytest.mark.parametrize("authorized", [False, True])
def test_admin_request_ids_are_checked(admin: TestClient, authorized: bool) -> None:
    headers = {"x-request-id": "\x1b[2J" + "x" * 10_000}
    if authorized:
        headers["authorization"] = f"Bearer {TOKEN}"
    response = admin.get("/functions/nope", headers=headers)
    assert response.status_code == (404 if authorized else 401)
    assert re.fullmatch("[0-9a-f]{32}", response.headers["x-request-id"])
    assert response.json()["error"]["request_id"] == response.headers["x-request-id"]
