"""The `handle` call, lowered and lifted by hand for the one signature it has.

wasmtime-py's generic `Func.__call__` asks wasmtime for the function's type on
every call and walks it field by field through ctypes, which cost more than
the guest's own work for a trivial request. The contract is fixed, and
`check_handle_type` verifies it on load, so the values here are built and read
directly; headers cross as one string for the same reason (see the WIT file).
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass
from typing import Any

import wasmtime
from wasmtime import component as wc

from edgefn_contract.request_stream import STREAMED

from . import _wasmtime
from ._errors import InvalidComponent, InvalidResponse, ResponseTooLarge, SandboxError
from ._limits import MAX_RESPONSE_HEADER_BYTES, MAX_RESPONSE_HEADERS
from ._messages import HeaderList, Request

__all__ = [
    "GuestFailure",
    "HandleParam",
    "ResponseHead",
    "call_handle",
    "check_handle_type",
    "head_problem",
]

# `handle`'s type as `_describe` renders it.
HANDLE_TYPE = (
    "func(record{method:string,path:string,query:string,headers:string,"
    "body:variant{stdin:u64,file:u64}})"
    " -> result<record{status:u16,headers:string,body:variant{written:u64,rendered}},"
    "record{kind:string,message:string}>"
)


@dataclass
class ResponseHead:
    status: int
    headers: HeaderList
    # Bytes the guest wrote to stdout, or None for the image the host rendered.
    written: int | None


@dataclass
class GuestFailure:
    """The `guest-error` the SDK returns for an exception the function raised."""

    kind: str
    message: str


def check_handle_type(handle: Any) -> None:
    """Raise `InvalidComponent` unless `handle` has exactly the contract's type."""
    described = _describe(handle)
    if described != HANDLE_TYPE:
        raise InvalidComponent(
            f"the component's handle function has type {described}, "
            f"but edgefn expects {HANDLE_TYPE}; build functions with `edgefn build`"
        )


def call_handle(
    store: wasmtime.Store, func: wc.Func, param: HandleParam, request: Request, streamed: bool
) -> ResponseHead | GuestFailure:
    """Call the guest's `handle`, its body `streamed` if so (`request-stream`); a
    trap raises `wasmtime.WasmtimeError`."""
    param.set(request, streamed)
    result = _wasmtime.Val()  # zeroed: what wasmtime drops before writing the result
    _wasmtime.call_func(store, func, param.val, result)
    try:
        return _lift_result(result)
    finally:
        _wasmtime.delete_val(result)


class HandleParam:
    """`handle`'s parameter, lowered once for an instance's life: a request sets
    only the strings that changed since the last one (wasmtime copies the value
    at each call and keeps none of it). Lowered afresh on every call, in
    thirteen C calls (five for the record's field names), a reused hello's
    `Sandbox.invoke` took 148-233 µs of CPU; with it kept, 117-136 µs (5 runs
    of each, alternating)."""

    def __init__(self, body_in_file: bool) -> None:
        self.val = _wasmtime.Val()
        # Freed with this object, not by the instance's close() nor at exit: a
        # sandbox thread still serving at shutdown (a worker does not wait for
        # them) may be setting it, and a value half lowered is freed safely.
        weakref.finalize(self, _wasmtime.delete_val, self.val).atexit = False
        self._texts = ["", "", "", ""]  # method, path, query, headers: as lowered
        self._fields = _wasmtime.lower_record(self.val, _REQUEST_FIELDS)
        for i in range(4):
            _wasmtime.lower_string(self._fields[i].val, "")
        length = _wasmtime.Val()
        _wasmtime.lower_u64(length, 0)
        body = self._fields[4].val
        _wasmtime.lower_variant(body, "file" if body_in_file else "stdin", length)
        # The u64 in wasmtime's heap copy of `length`.
        self._length = body.of.variant.val.contents

    def set(self, request: Request, streamed: bool = False) -> None:
        texts = self._texts
        for i, text in enumerate(
            (request.method, request.path, request.query, encode_headers(request.headers))
        ):
            if text != texts[i]:
                _wasmtime.replace_string(self._fields[i].val, text)
                texts[i] = text
        self._length.of.u64 = STREAMED if streamed else len(request.body)


# RFC 9110 field names are tokens and field values hold no controls but HTAB:
# a CR or LF would forge a header or split the response, other controls reach
# terminals (`edgefn invoke`) and log readers.
_FIELD_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FIELD_VALUE_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def valid_field(name: str, value: str) -> bool:
    """Whether `name: value` is a header line HTTP may carry as it is."""
    return bool(_FIELD_NAME.fullmatch(name)) and not _FIELD_VALUE_CONTROL.search(value)


def head_problem(status: int, headers: HeaderList) -> SandboxError | None:
    """Why a response head the guest gave may not be sent, or None."""
    if not 200 <= status <= 599:  # no 1xx: 101 would make a proxy open a tunnel
        return InvalidResponse(
            f"the function answered with status {status}; only 200-599 may be sent"
        )
    header_bytes = sum(len(name) + len(value) + 4 for name, value in headers)
    if len(headers) > MAX_RESPONSE_HEADERS or header_bytes > MAX_RESPONSE_HEADER_BYTES:
        return ResponseTooLarge(
            f"the response has {len(headers)} headers of {header_bytes} bytes; "
            f"the limits are {MAX_RESPONSE_HEADERS} headers and "
            f"{MAX_RESPONSE_HEADER_BYTES} bytes"
        )
    for name, value in headers:  # within the caps above, so the scan is bounded
        if not valid_field(name, value):
            return InvalidResponse(f"the function answered with an invalid header {name[:100]!r}")
    return None


def encode_headers(headers: HeaderList) -> str:
    return "".join(f"{name}: {value}\n" for name, value in headers)


def decode_headers(block: str, cap: int = MAX_RESPONSE_HEADERS) -> HeaderList:
    """The header lines of `block`, at most one past `cap` (the caller refuses that
    many): a guest's megabytes of line feeds would otherwise become millions of
    tuples before they were counted."""
    headers = []
    for line in block.split("\n", cap + 1)[:-1]:
        name, _, value = line.partition(": ")
        headers.append((name, value))
    return headers


_REQUEST_FIELDS = ("method", "path", "query", "headers", "body")


def _lift_result(result: Any) -> ResponseHead | GuestFailure:
    fields = result.of.result.val.contents.of.record.data
    if not result.of.result.is_ok:
        return GuestFailure(_text(fields[0].val), _text(fields[1].val))
    body = fields[2].val.of.variant
    # `written` carries a length; `rendered`, the only other case, carries nothing.
    written = body.val.contents.of.u64 if body.val else None
    return ResponseHead(fields[0].val.of.u16, decode_headers(_text(fields[1].val)), written)


def _text(val: Any) -> str:
    return _wasmtime.lift_string(val)


def _describe(ty: Any) -> str:
    if isinstance(ty, wc.FuncType):
        params = ",".join(_describe(t) for _, t in ty.params)
        result = f" -> {_describe(ty.result)}" if ty.result is not None else ""
        return f"func({params}){result}"
    if isinstance(ty, wc.RecordType):
        return "record{" + ",".join(f"{n}:{_describe(t)}" for n, t in ty.fields) + "}"
    if isinstance(ty, wc.VariantType):
        cases = (n if t is None else f"{n}:{_describe(t)}" for n, t in ty.cases)
        return "variant{" + ",".join(cases) + "}"
    if isinstance(ty, wc.ResultType):
        return f"result<{_describe(ty.ok)},{_describe(ty.err)}>"
    return type(ty).__name__.lower()
