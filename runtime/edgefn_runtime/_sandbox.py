"""`Sandbox.invoke`: one request in a limited component instance."""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wasmtime import component as wc

from ._contract import HANDLER_EXPORT
from ._errors import BodyTooLarge
from ._instance import Instance
from ._limits import Limits
from ._messages import Outcome, Request

if TYPE_CHECKING:
    from ._engine import Engine

__all__ = ["Sandbox"]

# Idle reusable instances kept per function; each holds a pool slot and its
# linear memory, so a burst does not leave hundreds of them behind. The engine
# caps the total across functions too (`Engine.max_idle`).
MAX_IDLE = 8


class Sandbox:
    """A loaded function. Create with `Engine.load`.

    By default every `invoke` runs in a new store and instance: nothing
    survives from one request to the next, neither globals nor memory nor
    files. With `reuse=N`, an instance serves up to N requests in sequence
    (never two at once), for functions that keep no per-request state: it saves
    instantiating, but globals one request leaves behind are visible to the
    next request of the same function. Limits still apply to each request, and
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
        handler = component.get_export_index(HANDLER_EXPORT)
        handle = component.get_export_index("handle", handler)
        assert handle is not None, "check_component() vouched for this export"
        self.handle_index = handle
        self._idle: collections.deque[Instance] = collections.deque()

    def invoke(self, request: Request, limits: Limits | None = None) -> Outcome:
        """Run `request` through the function under `limits`.

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
            instance = Instance(self, limits, request.body)
            try:
                return instance.serve(request, limits)
            finally:
                _retire(instance)
        instance = self._checkout(limits)
        try:
            outcome = instance.serve(request, limits)
        finally:
            self._checkin(instance)
        return outcome

    def _checkout(self, limits: Limits) -> Instance:
        while True:
            try:
                instance = self._idle.pop()  # the most recently used is the warmest
            except IndexError:
                return Instance(self, limits, None)
            if instance.fits(limits):
                return instance
            instance.close()

    def _checkin(self, instance: Instance) -> None:
        if (
            instance.broken
            or instance.requests >= self.reuse
            or len(self._idle) >= MAX_IDLE
            or self.engine.idle_instances() >= self.engine.max_idle
        ):
            instance.close()
        else:
            self._idle.append(instance)

    @property
    def idle(self) -> int:
        """Reusable instances waiting for a request."""
        return len(self._idle)

    def close(self) -> None:
        """Free idle instances (reusable functions only)."""
        while self._idle:
            self._idle.pop().close()


# Freeing a store resets its instance's memory for the next one (a copy of
# about 12 MiB, ~0.5 ms). A thread of its own does that after the response
# has left, with the GIL released, instead of the request waiting for it;
# when it falls behind, requests free their own, so pool slots never run out.
_MAX_RETIRING = 8
_retiring: queue.SimpleQueue[Instance] = queue.SimpleQueue()
_reaper: threading.Thread | None = None
_reaper_lock = threading.Lock()


def _retire(instance: Instance) -> None:
    global _reaper
    if _retiring.qsize() >= _MAX_RETIRING:
        instance.close()
        return
    if _reaper is None:
        with _reaper_lock:
            if _reaper is None:
                _reaper = threading.Thread(target=_reap, name="edgefn-reaper", daemon=True)
                _reaper.start()
    _retiring.put(instance)


def _reap() -> None:
    while True:
        instance = _retiring.get()
        instance.close()
        del instance  # the last reference: the store is freed here
