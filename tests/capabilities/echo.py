"""A test-only host capability: `edgefn:http/echo`, in one module and no core change.

It uses every hook the core offers a capability: host functions linked once,
per-request state (`begin`), what the request cost (`finish`), the request's
fuel, a host-rendered response body, and a breach the guest cannot catch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import wasmtime
from wasmtime import component as wc

from edgefn_runtime import CONTRACT_VERSION, FuelExhausted, Usage
from edgefn_runtime.capabilities import Capability, RequestContext, host_call

ECHO_IMPORT = f"edgefn:http/echo@{CONTRACT_VERSION}"
# What one echo costs, in fuel, charged to the request before the work.
ECHO_FUEL = 1_000


@dataclass
class EchoState:
    calls: int = 0


@dataclass
class EchoCapability(Capability):
    """`echo(text)` answers "echo #<calls this request>: <text>"; `render(text)`
    makes `text` the response body; `stop()` breaks the request's fuel budget."""

    name = "echo"
    imports = frozenset({ECHO_IMPORT})
    # Every request's state as `finish` saw it, for the test to read.
    finished: list[tuple[int, int]] = field(default_factory=list)

    def link(self, linker: wc.Linker) -> None:
        with linker.root() as root, root.add_instance(ECHO_IMPORT) as instance:
            instance.add_func("echo", _echo)
            instance.add_func("render", _render)
            instance.add_func("stop", _stop)

    def begin(self, context: RequestContext) -> EchoState:
        return EchoState()

    def finish(self, state: EchoState, usage: Usage) -> None:
        self.finished.append((state.calls, usage.fuel))


def _echo(store: wasmtime.StoreContext, text: str) -> str:
    context, fuel = host_call(store)
    if not fuel.spend(ECHO_FUEL):
        context.stop(fuel, FuelExhausted("echo ran out of fuel"))
        return ""
    state: EchoState = context.states[EchoCapability.name]
    state.calls += 1
    return f"echo #{state.calls}: {text}"


def _render(store: wasmtime.StoreContext, text: str) -> None:
    context, _ = host_call(store)
    context.response_body = f"rendered on the host: {text}".encode()


def _stop(store: wasmtime.StoreContext) -> None:
    context, fuel = host_call(store)
    context.stop(fuel, FuelExhausted("the echo capability stopped the function"))
