"""The guarded HTTP protocol in-process: what the raw-socket tests
(`test_hostile_http.py`) cannot see from outside."""

from __future__ import annotations

import asyncio
import gc
import http.client
import threading
from collections.abc import Iterator

import pytest
import uvicorn

from edgefn_platform.gateway._http import guarded_protocol
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


@pytest.fixture
def port() -> Iterator[int]:
    with bind("127.0.0.1", 0, shared=False) as listener:
        config = uvicorn.Config(
            echo, http=guarded_protocol(5, 5), lifespan="off", log_level="warning"
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
