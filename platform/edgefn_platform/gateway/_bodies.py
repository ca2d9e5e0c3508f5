"""Request bodies: read into memory under one byte budget per worker.

A body is read before the request takes its admission slot, so a client that
uploads slowly holds bytes, not one of its function's few concurrency slots
(16 slow uploads would otherwise keep a function at `concurrency = 16` busy for
the whole body timeout, and 64 the whole worker). What bounds memory instead is
the budget: every buffered body in the worker, together, stays within
`body_budget` bytes. A body with a Content-Length reserves all of it before the
first byte is read, waiting in line (first come, first served) for up to
`queue_wait`; a chunked body reserves each chunk as it arrives and is refused
when one does not fit. Either way, past the budget: 503 `overloaded` with
`Retry-After`. Waiting requests hold a socket, not bytes: the server stops
reading a request's body after 64 KiB until the app asks for it (uvicorn's flow
control), and the body timeout starts only then (`_http.py`).

Measured (`bench/bodies.py`, one worker, 100 concurrent 25 MiB uploads): with
every body read at once the worker went from 0.5 to 5.2 GB; with the default
256 MiB budget it peaks at 1.1-1.4 GB, most of that the sandboxes of the
requests running. Reading bodies only once admitted was the other way to bound
them, and it would have let a few slow uploads take every slot.

A function whose manifest says `stream_request_body = true` is the exception:
it takes its slot at once and reads its body as it arrives (`BodyStream`), so
the worker holds a chunk of it at a time, not the whole, and the budget is
not used; the slot is held while the client uploads, within the function's
wall-clock timeout.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import logging
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.types import Message, Receive

from edgefn_runtime import BodyTooLarge, ClientClosed, RequestSource

from ._errors import overloaded

__all__ = ["BodyBudget", "BodyStream", "read_body", "refuse_declared"]

log = logging.getLogger("edgefn.gateway")


class BodyBudget:
    """Bytes of request bodies one worker holds at once. A body larger than the
    whole budget is let in only when the budget is otherwise empty, so every
    body a function accepts can be served."""

    def __init__(self, limit: int, wait: float) -> None:
        self.limit = limit
        self.wait = wait
        self.held = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    def _fits(self, size: int) -> bool:
        return self.held == 0 or self.held + size <= self.limit

    async def reserve(self, size: int) -> None:
        """Hold `size` bytes, waiting in line for up to `wait` seconds."""
        if not self._waiting and self._fits(size):
            self.held += size
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (size, granted)
        self._waiting.append(entry)
        try:
            await asyncio.wait([granted], timeout=self.wait)
        except BaseException:
            if granted.done():  # cancelled just as it was let in
                self.release(size)
            raise
        finally:
            if not granted.done():
                self._waiting.remove(entry)
                granted.cancel()
                self._admit()  # the head of the line may have been holding others back
        if granted.cancelled():
            raise overloaded(
                f"request bodies already hold {self.held:,} of this worker's "
                f"{self.limit:,} bytes and {size:,} more did not fit within {self.wait:g} s"
            )

    def grow(self, size: int) -> None:
        """Hold `size` more bytes now or refuse: a chunked body cannot wait in line
        while holding what it already has."""
        if self._waiting or not self._fits(size):
            raise overloaded(
                f"request bodies already hold {self.held:,} of this worker's {self.limit:,} bytes"
            )
        self.held += size

    def release(self, size: int) -> None:
        self.held -= size
        self._admit()

    def _admit(self) -> None:
        while self._waiting and self._fits(self._waiting[0][0]):
            size, granted = self._waiting.popleft()
            self.held += size
            granted.set_result(None)


def refuse_declared(request: Request, limit: int) -> int:
    """The body's declared length (0 if none), refused at once if over `limit`."""
    declared = request.headers.get("content-length")
    expected = int(declared) if declared is not None and declared.isdigit() else 0
    if expected > limit:
        raise BodyTooLarge(f"request body of {declared} bytes exceeds the limit of {limit}")
    return expected


