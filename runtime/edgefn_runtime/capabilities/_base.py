"""The one shape every host capability has, and the request context they share.

A capability is what a sandboxed function may ask of the host beyond WASI:
images and outbound HTTP today; next a response cache, a key-value store,
secrets. Each is a `Capability` linked into the engine's linker once; for
every request the sandbox calls `begin` on each (its per-request state goes
into the shared `RequestContext`, which is the store's data) and `finish`
once the guest has answered. The core (engine, sandbox, instance) knows
capabilities only through this module: adding one is adding a module.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import wasmtime
from wasmtime import component as wc

from .. import _wasmtime
from .._errors import GuestCrashed, SandboxError
from .._inline import HostCallOnLoop
from .._limits import Limits
from .._messages import HeaderList, Request, RequestSource, ResponseSink, Usage

__all__ = [
    "Capability",
    "CountedFuel",
    "Fuel",
    "RequestContext",
    "StoreFuel",
    "host_call",
    "host_failed",
]

log = logging.getLogger("edgefn.runtime")


class Capability:
    """One host capability. Subclass it and override what the capability needs.

    `name` keys its per-request state in `RequestContext.states`; `imports` are
    the WIT interfaces (`package/interface@version`) it provides, and the only
    non-WASI imports a component may have are those of the engine's capabilities;
    `stdout_reserve` is how many bytes of its stdout the guest may use to pass
    data to the capability, beyond the response body (see `RequestContext.take_output`);
    `files`, whether it leaves files for the guest in `/.edgefn` (see
    `RequestContext.put_file`), so instances of functions granted it need that directory.
    """

    name: str = ""
    imports: frozenset[str] = frozenset()
    stdout_reserve: int = 0
    files: bool = False

    def link(self, linker: wc.Linker) -> None:
        """Add the capability's host functions to `linker` (once, per engine)."""

    def refusal(self, grant: Any, imports: frozenset[str]) -> str | None:
        """Why a component importing `imports` cannot be given `grant`, or None."""
        return None

    def directories(self, grant: Any) -> Mapping[str, Path]:
        """Read-only host directories a function granted `grant` sees, by guest path."""
        return {}

    def begin(self, context: RequestContext) -> Any:
        """The capability's state for the request `context` is about to serve.

        Host functions find it as `context.states[self.name]`."""
        return None

    def finish(self, state: Any, usage: Usage) -> None:
        """The guest is done (answered, failed or trapped): add what the
        capability's work cost to `usage`, release what `state` holds."""


class RequestContext:
    """What one request's host calls share: the store's data.

    A store keeps one context for its life; `begin` readies it for each request.
    """

    def __init__(self, assets: Path | None, grants: Mapping[str, Any] | None = None) -> None:
        self.assets = assets
        # What the function may use of each capability, by name: see `Sandbox`.
        self.grants: Mapping[str, Any] = grants or {}
        # Reads the next n bytes the guest wrote to its stdout: how a guest hands
        # a capability data without a `list<u8>` crossing the boundary.
        self.take_output: Callable[[int], bytes] | None = None
        # Writes a file the guest reads at `/.edgefn/<name>`: how a capability hands
        # the guest bytes (None unless a capability with `files` is granted).
        self.put_file: Callable[[str, bytes], None] | None = None
        self.limits = Limits()
        self.body = b""
        self.headers: list[tuple[str, str]] = []
        self.deadline = 0.0  # on time.monotonic()'s clock
        # A limit host work broke: the sandbox raises it whatever the guest does.
        self.breach: SandboxError | None = None
        # A response body a capability produced on the host, which the guest's
        # `response-body.rendered` head sends.
        self.response_body: bytes | None = None
        # ...and the head a capability already sent with it (a streamed response's):
        # it stands, whatever head the guest answers with.
        self.response_head: tuple[int, HeaderList] | None = None
        # Where a streamed response goes as the guest writes it; None: gathered
        # into `response_body` and sent whole.
        self.sink: ResponseSink | None = None
        # Where a streamed request body comes from; None: it is `body`, whole.
        self.source: RequestSource | None = None
        self.states: dict[str, Any] = {}
        # Run on an event loop, where no host call may run (`_inline.py`).
        self.on_loop = False
        # The guest subscribed to a clock, in this request or an earlier one of
        # its instance: a wait of its may be a long one (`_wait_guard.py`).
        self.clock_subscribed = False

    def begin(
        self,
        request: Request,
        limits: Limits,
        capabilities: Iterable[Capability],
        *,
        on_loop: bool = False,
        sink: ResponseSink | None = None,
        source: RequestSource | None = None,
    ) -> None:
        self.body, self.headers, self.limits = request.body, request.headers, limits
        self.on_loop, self.sink, self.source = on_loop, sink, source
        self.deadline = time.monotonic() + limits.timeout
        self.breach = None
        self.response_body, self.response_head = None, None
        self.states = {capability.name: capability.begin(self) for capability in capabilities}

    def stop(self, fuel: Fuel, breach: SandboxError) -> None:
        """Record `breach` and stop the guest: out of fuel, it cannot catch it, and
        the sandbox reports the limit the host work broke."""
        self.breach = breach
        fuel.set(0)


class Fuel:
    """The request's fuel, which host work is charged to before it is done."""

    def left(self) -> int:
        raise NotImplementedError

    def set(self, fuel: int) -> None:
        raise NotImplementedError

    def spend(self, cost: int) -> bool:
        """Take `cost` units; False, taking nothing, when fewer are left."""
        left = self.left()
        if cost > left:
            return False
        self.set(left - cost)
        return True


class StoreFuel(Fuel):
    """The fuel of the store a host function was called from."""

    def __init__(self, store: wasmtime.StoreContext) -> None:
        self._store = store

    def left(self) -> int:
        return _wasmtime.get_fuel(self._store)

    def set(self, fuel: int) -> None:
        _wasmtime.set_fuel(self._store, fuel)


class CountedFuel(Fuel):
    """Fuel without a store, for running a capability's host code natively."""

    def __init__(self, fuel: int) -> None:
        self.fuel = fuel

    def left(self) -> int:
        return self.fuel

    def set(self, fuel: int) -> None:
        self.fuel = fuel


def host_call(store: wasmtime.StoreContext) -> tuple[RequestContext, Fuel]:
    """The request a host function was called for, and its fuel.

    Every host function calls it first, outside any `try`: on an event loop it
    raises, trapping the guest before the host does anything, and the sandbox
    runs the request again on a thread (`_inline.py`). A `WasmtimeError` is the
    trap itself; any other exception would go through wasmtime-py's one
    process-wide slot, which another thread's trap could take.
    """
    context = _wasmtime.store_data(store)
    assert isinstance(context, RequestContext), "every store's data is its RequestContext"
    if context.on_loop:
        context.breach = HostCallOnLoop("a host call on the event loop")
        raise wasmtime.WasmtimeError("a host call on the event loop")
    return context, StoreFuel(store)


def host_failed(context: RequestContext, fuel: Fuel, what: str, exc: Exception) -> None:
    """A host function's own bug, which may not escape it (see `host_call`): logged
    with its traceback, and the guest stopped; the request fails as `function_crashed`
    saying what the host failed to do."""
    log.exception("the host failed to %s", what, exc_info=exc)
    context.stop(fuel, GuestCrashed(f"the host failed to {what}: {type(exc).__name__}"))
