"""wasmtime C functions that return within microseconds, called holding the GIL.

ctypes releases the GIL around every foreign call. In a gateway worker the
event loop and the sandbox threads then trade the GIL on each of the dozen
small calls a request makes, and each trade can wait on the other thread: in
profiles, a two-word `malloc` showed up as 12 % of the worker's time. Bound
through `PyDLL` instead, these calls keep the GIL. Calls that run guest code
(instantiate, `handle`) still go through wasmtime-py and release it.
"""

from __future__ import annotations

import ctypes
from typing import Any

import wasmtime
from wasmtime import _bindings
from wasmtime import _ffi as ffi

__all__ = ["fuel", "name", "prepare", "val_delete", "val_new", "valrecord_new_uninit"]

_lib = ctypes.PyDLL(ffi.dll._name)


def _bind(symbol: str) -> Any:
    original = getattr(_bindings, f"_{symbol}")
    function = getattr(_lib, symbol)
    function.argtypes, function.restype = original.argtypes, original.restype
    return function


_byte_vec_new = _bind("wasm_byte_vec_new")
_byte_vec_new.argtypes = [ctypes.POINTER(ffi.wasm_byte_vec_t), ctypes.c_size_t, ctypes.c_char_p]
_set_fuel = _bind("wasmtime_context_set_fuel")
_get_fuel = _bind("wasmtime_context_get_fuel")
_set_epoch_deadline = _bind("wasmtime_context_set_epoch_deadline")
_limiter = _bind("wasmtime_store_limiter")
val_new = _bind("wasmtime_component_val_new")
val_delete = _bind("wasmtime_component_val_delete")
valrecord_new_uninit = _bind("wasmtime_component_valrecord_new_uninit")


def name(text: str) -> Any:
    """`text` as a `wasm_name_t` that wasmtime owns."""
    data = text.encode()
    vec = ffi.wasm_byte_vec_t()
    _byte_vec_new(ctypes.byref(vec), len(data), data)
    return vec


def prepare(store: wasmtime.Store, memory: int, fuel: int, deadline: int) -> None:
    """Set a store's memory limit, fuel and epoch deadline for the next call."""
    _limiter(store.ptr(), memory, -1, -1, -1, -1)
    context = store._context()
    _check(_set_fuel(context, fuel))
    _set_epoch_deadline(context, deadline)


def fuel(store: wasmtime.Store) -> int:
    """Fuel left in `store`."""
    left = ctypes.c_uint64(0)
    _check(_get_fuel(store._context(), ctypes.byref(left)))
    return left.value


def _check(error: Any) -> None:
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)
