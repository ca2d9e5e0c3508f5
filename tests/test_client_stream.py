"""The gateway's end of a streamed response in-process (`gateway/_streams.py`):
what a function may have made and not yet sent, and what it borrows."""

from __future__ import annotations

import asyncio

import pytest

from edgefn_platform.gateway._streams import BACKLOG, ClientStream, StreamBudget


def test_past_its_backlog_a_stream_borrows_then_waits_and_gives_all_back() -> None:
    budget = StreamBudget(3 * BACKLOG)
    sent: list[bytes] = []

    async def scenario() -> None:
        reading = asyncio.Event()  # the client: takes nothing until set

        async def send(message: dict[str, object]) -> None:
            if message["type"] == "http.response.body" and message.get("more_body"):
                await reading.wait()
                sent.append(message["body"])  # type: ignore[arg-type]

        async def receive() -> dict[str, object]:
            await asyncio.Event().wait()  # never disconnects
            return {}

        stream = ClientStream({"type": "http"}, receive, send, lambda *_: [], budget)
        chunk = b"x" * (BACKLOG // 2)

        def function() -> list[bool | str]:
            assert stream.start(200, [])
            done: list[bool | str] = []
            try:
                for _ in range(20):
                    done.append(stream.write(chunk, timeout=0.5))
            except TimeoutError:
                done.append("waits")
            return done

        done = await asyncio.to_thread(function)
        # Its own 1 MiB (two chunks), then 3 MiB borrowed (six), then it waits:
        # what it made stays counted until the client has taken it.
        assert done == [True] * 8 + ["waits"], done
        assert budget.used == 3 * BACKLOG
        reading.set()
        await stream.finish(complete=True)
        assert budget.used == 0

    asyncio.run(asyncio.wait_for(scenario(), 30))
    assert b"".join(sent) == b"x" * (4 * BACKLOG)


@pytest.mark.parametrize(("version", "streams"), [("1.0", False), ("1.1", True)])
def test_a_client_without_chunked_encoding_gets_the_body_whole(version: str, streams: bool) -> None:
    """HTTP/1.0 has none (RFC 9112 6.1): the function's stream is gathered."""

    async def start() -> bool:
        scope = {"type": "http", "http_version": version}
        stream = ClientStream(scope, None, None, lambda *_: [], StreamBudget(0))  # type: ignore[arg-type]
        taken = stream.start(200, [])
        if taken:
            stream.abort()
        return taken

    assert asyncio.run(start()) is streams
