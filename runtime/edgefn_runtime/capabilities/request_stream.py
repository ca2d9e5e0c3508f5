"""Streamed request bodies: `edgefn:http/request-stream` for guests.

A function granted it (its manifest's `stream_request_body`) starts once its
request's head has arrived, and `read`s the body from the request's
`RequestSource` (the gateway's connection to the client) as the client sends
it. Each chunk goes to the read-only file `/.edgefn/request`, rewritten by the
next `read`, so the host holds one chunk of it at a time, and the function
decides how much of the rest it keeps. Without a source (`edgefn invoke`, a
body read whole) the guest is told the body's length as always and never reads.

Every limit a whole body has applies as it arrives: `max_body` counts what has
been read, the wall-clock timeout bounds each wait, and the fuel pays for the
host's work. A client that leaves mid-body stops the function (499).
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from typing import Any

import wasmtime
from wasmtime import component as wc

from edgefn_contract.request_stream import READ_MAX, REQUEST_FILE

from .._contract import CONTRACT_VERSION
from .._errors import BodyTooLarge, ClientClosed, FuelExhausted, Timeout
from ._base import Capability, RequestContext, host_call, host_failed

__all__ = ["REQUEST_STREAM_IMPORT", "RequestStreamCapability"]

REQUEST_STREAM_IMPORT = f"edgefn:http/request-stream@{CONTRACT_VERSION}"
_FILE = os.path.basename(REQUEST_FILE)
# Fuel a `read` costs before its bytes (a unit each), as a response stream's
# `send` does: about the host's work for it in guest instructions.
_READ_FUEL = 20_000


@dataclass
class _Reading:
    received: int = 0
    ended: bool = False


class RequestStreamCapability(Capability):
    """`read` for the guest; see the module's docstring."""

    name = "request_stream"
    imports = frozenset({REQUEST_STREAM_IMPORT})
    files = True

    def link(self, linker: wc.Linker) -> None:
        with linker.root() as root, root.add_instance(REQUEST_STREAM_IMPORT) as instance:
            instance.add_func("read", functools.partial(_read, self.name))

    def refusal(self, grant: Any, imports: frozenset[str]) -> str | None:
        # Built before it, the guest would take the streamed body's length for a
        # real one and read an empty body without a word.
        if REQUEST_STREAM_IMPORT in imports:
            return None
        return (
            "the manifest asks for stream_request_body, but the component was built "
            "by an edgefn without streamed request bodies; rebuild it"
        )

    def begin(self, context: RequestContext) -> _Reading:
        return _Reading()


def _read(name: str, store: wasmtime.StoreContext, size: int) -> int:
    context, fuel = host_call(store)  # outside the `try`: see there
    reading: _Reading = context.states[name]
    try:
        # Every call pays, whatever it gets: a guest calling on after the body's end
        # would otherwise keep the host's Python busy (the GIL held) for free.
        if not fuel.spend(_READ_FUEL):
            context.stop(fuel, _out_of_fuel(context))
            return 0
        source = context.source
        if source is None or reading.ended or size == 0:  # 0: asked for nothing
            return 0
        assert context.put_file is not None, "granted, the function has `/.edgefn`"
        try:
            chunk = source.read(min(size, READ_MAX), context.deadline - time.monotonic())
        except TimeoutError:
            timeout = context.limits.timeout
            context.stop(
                fuel,
                Timeout(
                    "the client did not send the request body within the "
                    f"wall-clock timeout of {timeout:g} s"
                ),
            )
            return 0
        except ConnectionError:
            context.stop(fuel, ClientClosed("the client closed the connection mid-body"))
            return 0
        if not chunk:
            reading.ended = True
            return 0
        reading.received += len(chunk)
        limit = context.limits.max_body
        if reading.received > limit:
            context.stop(fuel, BodyTooLarge(f"request body exceeds the limit of {limit} bytes"))
            return 0
        if not fuel.spend(len(chunk)):
            context.stop(fuel, _out_of_fuel(context))
            return 0
        context.put_file(_FILE, chunk)
        return len(chunk)
    except Exception as exc:  # noqa: BLE001 - no exception may escape (see `host_call`)
        host_failed(context, fuel, "read the request body", exc)
        return 0


def _out_of_fuel(context: RequestContext) -> FuelExhausted:
    return FuelExhausted(
        f"the function used all of its fuel ({context.limits.fuel:,} units) "
        "reading its request body"
    )
