"""Backpressure: per-function and global in-flight caps with a bounded, timed queue."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ._errors import overloaded

__all__ = ["Admission"]


class Admission:
    """Lets a request run when both its function and the worker have room.

    Otherwise it waits in a queue of at most `queue_length`, for at most
    `queue_wait` seconds; past either it is refused at once with 503
    `overloaded` and `Retry-After`, so a slow function cannot pile up requests
    or take every slot from the others. Per worker process: one event loop.
    """

    def __init__(self, global_limit: int, queue_length: int, queue_wait: float) -> None:
        self.global_limit = global_limit
        self.queue_length = queue_length
        self.queue_wait = queue_wait
        self.in_flight: Counter[str] = Counter()
        # Their sum, kept as they change: every request reads it, and the counter
        # has an entry for every function the worker ever ran.
        self.total_in_flight = 0
        self.queued = 0
        self._changed = asyncio.Condition()

    def _has_room(self, function: str, limit: int) -> bool:
        return self.in_flight[function] < limit and self.total_in_flight < self.global_limit

    @asynccontextmanager
    async def slot(self, function: str, limit: int) -> AsyncIterator[float]:
        """Hold a slot for `function` while the block runs; yields seconds queued."""
        started = time.perf_counter()
        if not self._has_room(function, limit):
            if self.queued >= self.queue_length:
                raise overloaded(
                    f"{function} has {self.in_flight[function]} requests in "
                    "flight and the queue is full"
                )
            self.queued += 1
            try:
                async with self._changed:
                    await asyncio.wait_for(
                        self._changed.wait_for(lambda: self._has_room(function, limit)),
                        self.queue_wait,
                    )
            except TimeoutError:
                raise overloaded(f"{function} stayed busy for {self.queue_wait:g} s") from None
            finally:
                self.queued -= 1
        self.in_flight[function] += 1
        self.total_in_flight += 1
        try:
            yield time.perf_counter() - started
        finally:
            self.in_flight[function] -= 1
            self.total_in_flight -= 1
            async with self._changed:
                self._changed.notify_all()