@asynccontextmanager
async def read_body(request: Request, limit: int, budget: BodyBudget) -> AsyncIterator[bytes]:
    """The whole body of `request` (at most `limit` bytes), held under `budget`
    until the block ends."""
    expected = refuse_declared(request, limit)
    held = 0
    if expected:
        await budget.reserve(expected)
        held = expected
    try:
        # BytesIO grows one buffer and hands it over as the body; b"".join() of
        # the chunks held every body twice for a moment.
        buffer, size = io.BytesIO(), 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
                if size > held:  # chunked: no length declared up front
                    budget.grow(size - held)
                    held = size
                buffer.write(chunk)
        except ClientDisconnect:
            # Gone, or cut off by the body timeout: nobody reads the answer.
            raise ClientClosed("the client closed the connection mid-body") from None
        body = buffer.getvalue()
        buffer.close()
        yield body
    finally:
        budget.release(held)


class BodyStream(RequestSource):
    """A request body the function reads as it arrives: the `RequestSource` the
    sandbox calls on its thread. A `read` takes what the last ASGI message left,
    else waits for the event loop's next one (uvicorn reads no more than 64 KiB
    ahead of the app). `gone`: resolved when the client leaves (the protocol's
    `GONE_EXTENSION`)."""

    def __init__(self, receive: Receive, gone: asyncio.Future[None] | None) -> None:
        self._receive, self._gone = receive, gone
        self._loop = asyncio.get_running_loop()
        # What the last message held past the sizes asked: a view, so that a guest
        # asking a byte at a time does not copy the rest at every read.
        self._rest = memoryview(b"")
        self._over = asyncio.Event()  # the body ended, or its client left
        self.received = 0  # bytes handed to the function
        self.ended = False
        self.gone = False

    def read(self, size: int, timeout: float) -> bytes:
        if not self._rest and not self._over.is_set():
            if self._loop.is_closed():  # the worker is stopping
                raise ConnectionResetError("the gateway is stopping")
            future = asyncio.run_coroutine_threadsafe(self._next(), self._loop)
            try:
                future.result(timeout)
            except TimeoutError:
                future.cancel()
                raise
            except concurrent.futures.CancelledError:  # the loop is stopping
                raise ConnectionResetError("the gateway is stopping") from None
            finally:
                del future  # an exception's frames would hold it, and it them
        if self.gone:
            raise ConnectionResetError("the client closed the connection mid-body")
        chunk, self._rest = bytes(self._rest[:size]), self._rest[size:]
        self.received += len(chunk)
        return chunk

    async def _next(self) -> None:
        # It returns, never raises: an exception kept in the future would hold the
        # reading frame, and it the exception (a cycle for every client that left).
        while not self._rest and not self._over.is_set():
            try:
                message = await self._receive()
            except Exception:  # a bug: the function is told its client is gone
                log.exception("reading a streamed request body failed")
                message = {"type": "http.disconnect"}
            if message["type"] == "http.disconnect":
                self.gone = True
                self._over.set()
                return
            self._rest = memoryview(message.get("body", b""))
            if not message.get("more_body", False):
                self.ended = True
                self._over.set()

    async def receive_after_body(self) -> Message:
        """`receive` for a streamed response's disconnect watcher: it must not take
        the body's messages, which are the function's, but must learn at once
        that the client left, whether or not the function is reading."""
        if not self._over.is_set() and self._gone is not None:
            over: asyncio.Future[Any] = asyncio.ensure_future(self._over.wait())
            try:
                await asyncio.wait((over, self._gone), return_when=asyncio.FIRST_COMPLETED)
            finally:
                over.cancel()
            if self._gone.done():
                return {"type": "http.disconnect"}
        await self._over.wait()
        if self.gone:
            return {"type": "http.disconnect"}
        return await self._receive()
