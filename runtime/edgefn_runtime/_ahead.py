"""Fresh instances instantiated ahead of demand, each for exactly one request.

Instantiating is about 0.6 ms of a fresh hello's 1.5 ms of CPU, and it sat on
every fresh request's critical path. A thread of each engine ("edgefn-ahead")
now makes a sandbox's next instances (store, WASI, instance) while earlier
requests run, with the GIL released while wasmtime instantiates, so a request
usually finds its instance ready. Such an instance still serves one request
and is then retired like any fresh one: isolation is what it was. Its body
comes as the file `/.edgefn/body`, because a WASI context's stdin is fixed
before instantiation.

Only sandboxes that see traffic are stocked: each take (or miss) asks for a
refill, the load's warm-up request included, so a just-deployed version has
its instances ready for its first request. A stock no request has asked for in
`idle_seconds` is freed, and so is a sandbox's when it is closed or dropped:
each instance holds a pool slot and its memory. When the thread falls behind
(a burst), requests instantiate for themselves, as they always did.
"""

from __future__ import annotations

import atexit
import collections
import logging
import queue
import threading
import time
import weakref
from typing import TYPE_CHECKING

from ._instance import Instance
from ._limits import Limits
from ._reaper import retire

if TYPE_CHECKING:
    from ._sandbox import Sandbox

__all__ = ["MAX_FILE_BODY", "Ahead", "Stock"]

log = logging.getLogger("edgefn.runtime")

# Bodies up to this size go to an instance made ahead as a file; larger ones
# make their own instance and arrive as stdin, as before: they cost far more
# than instantiating to copy anyway, and the file would sit in /dev/shm (64 MB
# in a default Docker container) while the request runs.
MAX_FILE_BODY = 64 * 1024
# After an instance could not be made ahead, its sandbox's requests make their
# own for this long: the cause may pass (the pool full during a burst, the
# ahead thread starved of CPU past the deadline) or recur (limits too small).
RETRY_SECONDS = 10.0


class Stock:
    """A sandbox's instances made ahead, and what the ahead thread needs to refill it."""

    def __init__(self, ahead: Ahead) -> None:
        self._ahead = ahead
        self.instances: collections.deque[Instance] = collections.deque()
        # The limits of the last request: the next instances are made for them.
        self.limits: Limits | None = None
        # Limits an instance could not be made under ahead (it trapped), and
        # until when: the requests under them instantiate for themselves, and
        # fail as they did.
        self.failed: Limits | None = None
        self.failed_until = 0.0
        self.wanted_at = 0.0  # monotonic time of the last take
        self.pending = False  # a refill is queued
        # Bumped by `clear()`: an instance whose making began before is freed.
        self.generation = 0
        self.lock = threading.Lock()

    def take(self, sandbox: Sandbox, limits: Limits, body_size: int) -> Instance | None:
        """An instance made ahead that serves a request under `limits` exactly as a
        new one would, if there is one; asks for a refill either way."""
        self.limits, self.wanted_at = limits, time.monotonic()
        found = None
        if body_size <= MAX_FILE_BODY:
            while self.instances:
                try:
                    instance = self.instances.popleft()  # the oldest first: all equal
                except IndexError:  # another request took the last one
                    break
                if instance.ready_for(limits):
                    found = instance
                    break
                retire(instance)  # made for limits changed since
        if not self.pending:
            self.pending = True
            self._ahead.refill(sandbox)
        return found

    def clear(self) -> None:
        """Free every instance made ahead (the sandbox is closed or gone idle)."""
        with self.lock:
            self.generation += 1  # one being made now is not added
        while True:
            try:
                instance = self.instances.popleft()  # each goes to one taker only
            except IndexError:
                return
            instance.close()


