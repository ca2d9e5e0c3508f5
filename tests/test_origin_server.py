"""The loopback origin server the outbound tests fetch from (tests/origin_server.py)."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest
from origin_server import HUGE_LENGTH, OriginServer, originals

from images import decode
from waiting import wait_until


def get(
    origin: OriginServer, path: str, method: str = "GET", body: bytes | None = None, **headers: str
) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection(origin.host, origin.port, timeout=10)
    connection.request(method, path, body, headers)
    return connection.getresponse()


@pytest.mark.parametrize(
    ("path", "fmt", "size"),
    [
        ("/photo.jpg", "JPEG", (2121, 1414)),
        ("/image.jpg", "JPEG", (600, 400)),
        ("/image.png", "PNG", (300, 200)),
        ("/image.webp", "WEBP", (600, 400)),
    ],
)
def test_originals(origin: OriginServer, path: str, fmt: str, size: tuple[int, int]) -> None:
    response = get(origin, path)
    data = response.read()
    assert response.status == 200
    assert response.getheader("content-type") == originals()[path][1]
    image = decode(data)
    assert (image.format, image.size) == (fmt, size)
    assert origin.hits(path) == 1


def test_counts_per_path_and_reset(origin: OriginServer) -> None:
    assert origin.hits("/big") == 0  # reset before each test by the fixture
    for _ in range(3):
        get(origin, "/big?bytes=10").read()
    assert origin.hits("/big") == 3
    assert origin.hits("/echo") == 0
    origin.reset()
    assert origin.hits("/big") == 0


def test_big_status_and_unknown(origin: OriginServer) -> None:
    big = get(origin, "/big?bytes=123456")
    assert (big.status, len(big.read())) == (200, 123456)
    failing = get(origin, "/status/500")
    assert (failing.status, json.loads(failing.read())) == (500, {"status": 500})
    assert get(origin, "/nothing-here").status == 404


def test_redirect_and_chain(origin: OriginServer) -> None:
    redirect = get(origin, "/redirect?to=http%3A%2F%2F169.254.169.254%2Flatest")
    assert (redirect.status, redirect.getheader("location")) == (
        302,
        "http://169.254.169.254/latest",
    )
    moved = get(origin, "/redirect?to=/echo&status=301")
    assert (moved.status, moved.getheader("location")) == (301, "/echo")
    hop = get(origin, "/chain/3")
    assert (hop.status, hop.getheader("location")) == (302, "/chain/2")
    end = get(origin, "/chain/0")
    assert (end.status, end.read()) == (200, b"chain end")


def test_echo(origin: OriginServer) -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    response = get(origin, "/echo?a=1", "PUT", b"hello", traceparent=parent)
    answer = json.loads(response.read())
    assert answer["method"] == "PUT"
    assert answer["query"] == {"a": "1"}
    assert answer["headers"]["traceparent"] == parent
    assert answer["body"] == "hello"


def test_slow_sends_headers_first_then_the_body(origin: OriginServer) -> None:
    started = time.monotonic()
    response = get(origin, "/slow?delay=0.3")
    headers_after = time.monotonic() - started
    assert response.read() == b"slow"
    assert headers_after < 0.25 <= time.monotonic() - started


def test_stall_and_drip(origin: OriginServer) -> None:
    started = time.monotonic()
    assert get(origin, "/stall?delay=0.2").read() == b"stall"
    assert time.monotonic() - started >= 0.2
    started = time.monotonic()
    assert get(origin, "/drip?bytes=3&interval=0.1").read() == b"ddd"
    assert time.monotonic() - started >= 0.2


def test_huge_claims_10_gib_and_keeps_sending(origin: OriginServer) -> None:
    response = get(origin, "/huge")
    assert response.getheader("content-length") == str(HUGE_LENGTH)
    assert len(response.read(200_000)) == 200_000  # more than three 64 KiB chunks
    response.close()


def test_keep_alive(origin: OriginServer) -> None:
    connection = http.client.HTTPConnection(origin.host, origin.port, timeout=10)
    for _ in range(3):
        connection.request("GET", "/big?bytes=5")
        assert connection.getresponse().read() == b"xxxxx"
    connection.close()
    assert origin.hits("/big") == 3


def test_a_second_origin_on_127_0_0_2() -> None:
    with OriginServer("127.0.0.2") as other:
        assert other.base == f"http://127.0.0.2:{other.port}"
        response = get(other, "/echo")
        assert json.loads(response.read())["headers"]["host"] == f"127.0.0.2:{other.port}"
        with pytest.raises(ConnectionRefusedError):  # not on 127.0.0.1
            socket.create_connection(("127.0.0.1", other.port), timeout=2).close()


def test_stopping_leaves_no_thread_even_mid_stream() -> None:
    """Stopped with a client reading /huge, one stuck in /stall, one in /drip and
    an idle kept-alive connection: every handler thread is joined, quickly."""
    before = set(threading.enumerate())
    origin = OriginServer().start()
    huge = get(origin, "/huge")
    huge.read(1000)
    clients = []
    for path in ("/stall?delay=60", "/drip?bytes=1000"):
        connection = http.client.HTTPConnection(origin.host, origin.port, timeout=10)
        connection.request("GET", path)
        clients.append(connection)
    idle = http.client.HTTPConnection(origin.host, origin.port, timeout=10)
    idle.request("GET", "/big?bytes=1")
    idle.getresponse().read()
    clients.append(idle)
    wait_until(
        lambda: origin.hits("/stall") + origin.hits("/drip") == 2,
        timeout=10,
        message="both handlers running",
    )
    started = time.monotonic()
    origin.stop()
    assert time.monotonic() - started < 2
    assert set(threading.enumerate()) == before
    for connection in clients:
        connection.close()
    huge.close()
