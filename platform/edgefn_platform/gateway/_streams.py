"""Streamed responses on the public listener: the sandbox's `ResponseSink`.

The function runs on a request thread; the connection belongs to the event
loop. `ClientStream` hands the head and each chunk over to the loop, which
sends them in order, and holds the function back while more than `BACKLOG`
bytes wait to be sent: a client that reads slowly slows the function down
instead of filling the worker's memory, and one that stops reading runs it into
its wall-clock timeout. A client that goes away stops it at its next chunk.

Once the head is sent the status is committed. A request that fails after it
(a limit, an exception in the function) ends with the connection closed before
the body's end, so neither the client nor a cache in front can take the cut-off
body for a whole one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from edgefn_runtime import ResponseSink

__all__ = ["ABORT_EXTENSION", "ClientStream", "StreamedAnswer"]

log = logging.getLogger("edgefn.gateway")

# Bytes handed over by the function and not yet sent.
BACKLOG = 1 << 20
# An ASGI extension the gateway's protocol (`_http.py`) puts in the scope: closes
# the connection without ending the response, and without uvicorn's complaint
# that the app did not complete it.
ABORT_EXTENSION = "edgefn.abort"

Head = Callable[[int, list[tuple[str, str]]], list[tuple[bytes, bytes]]]


class ClientStream(ResponseSink):
    """One request's stream to its client. `head(status, headers)` gives the raw
    headers to send; `accepts(status, headers)`, called on the sandbox's thread,
    whether to stream that response at all (None: always); `finish` ends the
    stream once the function is done."""

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        head: Head,
        accepts: Callable[[int, list[tuple[str, str]]], bool] | None = None,
    ) -> None:
        self._scope, self._receive, self._send, self._head = scope, receive, send, head
        self._accepts = accepts
        self._loop = asyncio.get_running_loop()
        self.status = 0  # once the function began its response
        self.handed = 0  # body bytes the function handed over
        # Made when the function begins: most responses are not streamed.
        self._room: threading.Condition | None = None
        self._queue: asyncio.Queue[bytes | None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._backlog = 0
        self._gone = False
        self._bodiless = False  # 204 and 304 are sent without one

    @property
    def started(self) -> bool:
        return self.status != 0

    # The sandbox's thread ---------------------------------------------------

    def start(self, status: int, headers: list[tuple[str, str]]) -> bool:
        if self._accepts is not None and not self._accepts(status, headers):
            return False
        self._room, self.status = threading.Condition(), status
        self._bodiless = status in (204, 304)
        self._loop.call_soon_threadsafe(self._begin, status, headers)
        return True

    def write(self, chunk: bytes, timeout: float) -> bool:
        room = self._room
        assert room is not None, "the sandbox starts a stream before writing to it"
        if self._bodiless:  # as `_to_http` drops a whole body of theirs
            return not self._gone
        with room:
            if not room.wait_for(lambda: self._gone or self._backlog < BACKLOG, timeout):
                raise TimeoutError
            if self._gone:
                return False
            self._backlog += len(chunk)
        self.handed += len(chunk)
        self._loop.call_soon_threadsafe(self._put, chunk)
        return True

    # The event loop ---------------------------------------------------------

    def _begin(self, status: int, headers: list[tuple[str, str]]) -> None:
        self._queue = asyncio.Queue()
        start = {
            "type": "http.response.start",
            "status": status,
            "headers": self._head(status, headers),
        }
        self._tasks = [
            asyncio.create_task(self._pump(start)),
            asyncio.create_task(self._watch()),
        ]

    def _put(self, chunk: bytes | None) -> None:
        assert self._queue is not None, "_begin ran first: both come through call_soon_threadsafe"
        self._queue.put_nowait(chunk)

    async def _pump(self, start: Message) -> None:
        assert self._queue is not None
        try:
            await self._send(start)
            while (chunk := await self._queue.get()) is not None:
                await self._send({"type": "http.response.body", "body": chunk, "more_body": True})
                self._sent(len(chunk))
        except Exception:  # a bug: the function must not wait for room for ever
            log.exception("streaming a response failed")
            self._sent(0, gone=True)
            raise

    def _sent(self, size: int, gone: bool = False) -> None:
        assert self._room is not None
        with self._room:
            self._backlog -= size
            self._gone = self._gone or gone
            self._room.notify()

    async def _watch(self) -> None:
        """Mark the client gone when it disconnects (the body was read whole before
        the function ran, so nothing else arrives)."""
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self._sent(0, gone=True)

    async def finish(self, complete: bool) -> None:
        """Send what is left and end the body, or, if the function failed
        (`complete` false), close the connection once what it sent is out."""
        pump, watch = self._tasks
        self._put(None)
        try:
            await pump
        except Exception:  # logged by the pump
            complete = False
        finally:
            watch.cancel()
        if complete:
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            self._cut_off()

    def abort(self) -> None:
        """Cut the response off now, unsent chunks and all (the worker stops)."""
        for task in self._tasks:
            task.cancel()
        self._sent(0, gone=True)
        self._cut_off()

    def _cut_off(self) -> None:
        abort = self._scope.get("extensions", {}).get(ABORT_EXTENSION)
        if abort is not None:
            abort()
        # Elsewhere (another server), returning without ending the body closes it.


class StreamedAnswer(Response):
    """A response whose head `stream` already sent: sending it ends the body, or
    cuts it off if the request failed (not `complete`)."""

    def __init__(self, stream: ClientStream, complete: bool) -> None:
        self.stream, self.complete = stream, complete
        self.status_code, self.raw_headers, self.body = stream.status, [], b""
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.stream.finish(self.complete)
