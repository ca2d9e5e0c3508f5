"""The guarded HTTP protocol in-process: what the raw-socket tests
(`test_hostile_http.py`) cannot see from outside."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import http.client
import logging
import socket
import threading
from collections.abc import Iterator
from typing import NamedTuple

import pytest
import uvicorn
from starlette.responses import Response
from starlette.types import ASGIApp

from edgefn_platform.gateway._http import AnswerNow, guarded_protocol
from edgefn_platform.gateway.server import bind


async def echo(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


@contextlib.contextmanager
def serving(
    app: ASGIApp, answer_now: AnswerNow | None = None, body_timeout: float = 5
) -> Iterator[int]:
    """`app` behind the guarded protocol on a port of its own, in a thread; an idle
    kept-alive connection is closed after 0.5 s."""
    with bind("127.0.0.1", 0, shared=False) as listener:
        http = guarded_protocol(5, body_timeout, answer_now=answer_now)
        config = uvicorn.Config(
            app, http=http, lifespan="off", log_level="warning", timeout_keep_alive=0.5
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=lambda: asyncio.run(server.serve(sockets=[listener])), daemon=True
        )
        thread.start()
        try:
            while not server.started:
                threading.Event().wait(0.01)
            yield listener.getsockname()[1]
        finally:
            server.should_exit = True
            thread.join(10)


@pytest.fixture
def port() -> Iterator[int]:
    with serving(echo) as port:
        yield port


def test_a_request_leaves_nothing_for_the_cyclic_collector(port: int) -> None:
    # Reference cycles wait for the collector, which then stops the world: with
    # one made per request, p99 through the gateway was ~90 ms instead of ~8.
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def requests(n: int) -> None:
        for i in range(n):
            connection.request("POST", "/", body=b"x" * i)
            assert connection.getresponse().read() == b"x" * i

    requests(20)  # warm: first-use caches, the connection
    gc.collect()
    gc.disable()
    try:
        requests(200)
        left_for_the_collector = gc.collect()
    finally:
        gc.enable()
        connection.close()
    assert left_for_the_collector < 200, f"{left_for_the_collector} objects in cycles"


# Answered at once (`answer_now`, as `PublicApp.answer_now`), or by the ASGI app.


# The paths the ASGI app below was called for, in order (cleared by `at_once`).
through_asgi: list[str] = []


async def later(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    """The ASGI app: `/slow` after 1 s (past the keep-alive timeout), anything else at once."""
    if scope["type"] != "http":
        return
    through_asgi.append(scope["path"])
    if scope["path"] == "/slow":
        await asyncio.sleep(1)
    body = f"asgi {scope['method']} {scope['path']}".encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class AtOnce:
    """Answers GETs of /now at once; records what it was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, bytes, bytes, list[tuple[bytes, bytes]]]] = []

    def __call__(
        self, path: str, raw_path: bytes, query: bytes, headers: list[tuple[bytes, bytes]]
    ) -> Response | None:
        self.asked.append((path, raw_path, query, headers))
        if path == "/bad-header":
            return Response(b"", headers={"x-smuggled": "a\r\nset-cookie: b"})
        if not path.startswith("/now"):
            return None
        return Response(b"now " + raw_path, headers={"x-answered": "at-once"})


@pytest.fixture
def at_once() -> Iterator[tuple[int, AtOnce]]:
    answers = AtOnce()
    through_asgi.clear()
    with serving(later, answers) as port:
        yield port, answers


class Answer(NamedTuple):
    status: int
    headers: dict[str, str]  # names lower-case
    body: bytes


