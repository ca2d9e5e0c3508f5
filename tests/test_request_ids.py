"""Every response carries `X-Request-Id`: the protocol layer's 400/408/431, the
health probes on both listeners, and the admin API's successes and errors."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator

import httpx
import pytest

from gateway_process import GatewayProcess

_ID = re.compile(rb"^x-request-id: ([0-9a-f]{32})\r$", re.MULTILINE | re.IGNORECASE)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    data_dir = tmp_path_factory.mktemp("ids") / "data"
    process = GatewayProcess(data_dir, extra_env={"EDGEFN_HEADER_TIMEOUT": "0.5"})
    try:
        yield process.start()
    finally:
        process.stop()


def raw(port: int, data: bytes) -> bytes:
    """Send `data` on a new connection; everything the server sent until it closed."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(10)
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


@pytest.mark.parametrize("listener", ["port", "admin_port"])
@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"GARBAGE\r\n\r\n", 400, "bad_request"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431,
         "request_head_too_large"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n", 408, "request_timeout"),  # the head never ends
    ],
)  # fmt: skip
def test_protocol_errors_carry_a_request_id(
    gateway: GatewayProcess, listener: str, data: bytes, status: int, code: str
) -> None:
    response = raw(getattr(gateway, listener), data)
    head, body = response.split(b"\r\n\r\n", 1)
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), head
    found = _ID.search(head)
    assert found is not None, head
    error = json.loads(body)["error"]
    assert error["code"] == code
    assert error["request_id"] == found[1].decode()


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_health_probes_carry_a_request_id(gateway: GatewayProcess, path: str) -> None:
    public = gateway.get(path, headers={"x-request-id": "probe-1"})
    assert public.status_code == 200
    assert public.headers["x-request-id"] == "probe-1"
    admin = gateway.admin("GET", path)
    assert admin.status_code == 200
    assert re.fullmatch("[0-9a-f]{32}", admin.headers["x-request-id"])


def test_admin_answers_carry_a_request_id(gateway: GatewayProcess) -> None:
    def admin(path: str, rid: str) -> httpx.Response:
        headers = {"authorization": f"Bearer {gateway.token}", "x-request-id": rid}
        return httpx.get(gateway.admin_url + path, headers=headers, timeout=30)

    listed = admin("/v1/functions", "list-1")
    assert listed.status_code == 200
    assert listed.headers["x-request-id"] == "list-1"
    for path, status in (("/v2/nothing", 404), ("/v1/functions/x/logs?limit=0", 400)):
        refused = admin(path, "refused-1")
        assert refused.status_code == status
        assert refused.headers["x-request-id"] == "refused-1"
        assert refused.json()["error"]["request_id"] == "refused-1"
