"""The one module that reaches into wasmtime-py's private internals.

wasmtime-py's public API is too slow or too narrow in a few places edgefn
depends on, so this module uses its private `_ffi`, `_bindings` and `_value`
modules, `Func._func`, `Store._context()` and `component._enter`. They change
without notice between releases: the installed version is checked against the
pin at import (`PINNED_VERSION`, the same as `pyproject.toml`), and nothing
else in edgefn may touch them. Failures come out as `wasmtime.WasmtimeError`;
`_errors.py` turns them into edgefn errors.

Why each private use (measured on the reference machine, 2 cores):
- Small C calls that return within microseconds are bound through
  `ctypes.PyDLL`, which keeps the GIL. ctypes releases the GIL around every
  foreign call; in a gateway worker the event loop and the sandbox threads then
  traded it on each of the dozen small calls a request makes, and each trade
  could wait on the other thread: a two-word `malloc` showed up as 12 % of the
  worker's time. Calls that run guest code (instantiate, `handle`) still
  release it.
- `call_func`: the `handle` call with values lowered by hand (`_handle_call.py`);
  `Func.__call__` asks wasmtime for the type on every call and walks it through
  ctypes, which cost more than a trivial guest's own work.
- `store_data`: wasmtime-py's `StoreContext` (what a host function receives) has
  no `data()`.
- The pooling allocator and WASI stdin bytes are in the C API, not in
  wasmtime-py's `Config` / `WasiConfig`.
- `fix_option_lowering`: a host function answering `result<option<T>, E>`
  could not return its error (see there); the key-value and secrets
  capabilities' `get` answer one.
"""

from __future__ import annotations

import ctypes
from importlib.metadata import version
from typing import Any

import wasmtime
from wasmtime import component as wc

PINNED_VERSION = "50.0.1"


def _check_version() -> None:
    installed = version("wasmtime")
    if installed != PINNED_VERSION:
        raise ImportError(
            f"edgefn_runtime needs wasmtime {PINNED_VERSION} (it uses wasmtime-py internals "
            f"that change between releases), but wasmtime {installed} is installed; "
            f"run `pip install wasmtime=={PINNED_VERSION}` or reinstall edgefn"
        )


_check_version()

# After the check: a different version may not even have these modules.
from wasmtime import _bindings, _value  # noqa: E402
from wasmtime import _ffi as ffi  # noqa: E402
from wasmtime.component._enter import maybe_raise_last_exn  # noqa: E402

__all__ = [
    "PINNED_VERSION",
    "Val",
    "call_func",
    "delete_val",
    "get_fuel",
    "lift_string",
    "lower_record",
    "lower_string",
    "lower_u64",
    "lower_variant",
    "prepare",
    "replace_string",
    "set_fuel",
    "set_stdin_bytes",
    "store_data",
    "use_pooling_allocator",
]

# A component value as the C API holds it (`wasmtime_component_val_t`).
Val = ffi.wasmtime_component_val_t
# Anything that is or wraps a store's context: a `Store`, or the `StoreContext`
# a host function is called with.
Storelike = wasmtime.Store | wasmtime.StoreContext

_lib = ctypes.PyDLL(ffi.dll._name)


def _bind(symbol: str) -> Any:
    original = getattr(_bindings, f"_{symbol}")
    function = getattr(_lib, symbol)
    function.argtypes, function.restype = original.argtypes, original.restype
    return function


_byte_vec_new = _bind("wasm_byte_vec_new")
_byte_vec_new.argtypes = [ctypes.POINTER(ffi.wasm_byte_vec_t), ctypes.c_size_t, ctypes.c_char_p]
_byte_vec_delete = _bind("wasm_byte_vec_delete")
_set_fuel = _bind("wasmtime_context_set_fuel")
_get_fuel = _bind("wasmtime_context_get_fuel")
_set_epoch_deadline = _bind("wasmtime_context_set_epoch_deadline")
_limiter = _bind("wasmtime_store_limiter")
_val_new = _bind("wasmtime_component_val_new")
_val_delete = _bind("wasmtime_component_val_delete")
_valrecord_new_uninit = _bind("wasmtime_component_valrecord_new_uninit")
_get_data = _bind("wasmtime_context_get_data")


def _check(error: Any) -> None:
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)


# Store settings -------------------------------------------------------------


def prepare(store: wasmtime.Store, memory: int, fuel: int, deadline: int) -> None:
    """Set a store's memory limit, fuel and epoch deadline for the next call."""
    _limiter(store.ptr(), memory, -1, -1, -1, -1)
    context = store._context()
    _check(_set_fuel(context, fuel))
    _set_epoch_deadline(context, deadline)


def get_fuel(store: Storelike) -> int:
    """Fuel left in `store`."""
    left = ctypes.c_uint64(0)
    _check(_get_fuel(store._context(), ctypes.byref(left)))
    return left.value


