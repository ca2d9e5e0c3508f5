"""Streamed responses on the public listener: the sandbox's `ResponseSink`.

The function runs on a request thread; the connection belongs to the event
loop. `ClientStream` gathers what the function sends into one buffer and wakes
the loop only when it is not already on its way, and the loop paces small writes
(`PACE`), so a function that sends many small chunks costs the loop a write per
batch, not one per chunk (a loop step per chunk let a guest sending bytes one at
a time keep the worker's loop busy, a reviewer found).

Each stream may have `BACKLOG` bytes made and not yet sent; past that it
borrows from its worker's `StreamBudget`, and once that is spent the function
waits for its client. So a slow reader costs memory first, as a whole response
in the transport's buffer would, but bounded per worker; only then does it slow
the function down, and one that stops reading runs it into its wall-clock
timeout (the protocol drops a connection that takes nothing for `body_timeout`).
A client that goes away stops the function at its next chunk.

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

__all__ = [
    "ABORT_EXTENSION",
    "CLOSE_EXTENSION",
    "GONE_EXTENSION",
    "ClientStream",
    "StreamBudget",
    "StreamedAnswer",
    "Streams",
]

log = logging.getLogger("edgefn.gateway")

# Bytes a stream may have made and not yet sent without borrowing.
BACKLOG = 1 << 20
# At most this much of a stream's backlog is written to its connection at once:
# what is written no longer counts, and uvicorn waits for the client before a
# write, not after it.
WRITE = 256 * 1024
# After a write of less than this, the loop lets a stream's next bytes gather for
# `PACE` seconds: a function sending a byte at a time then costs the loop a write
# a millisecond, not one per send (the loop kept up with its sends one by one).
SMALL_WRITE, PACE = 64 * 1024, 0.001
# What one stream may borrow, of its worker's budget: a few slow readers must not
# take it all.
BORROW_SHARE = 8
# An ASGI extension the gateway's protocol (`_http.py`) puts in the scope: closes
# the connection without ending the response, and without uvicorn's complaint
# that the app did not complete it.
ABORT_EXTENSION = "edgefn.abort"
# Another: a future the protocol resolves when the client is gone, for whoever
# must learn it without taking the request's body messages (`BodyStream`).
GONE_EXTENSION = "edgefn.gone"
# And one that makes the connection end with the response being sent (its request's
# body was not read to the end, and is not to be read as the next request's head).
CLOSE_EXTENSION = "edgefn.close"

Headers = list[tuple[str, str]]
# Whether a response with this status and these headers may stream (asked on the
# sandbox's thread when the function begins one).
Streams = Callable[[int, Headers], bool]
# The raw head to send: (status, the function's headers, seconds queued).
Head = Callable[[int, Headers, float], list[tuple[bytes, bytes]]]


class StreamBudget:
    """Bytes a worker's streams may hold past their own `BACKLOG`, all together."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self._lock = threading.Lock()

    def take(self, size: int) -> bool:
        with self._lock:
            if self.used + size > self.limit:
                return False
            self.used += size
            return True

    def give(self, size: int) -> None:
        with self._lock:
            self.used -= size