def responses(
    port: int, sent: bytes | list[bytes], count: int, head: bool = False
) -> tuple[list[Answer], bool]:
    """`count` responses to `sent` (raw bytes, perhaps several requests; a list:
    each sent once the response to the one before is read) on one connection,
    read in order, and whether the server then closed it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        chunks = sent if isinstance(sent, list) else [sent]
        read = sock.makefile("rb")
        answers = []
        for i in range(count):
            if i < len(chunks):
                sock.sendall(chunks[i])
            status = int(read.readline().split()[1])
            headers = {}
            while (line := read.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.lower()] = value.strip()
            length = 0 if head else int(headers.get("content-length", "0"))
            answers.append(Answer(status, headers, read.read(length)))
        sock.settimeout(0.2)  # less than the keep-alive timeout
        try:
            closed = sock.recv(1) == b""
        except TimeoutError:
            closed = False
        return answers, closed


def test_a_get_answered_at_once_is_sent_whole_and_the_connection_kept(
    at_once: tuple[int, AtOnce],
) -> None:
    port, answers = at_once
    request = b"GET /now%20x?q=1 HTTP/1.1\r\nHost: h\r\nX-Id: 7\r\n\r\n"
    (first, second), closed = responses(port, [request, request], 2)
    for response in (first, second):
        assert (response.status, response.body) == (200, b"now /now%20x")
        assert response.headers["x-answered"] == "at-once"
        assert response.headers["content-length"] == "12"
        assert response.headers["date"] and response.headers["server"]  # uvicorn's own
    assert not closed
    assert answers.asked[0] == ("/now x", b"/now%20x", b"q=1", [(b"host", b"h"), (b"x-id", b"7")])


@pytest.mark.parametrize(
    "request_line",
    [b"HEAD /now HTTP/1.1", b"POST /now HTTP/1.1", b"GET /elsewhere HTTP/1.1"],
    ids=["HEAD", "POST", "not answered"],
)
def test_what_is_not_answered_at_once_goes_to_the_asgi_app(
    at_once: tuple[int, AtOnce], request_line: bytes
) -> None:
    port, answers = at_once
    sent = request_line + b"\r\nHost: h\r\nContent-Length: 0\r\n\r\n"
    method, path = request_line.split()[:2]
    (response,), _ = responses(port, sent, 1, head=method == b"HEAD")
    if method != b"HEAD":
        assert response.body == b"asgi " + method + b" " + path
    assert len(answers.asked) == (1 if method == b"GET" else 0)


def test_a_get_with_expect_100_continue_goes_to_the_asgi_app(at_once: tuple[int, AtOnce]) -> None:
    port, answers = at_once
    sent = b"GET /now HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n"
    (response,), _ = responses(port, sent, 1)
    assert response.body == b"asgi GET /now" and answers.asked == []


def test_pipelined_requests_are_answered_in_order(at_once: tuple[int, AtOnce]) -> None:
    # The GET arrives while the slow answer is still to be written: answering it at
    # once would send its response first. It waits for its turn in the ASGI app.
    port, answers = at_once
    sent = b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\nGET /now HTTP/1.1\r\nHost: h\r\n\r\n"
    (slow, now), closed = responses(port, sent, 2)
    assert [slow.body, now.body] == [b"asgi GET /slow", b"asgi GET /now"]
    assert [path for path, *_ in answers.asked] == ["/slow"] and not closed


@pytest.mark.parametrize(
    "head",
    [b"GET /now HTTP/1.0\r\n\r\n", b"GET /now HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"],
    ids=["HTTP/1.0", "Connection: close"],
)
def test_an_answer_at_once_closes_a_connection_not_kept_alive(
    at_once: tuple[int, AtOnce], head: bytes
) -> None:
    port, _ = at_once
    (response,), closed = responses(port, head, 1)
    assert response.body == b"now /now" and response.headers["connection"] == "close"
    assert closed


def test_an_invalid_header_answered_at_once_is_never_sent(at_once: tuple[int, AtOnce]) -> None:
    port, _ = at_once
    (response,), closed = responses(port, b"GET /bad-header HTTP/1.1\r\nHost: h\r\n\r\n", 1)
    assert response.status == 500 and "set-cookie" not in response.headers
    assert closed


def test_of_a_pipelined_batch_one_request_is_answered_at_once(at_once: tuple[int, AtOnce]) -> None:
    # The rest wait their turn in uvicorn's pipeline: a read of many requests
    # cannot hold the event loop for as many function runs.
    port, answers = at_once
    (first, second, third), closed = responses(port, b"GET /now HTTP/1.1\r\nHost: h\r\n\r\n" * 3, 3)
    assert [first.body, second.body, third.body] == [
        b"now /now",
        b"asgi GET /now",
        b"asgi GET /now",
    ]
    assert len(answers.asked) == 1 and not closed


def test_the_keep_alive_timeout_of_an_answer_at_once_spares_the_next_request(
    at_once: tuple[int, AtOnce],
) -> None:
    # Pipelined behind an answer at once, a request that takes longer than the
    # keep-alive timeout (0.5 s) still gets its answer.
    port, _ = at_once
    sent = b"GET /now HTTP/1.1\r\nHost: h\r\n\r\nGET /slow HTTP/1.1\r\nHost: h\r\n\r\n"
    (now, slow), _ = responses(port, sent, 2)
    assert [now.body, slow.body] == [b"now /now", b"asgi GET /slow"]


def test_nothing_pipelined_behind_an_answer_that_closes_runs(at_once: tuple[int, AtOnce]) -> None:
    # HTTP/1.0 with `Connection: keep-alive`: the parser reads on, uvicorn closes.
    port, answers = at_once
    head = b"GET /now HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    post = b"POST /now HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nhi"
    warned: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: warned.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(handler)
    try:
        (response,), closed = responses(port, head * 2 + post + head, 1)
    finally:
        logger.removeHandler(handler)
    assert response.headers["connection"] == "close" and closed
    assert len(answers.asked) == 1 and through_asgi == []
    assert warned == []  # not read as an invalid request either


def test_a_client_that_takes_nothing_of_a_response_is_dropped() -> None:
    """uvicorn waits for a client's reads for ever: with the response (or the rest
    of a stream) in memory, and the app's task too. The protocol drops a client
    that takes nothing for `body_timeout`."""
    sent = threading.Event()

    async def large(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x" * (8 * 2**20), "more_body": True})
        # uvicorn waits for the client before a write, not after it.
        await send({"type": "http.response.body", "body": b""})
        sent.set()  # the write buffer drained, or the connection was dropped

    with (
        serving(large, body_timeout=0.5) as port,
        socket.create_connection(("127.0.0.1", port)) as client,
    ):
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        assert sent.wait(10), "the app still waits for a client that reads nothing"
