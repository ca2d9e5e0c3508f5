"""The `handle` call, lowered and lifted by hand for the one signature it has.

wasmtime-py's generic `Func.__call__` asks wasmtime for the function's type on
every call and walks it field by field through ctypes, which cost more than
the guest's own work for a trivial request. The contract is fixed, and
`check_handle_type` verifies it on load, so the values here are built and read
directly; headers cross as one string for the same reason (see the WIT file).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi
from wasmtime import component as wc
from wasmtime.component._enter import maybe_raise_last_exn

from . import _nogil
from ._errors import InvalidComponent
from ._messages import HeaderList, Request

__all__ = ["GuestFailure", "ResponseHead", "call_handle", "check_handle_type"]

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
    store: wasmtime.Store, func: wc.Func, request: Request, body_in_file: bool
) -> ResponseHead | GuestFailure:
    """Call the guest's `handle`; a trap raises `wasmtime.WasmtimeError`."""
    param = ffi.wasmtime_component_val_t()
    _request_head(param, request, body_in_file)
    result = ffi.wasmtime_component_val_t()
    try:
        error = ffi.wasmtime_component_func_call(
            ctypes.byref(func._func), store._context(), ctypes.byref(param), 1,
            ctypes.byref(result), 1,
        )  # fmt: skip
        if error:
            trap = wasmtime.WasmtimeError._from_ptr(error)
            maybe_raise_last_exn()
            raise trap
    finally:
        _nogil.val_delete(ctypes.byref(param))
    try:
        return _lift_result(result)
    finally:
        _nogil.val_delete(ctypes.byref(result))


def encode_headers(headers: HeaderList) -> str:
    return "".join(f"{name}: {value}\n" for name, value in headers)


def decode_headers(block: str) -> HeaderList:
    headers = []
    for line in block.split("\n")[:-1]:
        name, _, value = line.partition(": ")
        headers.append((name, value))
    return headers


def _string(val: Any, text: str) -> None:
    val.kind = ffi.WASMTIME_COMPONENT_STRING
    val.of.string = _nogil.name(text)


_REQUEST_FIELDS = ("method", "path", "query", "headers", "body")


def _request_head(val: Any, request: Request, body_in_file: bool) -> None:
    record = ffi.wasmtime_component_valrecord_t()
    _nogil.valrecord_new_uninit(record, len(_REQUEST_FIELDS))
    entries = record.data
    for i, name in enumerate(_REQUEST_FIELDS):
        entries[i].name = _nogil.name(name)
    _string(entries[0].val, request.method)
    _string(entries[1].val, request.path)
    _string(entries[2].val, request.query)
    _string(entries[3].val, encode_headers(request.headers))
    length = ffi.wasmtime_component_val_t()
    length.kind = ffi.WASMTIME_COMPONENT_U64
    length.of.u64 = len(request.body)
    body = entries[4].val
    body.kind = ffi.WASMTIME_COMPONENT_VARIANT
    body.of.variant.discriminant = _nogil.name("file" if body_in_file else "stdin")
    body.of.variant.val = _nogil.val_new(ctypes.byref(length))
    val.kind = ffi.WASMTIME_COMPONENT_RECORD
    val.of.record = record


def _lift_result(result: Any) -> ResponseHead | GuestFailure:
    fields = result.of.result.val.contents.of.record.data
    if not result.of.result.is_ok:
        return GuestFailure(_text(fields[0].val), _text(fields[1].val))
    body = fields[2].val.of.variant
    # `written` carries a length; `rendered`, the only other case, carries nothing.
    written = body.val.contents.of.u64 if body.val else None
    return ResponseHead(fields[0].val.of.u16, decode_headers(_text(fields[1].val)), written)


def _text(val: Any) -> str:
    return ffi.to_str(val.of.string)


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