class ClientStream(ResponseSink):
    """One request's stream to its client. `head` gives the raw head to send;
    `accepts`, whether to stream a response at all (None: always); `finish`
    ends the stream once the function is done. `queued` is set by the gateway
    before the function runs, for the head's `Server-Timing`."""

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        head: Head,
        budget: StreamBudget,
        accepts: Streams | None = None,
    ) -> None:
        self._scope, self._receive, self._send, self._head = scope, receive, send, head
        self._budget, self._accepts = budget, accepts
        self._loop = asyncio.get_running_loop()
        self.queued = 0.0
        self.status = 0  # once the function began its response
        self.handed = 0  # body bytes the function handed over
        # Made when the function begins: most responses are not streamed.
        self._room: threading.Condition | None = None
        self._ready: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pending = bytearray()  # made, not yet taken by the loop
        self._backlog = 0  # made, not yet sent: pending and being written
        self._borrowed = 0  # of that, from the budget
        self._woken = False  # the loop has been told there is more
        self._ending = False
        self._gone = False
        self._aborted = False
        # HEAD, 204 and 304 are sent without a body: the function need not make it.
        self._bodiless = scope.get("method") == "HEAD"

    @property
    def started(self) -> bool:
        return self.status != 0

    # The sandbox's thread ---------------------------------------------------

    def start(self, status: int, headers: Headers) -> bool:
        # HTTP/1.0 has no chunked encoding (RFC 9112 6.1): such a client gets it whole.
        if (
            self._aborted
            or self._scope.get("http_version") == "1.0"
            or (self._accepts is not None and not self._accepts(status, headers))
        ):
            return False
        self._room, self.status = threading.Condition(), status
        self._bodiless = self._bodiless or status in (204, 304)
        self._loop.call_soon_threadsafe(self._begin, status, headers)
        return True

    def write(self, chunk: bytes, timeout: float) -> bool:
        room = self._room
        assert room is not None, "the sandbox starts a stream before writing to it"
        if self._bodiless:  # nothing to send: the function may stop
            return False
        with room:
            if not room.wait_for(lambda: self._gone or self._fits(len(chunk)), timeout):
                raise TimeoutError
            if self._gone:
                return False
            self._pending += chunk
            self._backlog += len(chunk)
            wake, self._woken = not self._woken, True
        self.handed += len(chunk)
        if wake:
            self._loop.call_soon_threadsafe(self._wake)
        return True

    def _fits(self, size: int) -> bool:
        """Whether `size` more bytes may wait, borrowing past `BACKLOG` (held: `_room`)."""
        over = self._backlog + size - max(self._backlog, BACKLOG)
        if over <= 0 or self._backlog == 0:  # a chunk larger than the backlog still goes
            return True
        if self._borrowed + over > self._budget.limit // BORROW_SHARE:
            return False
        if not self._budget.take(over):
            return False
        self._borrowed += over
        return True

    # The event loop ---------------------------------------------------------

    def _begin(self, status: int, headers: Headers) -> None:
        if self._aborted:  # the request was cancelled before its head went out
            return
        self._ready = asyncio.Event()
        start = {
            "type": "http.response.start",
            "status": status,
            "headers": self._head(status, headers, self.queued),
        }
        self._tasks = [
            asyncio.create_task(self._pump(start)),
            asyncio.create_task(self._watch()),
        ]

    def _wake(self) -> None:
        if self._ready is not None:
            self._ready.set()

    async def _pump(self, start: Message) -> None:
        ready, room = self._ready, self._room
        assert ready is not None and room is not None
        try:
            await self._send(start)
            while True:
                await ready.wait()
                ready.clear()
                with room:
                    data = self._pending[:WRITE]
                    del self._pending[:WRITE]
                    ending = self._ending and not self._pending
                    if self._pending:  # the rest goes next, without a wake-up
                        ready.set()
                    else:
                        self._woken = False
                if data:
                    message = {"type": "http.response.body", "body": bytes(data), "more_body": True}
                    await self._send(message)
                    self._sent(len(data))
                if ending:  # the function is done: nothing more comes after `data`
                    return
                if len(data) < SMALL_WRITE:
                    await asyncio.sleep(PACE)
        except Exception:  # a bug: the function must not wait for room for ever
            log.exception("streaming a response failed")
            self._sent(0, gone=True)
            raise

    def _sent(self, size: int, gone: bool = False) -> None:
        room = self._room
        assert room is not None
        with room:
            self._backlog -= size
            kept = 0 if gone else min(self._borrowed, max(0, self._backlog - BACKLOG))
            self._budget.give(self._borrowed - kept)
            self._borrowed = kept
            self._gone = self._gone or gone
            room.notify()

    async def _watch(self) -> None:
        """Mark the client gone when it disconnects: `receive` gives nothing else
        (the body was read whole before the function ran, or `BodyStream` keeps
        the body's messages for the function)."""
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self._sent(0, gone=True)

    async def finish(self, complete: bool) -> None:
        """Send what is left and end the body, or, if the function failed
        (`complete` false), close the connection once what it sent is out."""
        if not self._tasks:  # `_begin` never ran (it failed)
            self.abort()
            return
        pump, watch = self._tasks
        assert self._room is not None and self._ready is not None
        with self._room:
            self._ending = True
        self._ready.set()
        try:
            await pump
        except Exception:  # logged by the pump
            complete = False
        finally:
            watch.cancel()
            # Not kept: a finished task holds its frame, and so this stream, in a
            # cycle the collector would have to find.
            self._tasks = []
            self._sent(0, gone=True)  # what it borrowed goes back
        if complete:
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            self._cut_off()

    def abort(self) -> None:
        """Cut the response off now, unsent bytes and all (the request was cancelled);
        one not yet begun never will be."""
        self._aborted = True
        if not self.started:
            return
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        if self._room is not None:
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
        try:
            await self.stream.finish(self.complete)
        except asyncio.CancelledError:
            # The worker stops (its drain timeout ran out): cut off, and done, as
            # `PublicApp.__call__` is with a request it answers 503 then.
            self.stream.abort()
