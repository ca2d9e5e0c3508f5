"""`Sandbox.invoke`: one request in a limited component instance."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wasmtime import component as wc

from . import _inline
from ._contract import HANDLER_EXPORT
from ._errors import BodyTooLarge, Timeout
from ._inline import HostCallOnLoop, InlineGate
from ._instance import Instance
from ._limits import Limits
from ._messages import Outcome, Request, RequestSource, ResponseSink
from ._reaper import retire

if TYPE_CHECKING:
    from ._engine import Engine

__all__ = ["Sandbox"]

log = logging.getLogger("edgefn.runtime")

# Idle reusable instances kept per function; each holds a pool slot and its
# linear memory, so a burst does not leave hundreds of them behind. The engine
# caps the total across functions too (`Engine.max_idle`).
MAX_IDLE = 8
# An instance whose request brought a larger body is freed by that request, not
# queued for the reaper: it holds the body twice (stdin and linear memory), and
# the reaper's backlog of 8 could hold 8 of them (~400 MiB for 25 MiB uploads)
# on top of the body budget when it falls behind under an upload storm.
RETIRE_MAX_BODY = 1024 * 1024
# Requests before its last at which a reused instance, the only idle one, gets a
# successor made ahead: instantiating takes a few ms, a worker serves 1-3
# requests a ms. (An instance reused for fewer requests gets none.)
SUCCESSOR_LEAD = 32


class Sandbox:
    """A loaded function. Create with `Engine.load`.

    By default every `invoke` runs in a new store and instance: nothing
    survives from one request to the next, neither globals nor memory nor
    files. The engine makes those instances ahead of demand where it can
    (`Engine(ahead=...)`), each for one request all the same. With `reuse=N`,
    an instance serves up to N requests in sequence (never two at once), for
    functions that keep no per-request state: it saves instantiating, but
    globals one request leaves behind are visible to the next request of the
    same function. Limits still apply to each request, and
    an instance that fails a request in any way is thrown away.
    """

    def __init__(
        self,
        engine: Engine,
        component: wc.Component,
        *,
        sha256: str,
        env: dict[str, str],
        assets: Path | str | None,
        reuse: int = 0,
        grants: Mapping[str, Any] | None = None,
        waits_bounded: bool = False,
    ) -> None:
        self.engine = engine
        self.component = component
        self.sha256 = sha256
        self.env = env
        self.assets = Path(assets) if assets is not None else None
        self.reuse = reuse
        # What the function may use of each capability, by capability name (for
        # outbound HTTP, the hosts its manifest allows); absent: nothing.
        self.grants = dict(grants or {})
        # Granted capabilities that leave files for the guest need `/.edgefn`.
        self.needs_files = any(c.files and c.name in self.grants for c in engine.capabilities)
        # Read-only directories granted capabilities mount, by guest path.
        self.directories = {
            guest: host
            for c in engine.capabilities
            if c.name in self.grants
            for guest, host in c.directories(self.grants[c.name]).items()
        }
        handler = component.get_export_index(HANDLER_EXPORT)
        handle = component.get_export_index("handle", handler)
        assert handle is not None, "check_component() vouched for this export"
        self.handle_index = handle
        self._idle: collections.deque[Instance] = collections.deque()
        self._successor_pending = False
        # Fresh instances made ahead of demand (none for a reusable function).
        self._stock = None if reuse else engine.ahead.stock()
        # Only where no WASI wait can hold the loop (`_wait_guard.py`).
        self._inline = InlineGate(engine.inline_cpu if reuse and waits_bounded else 0)

    def invoke(
        self,
        request: Request,
        limits: Limits | None = None,
        sink: ResponseSink | None = None,
        source: RequestSource | None = None,
    ) -> Outcome:
        """Run `request` through the function under `limits`.

        A response the function streams (`edgefn.StreamingResponse`) goes to
        `sink` as it is produced, and the outcome's body is empty; without a
        sink it is gathered and comes whole, as any other. With `source`, for a
        function granted `request_stream`, the request's body is not
        `request.body` (empty) but what the function reads of `source`, as it
        arrives.

        Raises a `SandboxError` subclass for every failure: the function's own
        exception (`GuestError`), a broken limit (`Timeout`, `FuelExhausted`,
        `MemoryLimitExceeded`, `BodyTooLarge`, `ResponseTooLarge`) or any other
        trap (`GuestCrashed`). The engine stays usable after each.
        """
        limits = limits or Limits()
        if len(request.body) > limits.max_body:
            raise BodyTooLarge(
                f"request body of {len(request.body)} bytes exceeds the limit of {limits.max_body}"
            )
        if not self.reuse:
            stock = self._stock
            instance = stock.take(self, limits, len(request.body)) if stock is not None else None
            if instance is None:  # none ready: instantiated on this request's path
                instance = Instance(self, limits, request.body)
            try:
                return instance.serve(request, limits, sink=sink, source=source)
            finally:
                # A streamed body's size is the guest's to know: freed at once too.
                if len(request.body) > RETIRE_MAX_BODY or source is not None:
                    instance.close()
                else:
                    retire(instance)
        instance = self._checkout(limits)
        # What it would have cost on the loop, if the loop may be used at all.
        counted = self._inline.enabled and instance.instantiated
        started = time.thread_time() if counted else 0.0
        try:
            outcome = instance.serve(request, limits, sink=sink, source=source)
        finally:
            self._checkin(instance, limits)
        if counted:
            self._inline.spent(time.thread_time() - started)
        return outcome

    def invoke_now(self, request: Request, limits: Limits | None = None) -> Outcome | None:
        """`invoke` on this thread if the request is known to be short; else None, or
        None if it was stopped here (a host call, the second epoch tick): run `invoke`
        on another thread then. For an event loop (see `_inline.py`)."""
        limits = limits or Limits()
        # A body over `max_body` too: `invoke` refuses it.
        if not self._inline.open() or len(request.body) > min(_inline.MAX_BODY, limits.max_body):
            return None
        instance = self._take_idle(limits)
        if instance is None:
            return None
        ticks = self.engine.epoch_deadline(limits.timeout)
        cpu, started = time.thread_time(), time.perf_counter()
        try:
            return instance.serve(request, limits, on_loop=True, ticks=min(ticks, _inline.TICKS))
        except Exception as exc:
            # Stopped by the loop's tick (not its own, longer deadline), or by a host
            # call: whatever came out of that trap, as wasmtime-py's process-wide
            # slot may hand it another thread's exception. Either runs again.
            if not (
                isinstance(instance.context.breach, HostCallOnLoop)
                or (isinstance(exc, Timeout) and ticks > _inline.TICKS)
            ):
                raise
            self._inline.close()
            return None
        finally:
            self._checkin(instance, limits)
            held = time.perf_counter() - started
            self._inline.spent(time.thread_time() - cpu, held)

    def _checkout(self, limits: Limits) -> Instance:
        return self._take_idle(limits) or Instance(self, limits, None)

    def _take_idle(self, limits: Limits) -> Instance | None:
        """The most recently used idle instance that fits `limits` (the warmest)."""
        while True:
            try:
                instance = self._idle.pop()
            except IndexError:
                return None
            if instance.fits(limits):
                return instance
            instance.close()

    def _checkin(self, instance: Instance, limits: Limits) -> None:
        if (
            instance.broken
            or instance.requests >= self.reuse
            or len(self._idle) >= MAX_IDLE
            or self.engine.idle_instances() >= self.engine.max_idle
        ):
            instance.close()
            return
        self._idle.append(instance)
        if instance.requests == self.reuse - SUCCESSOR_LEAD and len(self._idle) == 1:
            self._make_successor(limits)

    def _make_successor(self, limits: Limits) -> None:
        """Instantiate, on a thread of its own, the instance that takes over when the
        only idle one retires. Without it, every request that found none then made
        its own on a sandbox thread, several at once, and waited there for the GIL
        while the event loop served the others: 28-567 ms for 0.3-0.8 ms of work,
        p99 272 ms instead of 48 at each retirement (`bench/gateway.py`'s load)."""
        if self._successor_pending:
            return
        self._successor_pending = True

        def make() -> None:
            try:
                successor = Instance(self, limits, None)
                successor.instantiate(limits)
            except Exception as exc:  # the next request instantiates, and says why
                log.debug("no successor instance made ahead: %s", exc)
            else:
                self._idle.appendleft(successor)  # taken once the warmer ones are gone
            finally:
                self._successor_pending = False

        threading.Thread(target=make, name="edgefn-successor", daemon=True).start()

    @property
    def idle(self) -> int:
        """Reusable instances waiting for a request."""
        return len(self._idle)

    @property
    def ahead(self) -> int:
        """Fresh instances made ahead, waiting for a request."""
        return len(self._stock.instances) if self._stock is not None else 0

    def trim(self, keep: int = 1) -> None:
        """Free the idle instances but the `keep` most recently used."""
        while len(self._idle) > keep:
            try:  # the least recently used; a request may take the last ones meanwhile
                instance = self._idle.popleft()
            except IndexError:
                break
            instance.close()

    def close(self) -> None:
        """Free idle instances and those made ahead; a later request starts afresh."""
        while True:
            try:  # not `while self._idle`: a request may take the last one between
                instance = self._idle.pop()
            except IndexError:
                break
            instance.close()
        if self._stock is not None:
            self._stock.clear()
