"""Streamed request bodies through the gateway (`stream_request_body = true`): a
client's upload reaches the function as it is sent, on raw sockets so each
chunk's timing is the test's. The sandbox's side is in test_request_stream.py."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import attacks
from gateway_process import GatewayProcess, deploy_as

pytestmark = pytest.mark.wasm

HOSTILE = Path(__file__).resolve().parent / "functions" / "hostile"
AREA = "Streamed request bodies (tests/test_upload_stream.py)"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """The hostile fixture without its assets, twice: as `whole`, as it is; as
    `uploads`, reading bodies as they arrive, within 3 s and a 4 MiB `max_body`."""
    text = (HOSTILE / "edgefn.toml").read_text().replace('assets = "assets"', "")
    whole = text
    text = text.replace('timeout = "1s"', 'timeout = "3s"\nmax_body = "4MiB"')
    text = re.sub(r"^(name = .*)$", r"\1\nstream_request_body = true", text, flags=re.M)
    with GatewayProcess(tmp_path_factory.mktemp("uploads") / "data") as process:
        deploy_as(process, HOSTILE, "whole", whole)
        deploy_as(process, HOSTILE, "uploads", text)
        process.wait_serving("uploads")
        process.wait_serving("whole")
        yield process


def logged(gateway: GatewayProcess, request_id: str, kind: str) -> str:
    """The request's one line of `kind` ("access" or "log") in the function's logs."""
    gateway.wait_logged("uploads", [request_id])
    lines = gateway.admin("GET", f"/v1/functions/uploads/logs?request_id={request_id}").json()
    (line,) = (r["line"] for r in lines if r["kind"] == kind)
    return str(line)


def access_line(gateway: GatewayProcess, request_id: str) -> dict[str, object]:
    line: dict[str, object] = json.loads(logged(gateway, request_id, "access"))
    return line


class Upload:
    """One chunked POST on its own socket, sent a chunk at a time."""

    def __init__(self, gateway: GatewayProcess, path: str, headers: str = "") -> None:
        self.sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n{headers}\r\n"
        self.sock.sendall(head.encode())
        self.received = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))

    def end(self) -> None:
        self.sock.sendall(b"0\r\n\r\n")

    def read_more(self) -> None:
        chunk = self.sock.recv(65536)
        assert chunk, f"the connection closed after {self.received!r}"
        self.received += chunk

    def read_until(self, marker: bytes) -> None:
        while marker not in self.received:
            self.read_more()

    def answer(self) -> tuple[int, dict[str, str], bytes]:
        """The whole response, read to the connection's end or its length."""
        self.read_until(b"\r\n\r\n")
        head, _, body = self.received.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:])}
        length = int(headers.get("content-length", -1))
        while len(body) < length and (chunk := self.sock.recv(65536)):
            body += chunk
        return int(lines[0].split()[1]), headers, body

    def close(self) -> None:
        self.sock.close()


def test_the_function_has_each_chunk_before_the_client_sends_the_next(
    gateway: GatewayProcess,
) -> None:
    upload = Upload(gateway, "/uploads/upload-echo")

    def echoed() -> int:
        """The bytes the function says it has read so far (a chunk sent may reach
        it in several)."""
        body = upload.received.partition(b"\r\n\r\n")[2]
        return sum(int(size) for size in re.findall(rb"^(\d+)\n", body, re.M))

    try:
        sent = 0
        for size in (5, 70_000, 3):
            upload.send(b"x" * size)
            sent += size
            # The function streams back each chunk's size as it reads it: the
            # answer to this chunk comes while the body has not ended.
            while echoed() < sent:
                upload.read_more()
        upload.end()
        upload.read_until(b"0\r\n\r\n")
        assert upload.received.startswith(b"HTTP/1.1 200 ") and echoed() == 70_008
        # Read to its end while the response streamed: the connection is kept alive.
        upload.received = b""
        upload.sock.sendall(
            b"POST /uploads/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx"
        )
        status, _, body = upload.answer()
    finally:
        upload.close()
    assert status == 200 and json.loads(body)["size"] == 1


def test_a_large_upload_is_read_as_it_arrives_and_whole(gateway: GatewayProcess) -> None:
    body = bytes(range(256)) * (3 * 4096)  # 3 MiB
    response = httpx.post(f"{gateway.public_url}/uploads/upload", content=body, timeout=30)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["size"] == len(body) and answer["chunks"] > 1
    assert answer["sha256"] == hashlib.sha256(body).hexdigest()
    line = access_line(gateway, response.headers["x-request-id"])
    assert line["bytes_in"] == len(body)


