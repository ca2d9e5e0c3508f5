"""Hostile functions behind a real gateway: each misbehaviour gets its documented
status and code, the gateway stays up, and a healthy neighbour keeps answering
(and keeps its latency while the hostile routes are hammered: test_fairness.py)."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import attacks
from gateway_process import ROOT, GatewayProcess, cli

FUNCTIONS = Path(__file__).resolve().parent / "functions"
AREA = "Hostile functions (tests/test_hostile_functions.py)"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    data_dir = tmp_path_factory.mktemp("hostile") / "data"
    with GatewayProcess(data_dir, workers=2) as process:
        for directory in (ROOT / "functions" / "hello", FUNCTIONS / "hostile"):
            result = cli(process, "deploy", str(directory))
            assert result.exit_code == 0, result.output
        result = cli(process, "deploy", str(ROOT / "functions" / "watermark"))
        assert result.exit_code == 0, result.output
        for name in ("hello", "hostile", "watermark"):
            process.wait_serving(name)  # both workers pick the functions up
        yield process


def neighbour_answers(gateway: GatewayProcess) -> None:
    response = gateway.get("/hello/")
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("attack", "path", "status", "code"),
    [
        ("infinite loop", "/hostile/loop", 503, "fuel_exhausted"),
        ("memory bomb (1 MiB allocations forever)", "/hostile/alloc", 503, "memory_limit"),
        ("deep recursion", "/hostile/recurse", 500, "function_error"),
        ("stack overflow past the recursion limit", "/hostile/crash", 502, "function_crashed"),
        ("a 20 MB response", "/hostile/big?size=20000000&whole=1", 502, "response_too_large"),
        ("200 response headers", "/hostile/headers?count=200", 502, "response_too_large"),
        ("a 1 MB response header", "/hostile/headers?size=1000000", 502, "response_too_large"),
        ("header with CR LF injection", "/hostile/bad-header", 502, "invalid_response"),
        ("header with terminal escapes", "/hostile/control-header", 502, "invalid_response"),
        (
            "status 101 with `Upgrade: websocket` (a raw tunnel behind a proxy)",
            "/hostile/status?code=101&upgrade=1",
            502,
            "invalid_response",
        ),
        ("status 100", "/hostile/status?code=100", 502, "invalid_response"),
        ("status 600", "/hostile/status?code=600", 502, "invalid_response"),
        ("status 99", "/hostile/status?code=99", 502, "invalid_response"),
        ("sleeping past the timeout", "/hostile/sleep?seconds=30", 504, "timeout"),
        ("raising inside `finally`", "/hostile/raise-in-finally", 500, "function_error"),
        ("sys.exit()", "/hostile/exit", 500, "function_error"),
        ("os._exit()", "/hostile/exit-hard", 500, "function_error"),
    ],
)
def test_each_misbehaviour_has_its_status_and_the_neighbour_answers(
    gateway: GatewayProcess, attack: str, path: str, status: int, code: str
) -> None:
    started = time.perf_counter()
    response = gateway.get(path)
    took = time.perf_counter() - started
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert "Traceback" not in response.text and str(gateway.data_dir) not in response.text
    assert took < 5  # the hostile fixture's timeout is 1 s
    neighbour_answers(gateway)
    attacks.record(
        AREA, attack, f"{status} `{code}` in {took:.2f} s; gateway up, neighbour answers 200"
    )


def test_a_log_flood_is_capped_and_the_response_still_arrives(gateway: GatewayProcess) -> None:
    response = gateway.get("/hostile/log-flood?lines=50000")
    assert response.status_code == 200 and response.text == "still alive\n"
    request_id = response.headers["x-request-id"]
    gateway.wait_logged("hostile", [request_id])  # logs are written in batches
    lines = gateway.admin("GET", "/v1/functions/hostile/logs?limit=1000").json()
    kept = [r["line"] for r in lines if r["request_id"] == request_id and r["kind"] == "log"]
    assert any("log limit" in line for line in kept)
    assert sum(len(line) for line in kept) < 80 * 1024
    neighbour_answers(gateway)
    attacks.record(
        AREA,
        "log flood (50,000 lines of 100 bytes)",
        f"200; {len(kept)} lines kept, then a 'log limit reached' line; neighbour answers 200",
    )


def read(gateway: GatewayProcess, path: str) -> dict[str, str]:
    response = gateway.get("/hostile/read", params={"path": path})
    assert response.status_code == 200, response.text
    result: dict[str, str] = response.json()
    return result


def test_host_files_and_other_functions_assets_are_out_of_reach(
    gateway: GatewayProcess,
) -> None:
    (watermark_assets,) = (p.parent for p in (gateway.data_dir / "assets").glob("*/logo.png"))
    for attack, path in [
        ("read /etc/passwd", "/etc/passwd"),
        ("read /proc/self/environ", "/proc/self/environ"),
        ("read the registry in the data directory", str(gateway.data_dir / "registry.sqlite3")),
        ("read the admin token", str(gateway.data_dir / "admin-token")),
        ("read another function's assets by host path", str(watermark_assets / "logo.png")),
        ("escape its own assets with ..", f"/assets/../{watermark_assets.name}/logo.png"),
        ("escape its own assets with ../..", "/assets/../../etc/passwd"),
    ]:
        result = read(gateway, path)
        assert "read" not in result and "Error" in result["error"], (path, result)
        attacks.record(AREA, attack, f"refused inside the sandbox: `{result['error'][:60]}`")
    assert read(gateway, "/assets/greeting.txt") == {"read": "hello from an asset\n"}


def test_no_listing_network_or_host_environment(gateway: GatewayProcess) -> None:
    listing = gateway.get("/hostile/listdir?path=/").json()
    assert listing.get("entries", []) in ([], ["assets"]), listing
    attacks.record(AREA, "list /", f"sees {listing.get('entries', listing.get('error'))}")

    connect = gateway.get(f"/hostile/socket?port={gateway.admin_port}").json()
    assert "connected" not in connect
    attacks.record(AREA, "connect to the admin port", f"`{connect['error'][:60]}`")

    for host in ("example.com", "localhost"):
        resolved = gateway.get(f"/hostile/resolve?host={host}").json()
        assert "resolved" not in resolved
        attacks.record(AREA, f"resolve {host}", f"`{resolved['error'][:60]}`")

    env = gateway.get("/hostile/env").json()
    assert env == {"DECLARED": "visible"}
    attacks.record(AREA, "read host environment variables", f"sees only {sorted(env)}")


def test_a_mutated_global_is_not_seen_by_the_next_request(gateway: GatewayProcess) -> None:
    counts = {gateway.get("/hostile/counter").json()["counter"] for _ in range(5)}
    assert counts == {1}
    attacks.record(AREA, "mutate a global, read it next request", "counter is 1 every time")


# --- Streamed responses -----------------------------------------------------------


def raw_get(gateway: GatewayProcess, path: str) -> tuple[str, bytes]:
    """The response's head and its raw (chunked) body, read until the gateway
    closes the connection (`Connection: close`)."""
    host, port = gateway.public_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
        received = b""
        while chunk := sock.recv(1 << 16):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return head.decode("latin-1").lower(), body


def access_line(gateway: GatewayProcess, request_id: str) -> dict[str, object]:
    gateway.wait_logged("hostile", [request_id])
    lines = gateway.admin("GET", f"/v1/functions/hostile/logs?request_id={request_id}").json()
    (line,) = (json.loads(r["line"]) for r in lines if r["kind"] == "access")
    return line


def test_a_streamed_body_reaches_the_client_as_the_function_writes_it(
    gateway: GatewayProcess,
) -> None:
    url = gateway.public_url + "/hostile/stream?chunks=2&size=10&pause=700"
    arrived: list[tuple[float, bytes]] = []
    with httpx.stream("GET", url, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["x-streamed"] == "yes"
        assert response.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in response.headers
        assert response.headers["x-edgefn-cache"] == "MISS"  # not storable: streamed
        # What is known when the head leaves.
        assert response.headers["server-timing"].startswith("cache;desc=miss, queue;dur=")
        for data in response.iter_raw():
            arrived.append((time.perf_counter(), data))
    assert b"".join(data for _, data in arrived) == b"0" * 10 + b"1" * 10
    # Sent whole, both chunks would arrive together; streamed, 0.7 s apart.
    assert arrived[-1][0] - arrived[0][0] > 0.4, arrived
    line = access_line(gateway, response.headers["x-request-id"])
    assert (line["status"], line["outcome"], line["bytes_out"]) == (200, "ok", 20)


def function_log(gateway: GatewayProcess, request_id: str) -> str:
    access_line(gateway, request_id)  # a request's log lines are written before it
    lines = gateway.admin("GET", f"/v1/functions/hostile/logs?request_id={request_id}").json()
    (line,) = (r["line"] for r in lines if r["kind"] == "log")
    return str(line)


def test_a_head_request_to_a_streamed_response_stops_it_at_its_head(
    gateway: GatewayProcess,
) -> None:
    url = gateway.public_url + "/hostile/stream?chunks=3"
    response = httpx.head(url, headers={"x-request-id": "streamed-head"}, timeout=30)
    assert response.status_code == 200 and response.content == b""
    assert response.headers["x-streamed"] == "yes"
    assert function_log(gateway, "streamed-head") == "made 1 chunks"


def test_chunks_sent_a_byte_at_a_time_leave_in_batches(gateway: GatewayProcess) -> None:
    """The event loop writes what waits when it gets to it, not a write per chunk."""
    head, body = raw_get(gateway, "/hostile/stream-bytes?count=2000")
    assert "transfer-encoding: chunked" in head
    sizes, data = [], b""
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        sizes.append(size)
        data, body = data + body[:size], body[size + 2 :]
    assert data == b"x" * 2000 and sizes[-1] == 0
    assert len(sizes) < 1000, sizes  # 2,000 writes without batching


def pipelined(gateway: GatewayProcess, first: str, then: bytes) -> bytes:
    """A streamed GET with `then` pipelined behind it; what arrives in its first
    read, after which the client closes the connection."""
    host, port = gateway.public_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"GET {first} HTTP/1.1\r\nhost: x\r\n\r\n".encode() + then)
        return sock.recv(1 << 16)


def test_a_client_that_leaves_with_a_request_pipelined_stops_the_stream(
    gateway: GatewayProcess,
) -> None:
    """uvicorn marks only the newest request of a connection disconnected."""
    path = "/hostile/stream?chunks=500&size=10&pause=2"
    then = b"GET /hello/ HTTP/1.1\r\nhost: x\r\n\r\n"
    received = pipelined(gateway, path, then)
    (request_id,) = re.findall(rb"x-request-id: (\w+)", received)
    made = function_log(gateway, request_id.decode())
    assert int(made.split()[1]) < 250, made  # at 2 ms apart, about 1 s: its timeout


def test_a_bad_request_sent_behind_a_stream_is_not_answered_inside_it(
    gateway: GatewayProcess,
) -> None:
    host, port = gateway.public_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"GET /hostile/stream?chunks=3&size=10&pause=200 HTTP/1.1\r\nhost: x\r\n\r\n")
        received = b""
        while b"0" * 10 not in received:  # the first chunk: the stream is under way
            chunk = sock.recv(1 << 16)
            assert chunk, received
            received += chunk
        # A request pipelined behind it (uvicorn makes it the connection's newest),
        # then one that is not HTTP.
        sock.sendall(b"GET /hello/ HTTP/1.1\r\nhost: x\r\n\r\nNOT HTTP AT ALL\r\n\r\n")
        while chunk := sock.recv(1 << 16):
            received += chunk
    # The stream is cut off where the bad request came, with no 400 inside its body.
    assert received.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 400" not in received, received
    assert b"1" * 10 not in received, received


def test_a_streamed_response_failing_before_its_first_chunk_gets_its_status(
    gateway: GatewayProcess,
) -> None:
    response = gateway.get("/hostile/stream-bad-header")
    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == "invalid_response"


@pytest.mark.parametrize(
    ("attack", "path", "code", "sent"),
    [
        ("an exception after the first chunk", "/hostile/raise-in-generator", "function_error", 12),
        (
            "a 1 GB streamed response",
            "/hostile/big?size=1000000000",
            "response_too_large",
            10 * 2**20,
        ),
    ],
)
def test_a_stream_failing_after_its_head_is_cut_off(
    gateway: GatewayProcess, attack: str, path: str, code: str, sent: int
) -> None:
    """The status is out: the connection closes before the chunked body's end, so
    no client or cache can take the rest for the whole."""
    head, body = raw_get(gateway, path)
    assert head.startswith("http/1.1 200") and "transfer-encoding: chunked" in head, head
    assert not body.endswith(b"0\r\n\r\n"), body[-100:]
    (request_id,) = (line[14:] for line in head.split("\r\n") if line.startswith("x-request-id:"))
    line = access_line(gateway, request_id.strip())
    assert (line["status"], line["outcome"]) == (200, code), line
    # What the function sent before its failure: 12 bytes, or 10 MiB (the limit).
    assert line["bytes_out"] == sent, line
    assert sent < len(body) < sent + 2**16  # and the client got it, with chunk sizes
    neighbour_answers(gateway)
    attacks.record(
        AREA,
        f"{attack} (StreamingResponse)",
        f"200 and {line['bytes_out']:,} body bytes, then the connection closed without "
        f"the body's end; logged as `{code}`; neighbour answers 200",
    )


def test_a_client_that_leaves_stops_the_stream(gateway: GatewayProcess) -> None:
    """The function stops at its next chunk, not at its timeout."""
    request_id = "streamed-and-left"
    url = gateway.public_url + "/hostile/stream?chunks=500&size=10&pause=2"
    with httpx.stream("GET", url, headers={"x-request-id": request_id}, timeout=30) as response:
        next(response.iter_raw())
    made = function_log(gateway, request_id)
    # 2 ms apart, 500 chunks would take ~1 s, the fixture's timeout.
    assert int(made.split()[1]) < 250, made
    line = access_line(gateway, request_id)
    assert line["outcome"] == "ok" and line["status"] == 200, line


def test_a_client_that_stops_reading_does_not_hold_the_function(gateway: GatewayProcess) -> None:
    """What it has not taken waits in the worker (up to its budget for streams), so
    the function ends and frees its slot: it would otherwise wait for the client
    until its timeout."""
    request_id = "streamed-unread"
    host, port = gateway.public_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        path = "/hostile/big?size=8000000"
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nhost: x\r\nx-request-id: {request_id}\r\n\r\n".encode()
        )
        line = access_line(gateway, request_id)
    assert (line["status"], line["outcome"], line["bytes_out"]) == (200, "ok", 8_000_000), line
    neighbour_answers(gateway)
    attacks.record(
        AREA,
        "a client that stops reading an 8 MB streamed response",
        f"the function ended (`ok`) in {line['total_ms']} ms, its rest waiting in the worker's "
        "64 MiB for streams; neighbour answers 200",
    )
