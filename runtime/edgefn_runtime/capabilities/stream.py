"""Streamed responses: `edgefn:http/response-stream` for guests.

The guest `begin`s its response (status and headers), then `send`s its body
chunk by chunk, each the bytes it just wrote to its stdout, to the request's
`ResponseSink` (the gateway's connection to the client). Without a sink
(`edgefn invoke`), or one that declines the stream (the edge cache, for a
response it will store), the chunks are gathered into the response body and
sent whole, as if nothing had streamed.

A streamed body counts against the same response limit as a whole one. Its
stretch of stdout is read and punched out as it is sent (`GuestOutput`), so
the host holds no more of it than the sink's backlog.
"""

from __future__ import annotations

import functools
import time
import weakref
from dataclasses import dataclass, field

import wasmtime
from wasmtime import component as wc

from .._contract import CONTRACT_VERSION
from .._errors import FuelExhausted, InvalidResponse, ResponseTooLarge, Timeout
from .._handle_call import decode_headers, head_problem
from .._messages import HeaderList, ResponseSink, Usage
from ._base import Capability, RequestContext, host_call, host_failed

__all__ = ["STREAM_IMPORT", "StreamCapability"]

STREAM_IMPORT = f"edgefn:http/response-stream@{CONTRACT_VERSION}"
# Fuel a `send` costs before its bytes (a unit each): about the host's work for it
# in guest instructions (a lock, a copy, a wake-up of the loop now and then), so a
# function sending a byte at a time pays for its host calls as for its own loop.
_SEND_FUEL = 20_000


@dataclass
class _Stream:
    # Weakly: the context holds this state, and a cycle would keep every request's
    # context, its body included, until the cyclic collector ran (100 uploads of
    # 25 MiB at once held +1.1 GB instead of +0.7).
    context: weakref.ref[RequestContext]
    # The head `begin` checked: it stands, whatever `handle` answers after it.
    head: tuple[int, HeaderList] | None = None
    sent: int = 0
    # Where the chunks go once begun: the request's sink if it took the stream.
    sink: ResponseSink | None = None
    # Without one: the body so far (one buffer: a list of a million 1-byte chunks
    # would hold some 50 MB).
    gathered: bytearray = field(default_factory=bytearray)


class StreamCapability(Capability):
    """`begin` and `send` for the guest; see the module's docstring."""

    name = "stream"
    imports = frozenset({STREAM_IMPORT})

    def link(self, linker: wc.Linker) -> None:
        with linker.root() as root, root.add_instance(STREAM_IMPORT) as instance:
            instance.add_func("begin", functools.partial(_begin, self.name))
            instance.add_func("send", functools.partial(_send, self.name))

    def begin(self, context: RequestContext) -> _Stream:
        return _Stream(weakref.ref(context))

    def finish(self, state: _Stream, usage: Usage) -> None:
        # What `response-body.rendered` sends once a stream began: the body
        # gathered, or nothing more where a sink has had it all.
        context = state.context()
        if state.head is not None and context is not None:
            context.response_head = state.head
            context.response_body = bytes(state.gathered)
        state.gathered, state.sink = bytearray(), None


# The sandbox's linker binding ------------------------------------------------
# A broken rule is a breach (`RequestContext.stop`): the guest stops, and the
# request fails with the same error a whole response's head or body would get.
# No exception may escape a host function (see `host_call`).


def _begin(name: str, store: wasmtime.StoreContext, status: int, headers: str) -> None:
    context, fuel = host_call(store)  # outside the `try`: see there
    stream: _Stream = context.states[name]
    try:
        if stream.head is not None:
            context.stop(fuel, InvalidResponse("the function began its response twice"))
            return
        parsed = decode_headers(headers)
        problem = head_problem(status, parsed)
        if problem is not None:
            context.stop(fuel, problem)
            return
        stream.head = (status, parsed)
        if context.sink is not None and context.sink.start(status, parsed):
            stream.sink = context.sink
    except Exception as exc:  # noqa: BLE001 - see above
        host_failed(context, fuel, "stream the response", exc)


def _send(name: str, store: wasmtime.StoreContext, length: int) -> bool:
    context, fuel = host_call(store)  # outside the `try`: see there
    stream: _Stream = context.states[name]
    try:
        if stream.head is None:
            context.stop(fuel, InvalidResponse("the function sent a body it had not begun"))
            return False
        limit = context.limits.max_response
        if length > limit - stream.sent:
            context.stop(
                fuel,
                ResponseTooLarge(
                    f"response body exceeds the limit of {limit} bytes "
                    f"(the function tried to send at least {stream.sent + length})"
                ),
            )
            return False
        if not fuel.spend(_SEND_FUEL + length):
            context.stop(
                fuel,
                FuelExhausted(
                    f"the function used all of its fuel ({context.limits.fuel:,} units) "
                    "streaming its response"
                ),
            )
            return False
        assert context.take_output is not None, "every instance reads its stdout"
        chunk = context.take_output(length)
        if len(chunk) < length:  # stdout is full: the rest of the chunk was never written
            context.stop(fuel, ResponseTooLarge("the function's stdout is full: it wrote too much"))
            return False
        stream.sent += length
        if stream.sink is None:
            stream.gathered += chunk
            return True
        if not chunk:
            return True
        timeout = context.limits.timeout
        try:
            return bool(stream.sink.write(chunk, context.deadline - time.monotonic()))
        except TimeoutError:
            context.stop(
                fuel,
                Timeout(
                    f"the client did not read the streamed response within the "
                    f"wall-clock timeout of {timeout:g} s"
                ),
            )
            return False
    except Exception as exc:  # noqa: BLE001 - see above
        host_failed(context, fuel, "stream the response", exc)
        return False