class Ahead:
    """The engine's ahead thread and its bounds: `per_sandbox` instances at most
    for one sandbox, `max_total` across the engine (each holds a pool slot)."""

    def __init__(self, *, per_sandbox: int, max_total: int, idle_seconds: float) -> None:
        if per_sandbox < 0 or max_total < 0 or idle_seconds <= 0:
            raise ValueError(
                "ahead instances need per_sandbox >= 0, max_total >= 0 and idle_seconds > 0"
            )
        self.per_sandbox = per_sandbox
        self.max_total = max_total
        self.idle_seconds = idle_seconds
        self._queue: queue.SimpleQueue[weakref.ref[Sandbox] | None] = queue.SimpleQueue()
        self._stocked: weakref.WeakSet[Sandbox] = weakref.WeakSet()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._swept_at = time.monotonic()

    @property
    def enabled(self) -> bool:
        return self.per_sandbox > 0 and self.max_total > 0

    def stock(self) -> Stock | None:
        """A new sandbox's stock; None when instances are not made ahead."""
        return Stock(self) if self.enabled else None

    def refill(self, sandbox: Sandbox) -> None:
        """Make `sandbox`'s stock whole again, on the ahead thread."""
        if self._closed:
            return
        if self._thread is None:
            with self._lock:
                if self._thread is None and not self._closed:
                    self._thread = threading.Thread(
                        target=self._run, name="edgefn-ahead", daemon=True
                    )
                    self._thread.start()
                    _running.add(self)
        self._queue.put(weakref.ref(sandbox))

    def instances(self) -> int:
        """Instances made ahead, waiting for a request, across the engine."""
        return sum(len(stock.instances) for stock in self._stocks())

    def close(self) -> None:
        """Stop the thread and free every instance made ahead."""
        with self._lock:
            self._closed = True
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join()
        for stock in self._stocks():
            stock.clear()

    def _stocks(self) -> list[Stock]:
        return [s._stock for s in list(self._stocked) if s._stock is not None]

    def _run(self) -> None:
        period = min(self.idle_seconds, 1.0)  # how often idle stocks are looked for
        while True:
            try:
                ref = self._queue.get(timeout=period)
            except queue.Empty:
                pass
            else:
                if ref is None:  # close()
                    return
                sandbox = ref()
                try:
                    if sandbox is not None:
                        self._fill(sandbox)
                except Exception:  # one thread for every function: it must not die
                    log.exception("making an instance ahead failed")
                del sandbox  # holds no sandbox while it waits: one dropped goes now
            if time.monotonic() - self._swept_at >= period:
                try:
                    self._sweep()
                except Exception:
                    log.exception("freeing idle instances made ahead failed")

    def _fill(self, sandbox: Sandbox) -> None:
        stock = sandbox._stock
        assert stock is not None, "only stocked sandboxes are refilled"
        self._stocked.add(sandbox)
        stock.pending = False  # before looking: a take from here on asks again
        limits = stock.limits
        if limits is None or (limits == stock.failed and time.monotonic() < stock.failed_until):
            return
        while (
            not self._closed
            and len(stock.instances) < self.per_sandbox
            and self.instances() < self.max_total
        ):
            generation = stock.generation
            try:
                instance = Instance(sandbox, limits, None, single_use=True)
            except OSError:  # no file or memfd to spare: requests make their own
                return
            try:
                instance.instantiate(limits)
            except Exception as exc:  # a trap (limits too small?): the request will say
                instance.close()
                stock.failed, stock.failed_until = limits, time.monotonic() + RETRY_SECONDS
                log.info(
                    "an instance could not be made ahead (%s); retrying in %g s", exc, RETRY_SECONDS
                )
                return
            with stock.lock:
                added = stock.generation == generation
                if added:
                    stock.instances.append(instance)
            if not added:  # cleared meanwhile
                instance.close()
                return

    def _sweep(self) -> None:
        now = self._swept_at = time.monotonic()
        for stock in self._stocks():
            if stock.instances and now - stock.wanted_at >= self.idle_seconds:
                stock.clear()


# Ahead threads still running at interpreter exit are stopped first: a thread
# inside wasmtime while the interpreter tears down could crash the process.
_running: weakref.WeakSet[Ahead] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for ahead in list(_running):
        ahead.close()
