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
"""

from __future__ import annotations

import asyncio
import io
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.requests import ClientDisconnect, Request

from edgefn_runtime import BodyTooLarge

from ._errors import GatewayError, overloaded

__all__ = ["BodyBudget", "read_body"]


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


@asynccontextmanager
async def read_body(request: Request, limit: int, budget: BodyBudget) -> AsyncIterator[bytes]:
    """The whole body of `request` (at most `limit` bytes), held under `budget`
    until the block ends."""
    declared = request.headers.get("content-length")
    expected = int(declared) if declared is not None and declared.isdigit() else 0
    if expected > limit:
        raise BodyTooLarge(f"request body of {declared} bytes exceeds the limit of {limit}")
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
            # Gone, or cut off by the body timeout: nobody reads the answer; 499 as nginx logs it.
            raise GatewayError(
                499, "client_closed_request", "the client closed the connection mid-body"
            ) from None
        body = buffer.getvalue()
        buffer.close()
        yield body
    finally:
        budget.release(held)
