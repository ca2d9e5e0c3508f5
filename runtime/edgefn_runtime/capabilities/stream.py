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
import logging
import time
from dataclasses import dataclass, field

import wasmtime
from wasmtime import component as wc

from .._contract import CONTRACT_VERSION
from .._errors import GuestCrashed, InvalidResponse, ResponseTooLarge, Timeout
from .._handle_call import decode_headers, head_problem
from .._messages import ResponseSink, Usage
from ._base import Capability, Fuel, RequestContext, host_call

__all__ = ["STREAM_IMPORT", "StreamCapability"]

STREAM_IMPORT = f"edgefn:http/response-stream@{CONTRACT_VERSION}"
log = logging.getLogger("edgefn.runtime")


@dataclass
class _Stream:
    context: RequestContext
    began: bool = False
    sent: int = 0
    # Where the chunks go once begun: the request's sink if it took the stream.
    sink: ResponseSink | None = None
    # Without one: the body so far.
    chunks: list[bytes] = field(default_factory=list)


class StreamCapability(Capability):
    """`begin` and `send` for the guest; see the module's docstring."""

    name = "stream"
    imports = frozenset({STREAM_IMPORT})

    def link(self, linker: wc.Linker) -> None:
        with linker.root() as root, root.add_instance(STREAM_IMPORT) as instance:
            instance.add_func("begin", functools.partial(_begin, self.name))
            instance.add_func("send", functools.partial(_send, self.name))

    def begin(self, context: RequestContext) -> _Stream:
        return _Stream(context)

    def finish(self, state: _Stream, usage: Usage) -> None:
        # What `response-body.rendered` sends once a stream began: the body
        # gathered, or nothing more where a sink has had it all.
        if state.began:
            state.context.response_body = b"".join(state.chunks)
            state.chunks = []


# The sandbox's linker binding ------------------------------------------------
# A broken rule is a breach (`RequestContext.stop`): the guest stops, and the
# request fails with the same error a whole response's head or body would get.
# No exception may escape a host function (see `host_call`).


def _begin(name: str, store: wasmtime.StoreContext, status: int, headers: str) -> None:
    context, fuel = host_call(store)  # outside the `try`: see there
    stream: _Stream = context.states[name]
    try:
        parsed = decode_headers(headers)
        if stream.began:
            context.stop(fuel, InvalidResponse("the function began its response twice"))
            return
        problem = head_problem(status, parsed)
        if problem is not None:
            context.stop(fuel, problem)
            return
        stream.began = True
        if context.sink is not None and context.sink.start(status, parsed):
            stream.sink = context.sink
    except Exception as exc:  # noqa: BLE001 - see above
        _host_failed(context, fuel, "begin", exc)


def _send(name: str, store: wasmtime.StoreContext, length: int) -> bool:
    context, fuel = host_call(store)  # outside the `try`: see there
    stream: _Stream = context.states[name]
    try:
        if not stream.began:
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
        assert context.take_output is not None, "every instance reads its stdout"
        chunk = context.take_output(length)
        if len(chunk) < length:  # stdout is full: the rest of the chunk was never written
            context.stop(fuel, ResponseTooLarge("the function's stdout is full: it wrote too much"))
            return False
        stream.sent += length
        if stream.sink is None:
            stream.chunks.append(chunk)
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
        _host_failed(context, fuel, "send", exc)
        return False


def _host_failed(context: RequestContext, fuel: Fuel, call: str, exc: Exception) -> None:
    log.exception("response-stream %s failed in the host", call, exc_info=exc)
    context.stop(
        fuel, GuestCrashed(f"the host failed to stream the response: {type(exc).__name__}")
    )
