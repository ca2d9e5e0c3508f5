"""What a guest on the event loop could otherwise do in WASI unchecked, checked.

Why: a reused function's short requests run on the gateway's event loop
(`_inline.py`), and the epoch deadline that bounds them there fires only while
WebAssembly runs, not while wasmtime is inside a WASI call. A guest that
polled a clock (`wasi:io/poll`, which `time.sleep` and `select` end in) would
hold the loop, and every connection of the worker, for as long as it asked;
one that asked for 64 MiB of random bytes, or polled millions of pollables,
for about 0.4 s.

wasmtime's C API cannot replace one WASI function: a linker definition of
`wasi:io/poll` shadows the whole interface, and its `pollable` resource, which
the clocks and streams hand out, is a Rust type no host resource made from
Python can stand for. So the component is changed instead, once, before it is
compiled: an adapter component (`_wait_adapter.py`) goes in front of its
imports of those interfaces, and calls the host functions of `GUARD_IMPORT`
(`link`) before WASI's. `wait` stops a guest on the loop whose instance has
subscribed to a clock, in this request or an earlier one (a reused instance
keeps its pollables); `work` stops a guest on the loop outright. Either makes
the request run again on a thread (`host_call`). Waits for anything else are
left alone: a guest reading its request body from its file waits (once,
briefly) for that read, which must not send every request with a body to a
thread. What is left of WASI does bounded work per call: files and stdio are
read and written 64 KiB at a time, and sockets are denied.

The component is nested, as it is, in an outer component that re-declares its
imports: the component's leading type, alias and import sections, copied byte
for byte (wit-component, which componentize-py uses, declares every import
there). The rest of the outer component is written as text and encoded by
wasmtime's `wat2wasm`, after a stand-in prefix with the same number of types,
instances and functions, so that its indices are right once the real prefix
replaces the stand-in. (`wasm-tools compose` 1.262 panics on resource types.)
A component laid out otherwise is compiled as it is, and its requests never
run on the loop.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import wasmtime
from wasmtime import component as wc

from . import _component_binary as binary
from . import _wait_adapter, _wasmtime
from ._contract import HANDLER_EXPORT
from ._errors import InvalidComponent
from ._wait_adapter import INTERFACES, Imported
from .capabilities import RequestContext, host_call

__all__ = ["GUARD_IMPORT", "IDENTITY", "guard", "link", "waits_bounded"]

GUARD_IMPORT = "edgefn:runtime/wait-guard@0.1.0"
# Compiled components hold the adapter: the digest of the modules that make it
# goes into the engine's key (`Engine._settings`), so a changed adapter is never
# run from cache.
IDENTITY = hashlib.sha256(
    b"".join(Path(module.__file__ or "").read_bytes() for module in (binary, _wait_adapter))
    + Path(__file__).read_bytes()
).hexdigest()[:12]
# Import names the outer component's text may hold as they are.
_NAME = re.compile(r"[A-Za-z0-9:/@.+\-]+")


def link(linker: wc.Linker) -> None:
    """Define `GUARD_IMPORT` in `linker`, for the components `guard` changed."""
    with linker.root() as root, root.add_instance(GUARD_IMPORT) as instance:
        instance.add_func("clock", _clock)
        instance.add_func("wait", _wait)
        instance.add_func("work", _work)


def _clock(store: wasmtime.StoreContext) -> None:
    _context(store).clock_subscribed = True  # not a wait yet: any later one may be long


def _work(store: wasmtime.StoreContext) -> None:
    host_call(store)  # raises on the loop; long host work is for threads


def _wait(store: wasmtime.StoreContext) -> None:
    context = _context(store)
    if context.on_loop and context.clock_subscribed:
        host_call(store)  # raises: the guest stops, the request runs again on a thread


def _context(store: wasmtime.StoreContext) -> RequestContext:
    context = _wasmtime.store_data(store)
    assert isinstance(context, RequestContext), "every store's data is its RequestContext"
    return context


def waits_bounded(engine: wasmtime.Engine, component: wc.Component) -> bool:
    """Whether `component` can do nothing long inside WASI: `guard` changed it,
    or it imports none of the interfaces the adapter checks."""
    imports = component.type.imports(engine)
    return GUARD_IMPORT in imports or not any(
        name.startswith(interface.prefix) for name in imports for interface in INTERFACES
    )


def guard(engine: wasmtime.Engine, wasm: bytes) -> bytes | None:
    """`wasm` with the adapter in front of it, or None if it imports none of the
    interfaces the adapter checks, or is laid out in a way this does not handle
    (it then runs as it is, never on the loop). Raises `InvalidComponent` if its
    imports cannot be read or provided, or if it imports `GUARD_IMPORT` itself:
    only a component changed here may, as that is how a changed one is told
    apart once compiled (`waits_bounded`)."""
    if not wasm.startswith(binary.PREAMBLE):
        return None  # not a component: compiling it says why
    try:
        sections = binary.sections(wasm)
        every = binary.declarations(wasm, [s for s in sections if s.id == binary.IMPORT])
    except binary.Malformed as exc:
        raise InvalidComponent(f"the file is not a valid WebAssembly component: {exc}") from None
    except binary.Unsupported as exc:
        raise InvalidComponent(
            f"the component imports {exc}, which edgefn does not provide"
        ) from None
    if any(i.name == GUARD_IMPORT for i in every.imports):
        raise InvalidComponent(f"the component imports {GUARD_IMPORT}, which edgefn reserves")
    declaring = (binary.ALIAS, binary.TYPE, binary.IMPORT)
    end = next((k for k, s in enumerate(sections) if s.id not in declaring), 0)
    if not end or any(s.id == binary.IMPORT for s in sections[end:]):
        return None  # no imports first, or one after the code: not a layout this knows
    prefix = wasm[: sections[end].start]
    try:
        declared = binary.declarations(wasm, sections[:end])
    except binary.Unread:
        return None
    if not all(_NAME.fullmatch(i.name) for i in declared.imports):
        return None  # names the outer component's text would have to escape
    imported = _imported(engine, prefix, declared)
    if not imported:
        return None
    stand_in = _stand_in(declared)
    outer = _outer(_wait_adapter.adapter(GUARD_IMPORT, imported), imported, declared)
    try:
        alone = bytes(wasmtime.wat2wasm(f"(component {stand_in})"))
        encoded = bytes(wasmtime.wat2wasm(f"(component {stand_in} {outer})"))
        rest = binary.sections(encoded)
    except (wasmtime.WasmtimeError, binary.Malformed):
        return None
    skipped = len(binary.sections(alone))
    if not encoded.startswith(alone) or rest[skipped].start != len(alone):
        return None  # the outer's first sections merged into the stand-in's
    # The stand-in for the guest is the second nested component (the adapter is the first).
    placeholder = [s for s in rest[skipped:] if s.id == binary.NESTED][1]
    return b"".join(
        (
            prefix,
            encoded[len(alone) : placeholder.start],
            bytes([binary.NESTED]),
            binary.uleb(len(wasm)),
            wasm,
            encoded[placeholder.end :],
        )
    )


def _imported(
    engine: wasmtime.Engine, prefix: bytes, declared: binary.Declarations
) -> list[Imported]:
    """Of each interface the adapter checks, the name the guest imports it under
    and the members it imports; empty if it imports none, or one in a way the
    adapter does not know (twice, as a function, with other members)."""
    try:  # the members: from the prefix alone, which has no code
        types = wc.Component(engine, prefix).type.imports(engine)
    except wasmtime.WasmtimeError:
        return []
    imported = []
    for interface in INTERFACES:
        found = [i for i in declared.imports if i.name.startswith(interface.prefix)]
        if not found:
            continue
        instance = types[found[0].name].ty
        if len(found) > 1 or not isinstance(instance, wc.ComponentInstanceType):
            return []
        members = set(instance.exports(engine))
        resources = {"pollable", "duration", "instant"} & members
        if (interface.resource != "") != ("pollable" in resources):
            return []
        functions = members - resources
        if not functions <= set(interface.members):
            return []
        imported.append(Imported(interface, found[0].name, functions))
    ids = [i.interface.id for i in imported]
    if "clock" in ids and "poll" not in ids:
        return []  # a clock without `wasi:io/poll`, whose pollable it names
    return imported


def _stand_in(declared: binary.Declarations) -> str:
    """As many types, instances and functions as the real prefix declares."""
    counts = declared.counts
    return " ".join(
        [*["(type (instance))"] * counts["type"]]
        + [f'(import "i{k}" (instance (type 0)))' for k in range(counts["instance"])]
        + [f'(import "f{k}" (func (type 0)))' for k in range(counts["func"])]
    )


def _outer(adapter: str, imported: list[Imported], declared: binary.Declarations) -> str:
    """Everything after the prefix: the adapter, the guest (a stand-in for now)
    instantiated with the adapter's interfaces in place of the real ones, and
    its handler exported."""
    wrapped = {i.name for i in imported}
    given = " ".join(
        f'(with "{name}" (instance {position}))'
        for name, position in ((i.name, i.position) for i in declared.imports)
        if name in wrapped
    )
    arguments = " ".join(
        f'(with "{i.name}" (instance $guarded "{i.name}"))'
        if i.name in wrapped
        else f'(with "{i.name}" ({i.sort} {i.position}))'
        for i in declared.imports
    )
    return f"""
  (import "{GUARD_IMPORT}" (instance $guard
    (export "clock" (func)) (export "wait" (func)) (export "work" (func))))
  {adapter}
  (instance $guarded (instantiate $adapter {given} (with "{GUARD_IMPORT}" (instance $guard))))
  (component $guest)
  (instance $instance (instantiate $guest {arguments}))
  (export "{HANDLER_EXPORT}" (instance $instance "{HANDLER_EXPORT}"))
"""