def set_fuel(store: Storelike, fuel: int) -> None:
    """Give `store` exactly `fuel` units; 0 stops the guest at its next instruction."""
    _check(_set_fuel(store._context(), fuel))


def store_data(store: Storelike) -> Any:
    """The `data` object the store was created with (what `Store.data()` returns)."""
    return _value._unintern(_get_data(store._context()))


def use_pooling_allocator(config: wasmtime.Config, settings: dict[str, int]) -> None:
    """Switch `config` to the pooling allocator, each `settings` key naming a
    `wasmtime_pooling_allocation_config_<key>_set` call."""
    pool = ffi.wasmtime_pooling_allocation_config_new()
    try:
        for name, value in settings.items():
            getattr(ffi, f"wasmtime_pooling_allocation_config_{name}_set")(pool, value)
        ffi.wasmtime_pooling_allocation_strategy_set(config.ptr(), pool)
    finally:
        ffi.wasmtime_pooling_allocation_config_delete(pool)


def set_stdin_bytes(config: wasmtime.WasiConfig, data: bytes) -> None:
    """Make `data` the guest's whole stdin (wasmtime copies it into its own buffer)."""
    vec = ffi.wasm_byte_vec_t()
    # c_char_p points at the bytes object's own buffer: no copy on our side.
    buffer = ctypes.cast(ctypes.c_char_p(data), ctypes.POINTER(ctypes.c_uint8))
    ffi.wasm_byte_vec_new(ctypes.byref(vec), len(data), buffer)
    ffi.wasi_config_set_stdin_bytes(config.ptr(), ctypes.byref(vec))


# Component values and the raw call ------------------------------------------


def _name(text: str) -> Any:
    """`text` as a `wasm_name_t` that wasmtime owns."""
    data = text.encode()
    vec = ffi.wasm_byte_vec_t()
    _byte_vec_new(ctypes.byref(vec), len(data), data)
    return vec


def lower_string(val: Any, text: str) -> None:
    val.kind = ffi.WASMTIME_COMPONENT_STRING
    val.of.string = _name(text)


def replace_string(val: Any, text: str) -> None:
    """Give the string `val` new text, freeing the old (which leaves it empty)."""
    data = text.encode()  # first: a text that cannot be encoded leaves the old one
    string = ctypes.byref(val.of.string)
    _byte_vec_delete(string)
    _byte_vec_new(string, len(data), data)


def lower_u64(val: Any, number: int) -> None:
    val.kind = ffi.WASMTIME_COMPONENT_U64
    val.of.u64 = number


def lower_record(val: Any, names: tuple[str, ...]) -> Any:
    """Make `val` a record with fields `names`; returns the entries, whose `.val`
    the caller fills in order."""
    record = ffi.wasmtime_component_valrecord_t()
    _valrecord_new_uninit(record, len(names))
    entries = record.data
    for i, name in enumerate(names):
        entries[i].name = _name(name)
    val.kind = ffi.WASMTIME_COMPONENT_RECORD
    val.of.record = record
    return entries


def lower_variant(val: Any, case: str, payload: Any | None) -> None:
    """Make `val` the variant `case`, moving `payload` (a `Val`) into a new heap value."""
    val.kind = ffi.WASMTIME_COMPONENT_VARIANT
    val.of.variant.discriminant = _name(case)
    val.of.variant.val = _val_new(ctypes.byref(payload)) if payload is not None else None


def lift_string(val: Any) -> str:
    return str(ffi.to_str(val.of.string))


def delete_val(val: Any) -> None:
    """Free what wasmtime allocated for `val` (strings, records, variants)."""
    _val_delete(ctypes.byref(val))


def call_func(store: wasmtime.Store, func: wc.Func, param: Any, result: Any) -> None:
    """Call `func` with one parameter and one result; a trap, or an exception a
    host function raised, is raised here."""
    error = ffi.wasmtime_component_func_call(
        ctypes.byref(func._func), store._context(), ctypes.byref(param), 1,
        ctypes.byref(result), 1,
    )  # fmt: skip
    if error:
        trap = wasmtime.WasmtimeError._from_ptr(error)
        maybe_raise_last_exn()
        raise trap


def fix_option_lowering() -> None:
    """Let host functions return the error of a `result<option<T>, E>` (idempotent).

    wasmtime-py lowers a `result` whose two cases hold values of different Python
    classes untagged: the host returns the ok value, or the error record. It picks
    the case by `isinstance` against each case's classes, but counts an untagged
    `option`'s `none` as `object`, so every value, the error record included,
    matched the ok case and failed to lower as an option ("value not valid for
    this variant"). The `none` of an option is Python's None: its class is
    `NoneType`. An option that needs tags keeps them (`Variant`).
    """
    from wasmtime.component import _types

    def add_classes(self: Any, classes: set[type]) -> None:
        if self._tagged():
            classes.add(_types.Variant)
        else:
            classes.add(type(None))
            self.payload.add_classes(classes)

    setattr(_types.OptionType, "add_classes", add_classes)  # noqa: B010 - a method, replaced