def test_a_function_without_it_gets_the_body_whole_as_before(gateway: GatewayProcess) -> None:
    response = httpx.post(f"{gateway.public_url}/whole/upload", content=b"x" * 300_000)
    assert response.json()["chunks"] == 1 and response.json()["size"] == 300_000


def test_a_declared_length_past_max_body_is_refused_before_the_function_runs(
    gateway: GatewayProcess,
) -> None:
    response = httpx.post(f"{gateway.public_url}/uploads/upload", content=b"x" * (5 << 20))
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"
    assert response.headers["connection"] == "close"
    assert access_line(gateway, response.headers["x-request-id"])["fuel"] == 0


def test_a_chunked_body_past_max_body_stops_the_function_with_413(
    gateway: GatewayProcess,
) -> None:
    upload = Upload(gateway, "/uploads/upload")
    try:
        for _ in range(5):
            upload.send(b"x" * (1 << 20))
        status, headers, body = upload.answer()
    finally:
        upload.close()
    assert status == 413 and json.loads(body)["error"]["code"] == "body_too_large"
    assert headers["connection"] == "close"
    attacks.record(
        AREA,
        "a chunked upload past `max_body` (5 MiB into 4 MiB)",
        "413 `body_too_large` once the limit is crossed; the connection closed",
    )


def test_a_function_that_reads_part_of_the_body_answers_and_the_connection_closes(
    gateway: GatewayProcess,
) -> None:
    upload = Upload(gateway, "/uploads/upload?stop=1")
    try:
        upload.send(b"first")
        status, headers, body = upload.answer()
    finally:
        upload.close()
    assert status == 200 and json.loads(body)["size"] == 5
    assert headers["connection"] == "close"  # the rest is not read to its end


def test_a_client_that_leaves_mid_body_stops_the_function(gateway: GatewayProcess) -> None:
    request_id = "leaves-mid-body"
    upload = Upload(gateway, "/uploads/upload", f"X-Request-Id: {request_id}\r\n")
    upload.send(b"x" * 1000)
    time.sleep(0.3)
    upload.close()
    line = access_line(gateway, request_id)
    assert (line["status"], line["outcome"]) == (499, "client_closed_request")
    assert line["bytes_in"] == 1000
    attacks.record(
        AREA,
        "a client leaving mid-upload",
        "the function stopped at its next read; 499 `client_closed_request` logged",
    )


def test_an_upload_slower_than_the_timeout_is_cut_off_with_504(gateway: GatewayProcess) -> None:
    upload = Upload(gateway, "/uploads/upload")
    try:
        upload.send(b"x")
        started = time.monotonic()
        status, _, body = upload.answer()  # nothing more is sent
    finally:
        upload.close()
    assert status == 504 and json.loads(body)["error"]["code"] == "timeout"
    assert "did not send the request body" in json.loads(body)["error"]["message"]
    took = time.monotonic() - started
    assert took < 6
    attacks.record(
        AREA,
        "an upload stalled after one byte (slowloris body)",
        f"504 `timeout` in {took:.1f} s (the function's 3 s); its slot held until then",
    )


def test_kept_alive_requests_go_on_after_a_streamed_body_read_to_its_end(
    gateway: GatewayProcess,
) -> None:
    with httpx.Client(base_url=gateway.public_url) as client:
        for size in (10, 200_000, 0):
            response = client.post("/uploads/upload", content=b"y" * size)
            assert response.json()["size"] == size
            assert response.headers.get("connection") != "close"


def test_a_response_streamed_before_its_body_is_read_ends_the_connection(
    gateway: GatewayProcess,
) -> None:
    """Kept alive, the connection would read the unread rest of the body for the
    next request's head (or wait for it) after the response."""
    upload = Upload(gateway, "/uploads/stream?chunks=2&size=3")
    try:
        upload.send(b"never read")
        upload.read_until(b"0\r\n\r\n")  # the whole response, its chunked end included
        assert upload.sock.recv(100) == b""  # then the gateway closed
    finally:
        upload.close()
    assert upload.received.startswith(b"HTTP/1.1 200 ")


def test_a_client_that_leaves_while_its_body_is_unread_stops_the_streamed_response(
    gateway: GatewayProcess,
) -> None:
    """The response's disconnect watcher may not read the body, which is the
    function's: the protocol tells it the client left all the same."""
    request_id = "left-with-body-unread"
    upload = Upload(
        gateway, "/uploads/stream?chunks=500&size=10&pause=5", f"X-Request-Id: {request_id}\r\n"
    )
    upload.send(b"never read")
    upload.read_until(b"\r\n\r\n")
    upload.close()
    made = logged(gateway, request_id, "log")
    # 5 ms apart, 500 chunks would take 2.5 s, most of the function's 3 s.
    assert int(made.split()[1]) < 250, made
    assert access_line(gateway, request_id)["outcome"] == "ok"
