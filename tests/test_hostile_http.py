"""Malformed and slow HTTP on raw sockets: every one is answered with a 4xx or a
closed connection within the configured timeouts, and the gateway keeps serving."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import attacks
from gateway_process import GatewayProcess, cli

FUNCTIONS = Path(__file__).resolve().parent / "functions"
AREA = "Malformed and slow HTTP on the public port (tests/test_hostile_http.py)"
HEADER_TIMEOUT, BODY_TIMEOUT = 2.0, 3.0


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    data_dir = tmp_path_factory.mktemp("http") / "data"
    env = {"EDGEFN_HEADER_TIMEOUT": str(HEADER_TIMEOUT), "EDGEFN_BODY_TIMEOUT": str(BODY_TIMEOUT)}
    with GatewayProcess(data_dir, extra_env=env) as process:
        assert cli(process, "deploy", str(FUNCTIONS / "hostile")).exit_code == 0
        yield process


def exchange(gateway: GatewayProcess, data: bytes, wait: float = 10) -> tuple[bytes, float]:
    """Send `data`, read until the server closes; what came back and how long it took."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.settimeout(wait)
        sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            received += b"<still open>"
        except ConnectionResetError:
            received += b"<reset>"
    return received, time.perf_counter() - started


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


def error_code(response: bytes) -> str:
    code: str = json.loads(response.split(b"\r\n\r\n", 1)[1])["error"]["code"]
    return code


def still_serving(gateway: GatewayProcess) -> None:
    assert gateway.get("/hostile/json").json() == {"ok": True}


@pytest.mark.parametrize(
    ("attack", "data", "status"),
    [
        ("garbage request line", b"GARBAGE\r\n\r\n", 400),
        ("unknown HTTP version", b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", 400),
        ("NUL byte in a header value", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400),
        ("space in a header name", b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n", 400),
        ("raw non-ASCII bytes in the path", b"GET /hostile/\xff HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (
            "Content-Length of 10^23",
            b"POST /hostile/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999"
            b"\r\n\r\n",
            400,
        ),
        (
            "negative Content-Length",
            b"POST /hostile/echo HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
            400,
        ),
        (
            "Content-Length and Transfer-Encoding together (smuggling)",
            b"POST /hostile/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            "invalid chunk size",
            b"POST /hostile/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            400,
        ),
        (
            "Content-Length above the function's body limit",
            b"POST /hostile/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n",
            413,
        ),
        (
            "100 KB of headers",
            b"GET /hostile/json HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 1000) for i in range(100))
            + b"\r\n",
            431,
        ),
        (
            "a 100 KB URL",
            b"GET /hostile/json?" + b"q" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            431,
        ),
    ],
)
def test_malformed_requests_get_a_4xx_and_a_closed_connection(
    gateway: GatewayProcess, attack: str, data: bytes, status: int
) -> None:
    response, took = exchange(gateway, data)
    assert status_of(response) == status, response[:300]
    assert b"<still open>" not in response  # closed, not left hanging
    still_serving(gateway)
    attacks.record(AREA, attack, f"{status} `{error_code(response)}`, closed in {took:.2f} s")


@pytest.mark.parametrize(
    ("attack", "data", "limit", "code"),
    [
        ("connect and send nothing", b"", HEADER_TIMEOUT, "request_timeout"),
        ("half a request line", b"GET /hostile/js", HEADER_TIMEOUT, "request_timeout"),
        (
            "headers that never end",
            b"GET /hostile/json HTTP/1.1\r\nHost: x\r\n",
            HEADER_TIMEOUT,
            "request_timeout",
        ),
        (
            "a body shorter than its Content-Length",
            b"POST /hostile/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc",
            HEADER_TIMEOUT + BODY_TIMEOUT,
            "request_timeout",
        ),
        (
            "a chunked body that never ends",
            b"POST /hostile/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n",
            HEADER_TIMEOUT + BODY_TIMEOUT,
            "request_timeout",
        ),
    ],
)
def test_stalled_requests_time_out_with_408(
    gateway: GatewayProcess, attack: str, data: bytes, limit: float, code: str
) -> None:
    response, took = exchange(gateway, data, wait=limit + 5)
    assert status_of(response) == 408 and error_code(response) == code, response[:300]
    assert took < limit + 1
    still_serving(gateway)
    attacks.record(AREA, attack, f"408 `{code}` after {took:.1f} s, connection closed")


def test_slowloris_headers_are_cut_off_at_the_header_timeout(gateway: GatewayProcess) -> None:
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(b"GET /hostile/json HTTP/1.1\r\n")
        try:
            for i in range(100):  # one header every half second, for ever
                sock.sendall(b"X-%d: 1\r\n" % i)
                time.sleep(0.5)  # the attack's pace, not a wait for state
        except (BrokenPipeError, ConnectionResetError):
            pass
        sock.settimeout(1)
        try:
            received = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            received = b""
    took = time.perf_counter() - started
    assert took < HEADER_TIMEOUT + 2, took
    assert received == b"" or status_of(received) == 408, received[:200]
    still_serving(gateway)
    attacks.record(
        AREA, "slowloris: one header every 0.5 s", f"cut off after {took:.1f} s (header timeout)"
    )


def test_non_ascii_headers_and_query_reach_the_function(gateway: GatewayProcess) -> None:
    data = (
        b"GET /hostile/inspect?q=%ff%fe&r=caf%C3%A9 HTTP/1.1\r\nHost: x\r\n"
        b"X-Latin: caf\xe9\r\nConnection: close\r\n\r\n"
    )
    response, _ = exchange(gateway, data)
    assert status_of(response) == 200, response[:300]
    seen = json.loads(response.split(b"\r\n\r\n", 1)[1])
    assert seen["query"] == {"q": ["\ufffd\ufffd"], "r": ["café"]}
    assert ["x-latin", "caf\xe9"] in seen["headers"]
    attacks.record(
        AREA,
        "non-UTF-8 bytes in the query and a Latin-1 header value",
        "reach the function: the query decoded with U+FFFD, the header as Latin-1",
    )
