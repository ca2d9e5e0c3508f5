"""The gateway's end of a streamed response in-process (`gateway/_streams.py`):
what a function may have made and not yet sent, and what it borrows."""

from __future__ import annotations

import asyncio

import pytest
from cycles import cyclic_garbage

from edgefn_platform.gateway._streams import BACKLOG, ClientStream, StreamBudget


@pytest.mark.parametrize(
    ("others", "made"),
    [
        # Its own 1 MiB (two chunks), then its share of the budget (3 MiB, six).
        (0, 8),
        # Its own 1 MiB, then what other streams left of the budget (half a MiB).
        (24 * BACKLOG - BACKLOG // 2, 3),
    ],
    ids=["its share", "what is left"],
)
def test_past_its_backlog_a_stream_borrows_then_waits_and_gives_all_back(
    others: int, made: int
) -> None:
    budget = StreamBudget(24 * BACKLOG)  # a share of 3 MiB a stream
    assert budget.take(others)
    sent: list[bytes] = []
    streams: list[ClientStream] = []

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
        streams.append(stream)
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

        # What it made stays counted until the client has it: then it waits.
        done = await asyncio.to_thread(function)
        assert done == [True] * made + ["waits"], done
        assert budget.used == others + (made - 2) * BACKLOG // 2
        reading.set()
        await stream.finish(complete=True)
        assert budget.used == others

    with cyclic_garbage() as cyclic:
        asyncio.run(asyncio.wait_for(scenario(), 30))
        streams.clear()  # the last reference: freed now, unless in a cycle
    assert b"".join(sent) == b"x" * (made * BACKLOG // 2)
    # Its tasks (the watch was cancelled) would hold it in a cycle.
    assert "ClientStream" not in cyclic, cyclic


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
