"""WASI's waits, made to stop a guest that runs on the event loop.

Why: a reused function's short requests run on the gateway's event loop
(`_inline.py`), and the epoch deadline that bounds them there fires only while
WebAssembly runs, not while wasmtime waits inside a WASI call. A guest that
polled a clock (`wasi:io/poll`, which `time.sleep` and `select` end in) would
hold the loop, and every connection of the worker, for as long as it asked.

wasmtime's C API cannot replace one WASI function: a linker definition of
`wasi:io/poll` shadows the whole interface, and its `pollable` resource, which
the clocks and streams hand out, is a Rust type no host resource made from
Python can stand for. So the component is changed instead, once, before it is
compiled: an adapter component goes in front of its `wasi:io/poll` and
`wasi:clocks/monotonic-clock` imports. Its `subscribe-instant` and
`subscribe-duration` first call `clock` of `GUARD_IMPORT`, a host function
that marks the instance as one that has made a clock subscription; its `poll`
and `pollable.block` first call `wait`, which stops the guest if it runs on the
loop and its instance is so marked (`host_call`: the request then runs again
on a thread); then each calls WASI's own. Waits for anything else are left
alone: a guest reading its request body from its file waits (once, briefly)
for that read, which must not send every request with a body to a thread.
The borrows `poll` and `block` are lent are dropped before they return, as
the canonical ABI requires; the other members pass through untouched.

The composition nests the component as it is inside an outer component that
re-declares its imports: those are the component's leading type, alias and
import sections, copied byte for byte (wit-component, which componentize-py
uses, declares every import there). The rest of the outer component is
written as text and encoded by wasmtime's `wat2wasm`, after a stand-in prefix
with the same number of types, instances and functions, so that its indices
are right once the real prefix replaces the stand-in. `wasm-tools compose`
cannot do this (1.262 panics on resource types), and no new tool is needed.
A component laid out otherwise, or whose imports this does not understand,
is left as it is: its requests then never run on the loop.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import NamedTuple

import wasmtime
from wasmtime import component as wc

from . import _wasmtime
from ._contract import HANDLER_EXPORT
from ._errors import InvalidComponent
from .capabilities import RequestContext, host_call

__all__ = ["GUARD_IMPORT", "IDENTITY", "guard", "link", "waits_bounded"]

GUARD_IMPORT = "edgefn:runtime/wait-guard@0.1.0"
# Compiled components hold the adapter: this module's own digest goes into the
# engine's key (`Engine._settings`), so a changed adapter is never run from cache.
IDENTITY = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
_POLL = "wasi:io/poll@"
_CLOCK = "wasi:clocks/monotonic-clock@"
_PREAMBLE = b"\x00asm\x0d\x00\x01\x00"
# Section ids and sorts of the component binary format (Binary.md).
_ALIAS, _TYPE, _IMPORT, _NESTED = 6, 7, 10, 4
_SORTS = {0x01: "func", 0x03: "type", 0x05: "instance"}

# The members of each interface the adapter knows: their signatures (`$r`, the
# pollable) and, for those it wraps, how the wrapper is lifted; the others pass
# through as they are.
_POLL_MEMBERS = {
    "[method]pollable.ready": ('(param "self" (borrow $r)) (result bool)', None),
    "[method]pollable.block": (
        '(param "self" (borrow $r))',
        '(canon lift (core func $wrap "block"))',
    ),
    "poll": (
        '(param "in" (list (borrow $r))) (result (list u32))',
        '(canon lift (core func $wrap "poll") (memory $mem) (realloc $realloc)'
        ' (post-return (core func $wrap "post-poll")))',
    ),
}
_CLOCK_MEMBERS = {
    "now": ("(result u64)", None),
    "resolution": ("(result u64)", None),
    "subscribe-instant": (
        '(param "when" u64) (result (own $r))',
        '(canon lift (core func $wrap "subscribe-instant"))',
    ),
    "subscribe-duration": (
        '(param "when" u64) (result (own $r))',
        '(canon lift (core func $wrap "subscribe-duration"))',
    ),
}
# The wrapped members, by their names inside the adapter.
_WRAPPED = {
    "[method]pollable.block": "block",
    "poll": "poll",
    "subscribe-instant": "subscribe-instant",
    "subscribe-duration": "subscribe-duration",
}
_WRAPPER = """
    (core module $wrap
      (import "host" "memory" (memory 1))
      (import "host" "clock" (func $clock))
      (import "host" "wait" (func $wait))
      (import "host" "drop" (func $drop (param i32)))
      (import "host" "reset" (func $reset))
      (import "host" "block" (func $block (param i32)))
      (import "host" "poll" (func $poll (param i32 i32 i32)))
      (import "host" "subscribe-instant" (func $subscribe-instant (param i64) (result i32)))
      (import "host" "subscribe-duration" (func $subscribe-duration (param i64) (result i32)))
      (func (export "subscribe-instant") (param i64) (result i32)
        (call $clock) (call $subscribe-instant (local.get 0)))
      (func (export "subscribe-duration") (param i64) (result i32)
        (call $clock) (call $subscribe-duration (local.get 0)))
      (func (export "block") (param i32)
        (call $wait) (call $block (local.get 0)) (call $drop (local.get 0)))
      ;; The borrows lent for the call are dropped before it returns, as the
      ;; canonical ABI requires of a component that does not own the resource.
      (func (export "poll") (param $at i32) (param $count i32) (result i32)
        (local $end i32)
        (call $wait)
        (call $poll (local.get $at) (local.get $count) (i32.const 0))
        (local.set $end (i32.add (local.get $at) (i32.shl (local.get $count) (i32.const 2))))
        (block $done (loop $next
          (br_if $done (i32.ge_u (local.get $at) (local.get $end)))
          (call $drop (i32.load (local.get $at)))
          (local.set $at (i32.add (local.get $at) (i32.const 4)))
          (br $next)))
        (i32.const 0))
      (func (export "post-poll") (param i32) (call $reset)))
    ;; A bump allocator for the lists `poll` passes, reset after each call; and
    ;; stand-ins for the members the guest does not import (never called).
    (core module $memory
      (memory (export "memory") 1)
      (global $next (mut i32) (i32.const 8))
      (func (export "realloc") (param i32 i32 i32 i32) (result i32)
        (local $at i32) (local $end i32)
        (local.set $at (i32.and
          (i32.add (global.get $next) (i32.sub (local.get 2) (i32.const 1)))
          (i32.sub (i32.const 0) (local.get 2))))
        (local.set $end (i32.add (local.get $at) (local.get 3)))
        (if (i32.gt_u (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
          (then (if (i32.eq (i32.const -1) (memory.grow (i32.sub
              (i32.shr_u (i32.add (local.get $end) (i32.const 65535)) (i32.const 16))
              (memory.size))))
            (then unreachable))))
        (global.set $next (local.get $end))
        (local.get $at))
      (func (export "reset") (global.set $next (i32.const 8)))
      (func (export "block") (param i32) unreachable)
      (func (export "poll") (param i32 i32 i32) unreachable)
      (func (export "subscribe-instant") (param i64) (result i32) unreachable)
      (func (export "subscribe-duration") (param i64) (result i32) unreachable))
"""


def _adapter(poll: str, poll_members: set[str], clock: str, clock_members: set[str]) -> str:
    """The adapter for a guest that imports these members of `poll` and `clock`."""
    interface = {**dict.fromkeys(poll_members, "$poll"), **dict.fromkeys(clock_members, "$clock")}
    return f"""
  (component $adapter
    (import "{poll}" (instance $poll
      (export "pollable" (type $p (sub resource))) {_declared(_POLL_MEMBERS, poll_members)}))
    (alias export $poll "pollable" (type $pollable))
    (import "{clock}" (instance $clock
      (export "pollable" (type $p (eq $pollable))) {_declared(_CLOCK_MEMBERS, clock_members)}))
    (import "{GUARD_IMPORT}" (instance $guard (export "clock" (func)) (export "wait" (func))))
    {_WRAPPER}
    (core instance $memory (instantiate $memory))
    (alias core export $memory "memory" (core memory $mem))
    (alias core export $memory "realloc" (core func $realloc))
    (core func $clock-core (canon lower (func $guard "clock")))
    (core func $wait-core (canon lower (func $guard "wait")))
    (core func $drop (canon resource.drop $pollable))
    {" ".join(_lowered(member, interface.get(member)) for member in _WRAPPED)}
    (core instance $wrap (instantiate $wrap (with "host" (instance
      (export "memory" (memory $mem))
      (export "clock" (func $clock-core))
      (export "wait" (func $wait-core))
      (export "drop" (func $drop))
      (export "reset" (func $memory "reset"))
      {" ".join(f'(export "{name}" (func ${name}-core))' for name in _WRAPPED.values())}))))
    {_exported("poll", poll, _POLL_MEMBERS, poll_members, interface)}
    {_exported("clock", clock, _CLOCK_MEMBERS, clock_members, interface)})
"""


def _declared(table: dict[str, tuple[str, str | None]], members: set[str]) -> str:
    """The members' declarations in an instance type whose pollable is `$p`."""
    return " ".join(
        f'(export "{m}" (func {table[m][0].replace("$r", "$p")}))' for m in table if m in members
    )


def _lowered(member: str, interface: str | None) -> str:
    """The core function the wrapper calls for `member`: WASI's, or a stand-in if
    the guest does not import it (the wrapper for it is then never lifted)."""
    name = _WRAPPED[member]
    if interface is None:
        return f'(alias core export $memory "{name}" (core func ${name}-core))'
    options = " (memory $mem) (realloc $realloc)" if member == "poll" else ""
    return f'(core func ${name}-core (canon lower (func {interface} "{member}"){options}))'


def _exported(
    id: str,
    name: str,
    table: dict[str, tuple[str, str | None]],
    members: set[str],
    interface: dict[str, str],
) -> str:
    """The interface `name` as the guest imports it, its wrapped members replaced:
    a shim component takes the functions and exports them under their own names,
    with the imported resource (and, for the clock, its two type names)."""
    present = [m for m in table if m in members]
    lifted, arguments = [], []
    for m in present:
        signature, lift = table[m]
        if lift is None:
            arguments.append(f'(with "{m}" (func {interface[m]} "{m}"))')
        else:
            wrapper = f"$guarded-{_WRAPPED[m]}"
            lifted.append(f"(func {wrapper} {signature.replace('$r', '$pollable')} {lift})")
            arguments.append(f'(with "{m}" (func {wrapper}))')
    imports = " ".join(f'(import "{m}" (func $f{k} {table[m][0]}))' for k, m in enumerate(present))
    exports = " ".join(
        f'(export "{m}" (func $f{k}) (func {table[m][0].replace("$r", "$p")}))'
        for k, m in enumerate(present)
    )
    types = '(type $u64 u64) (export "duration" (type $u64)) (export "instant" (type $u64))'
    return f"""
    {" ".join(lifted)}
    (component ${id}-shim
      (import "pollable" (type $r (sub resource)))
      {imports}
      {types if id == "clock" else ""}
      (export $p "pollable" (type $r))
      {exports})
    (instance ${id}-guarded
      (instantiate ${id}-shim (with "pollable" (type $pollable)) {" ".join(arguments)}))
    (export "{name}" (instance ${id}-guarded))"""


def link(linker: wc.Linker) -> None:
    """Define `GUARD_IMPORT` in `linker`, for the components `guard` changed."""
    with linker.root() as root, root.add_instance(GUARD_IMPORT) as instance:
        instance.add_func("clock", _clock)
        instance.add_func("wait", _wait)


def _clock(store: wasmtime.StoreContext) -> None:
    # Not a wait yet; but from now on one of this instance's waits may be a long
    # one, in this request or a later one (a reused instance keeps its pollables).
    _context(store).clock_subscribed = True


def _wait(store: wasmtime.StoreContext) -> None:
    # Until then, what a guest can wait for is I/O on its own stdio and files:
    # a body file read, an asset (the sockets are denied).
    context = _context(store)
    if context.on_loop and context.clock_subscribed:
        host_call(store)  # raises: the guest stops, the request runs again on a thread


def _context(store: wasmtime.StoreContext) -> RequestContext:
    context = _wasmtime.store_data(store)
    assert isinstance(context, RequestContext), "every store's data is its RequestContext"
    return context


def waits_bounded(engine: wasmtime.Engine, component: wc.Component) -> bool:
    """Whether no WASI wait of `component`'s can last longer than its I/O: `guard`
    changed it, or it imports no clock to wait for."""
    imports = component.type.imports(engine)
    return GUARD_IMPORT in imports or not any(name.startswith(_CLOCK) for name in imports)


def guard(engine: wasmtime.Engine, wasm: bytes) -> bytes | None:
    """`wasm` with the adapter in front of its `wasi:io/poll` and monotonic clock
    imports, or None if it imports no clock or is laid out in a way this does not
    handle (it then runs as it is, never on the loop). Raises `InvalidComponent`
    if it imports `GUARD_IMPORT` itself: only a component changed here may, as
    that is how a changed one is told apart once compiled (`waits_bounded`)."""
    sections = _sections(wasm) if wasm.startswith(_PREAMBLE) else None
    if sections is None:
        return None  # not a component: compiling it says why
    every = _declarations(wasm, [s for s in sections if s.id == _IMPORT])
    if every is None:
        raise InvalidComponent(
            "the component imports a module, a component or a value, which edgefn does not provide"
        )
    if any(i.name == GUARD_IMPORT for i in every.imports):
        raise InvalidComponent(f"the component imports {GUARD_IMPORT}, which edgefn reserves")
    declarations = (_ALIAS, _TYPE, _IMPORT)
    prefix_end = next((i for i, s in enumerate(sections) if s.id not in declarations), 0)
    if not prefix_end or any(s.id == _IMPORT for s in sections[prefix_end:]):
        return None  # no imports first, or one after the code: not a layout this knows
    prefix = wasm[: sections[prefix_end].start]
    declared = _declarations(wasm, sections[:prefix_end])
    if declared is None:
        return None
    poll = [i for i in declared.imports if i.name.startswith(_POLL)]
    clock = [i for i in declared.imports if i.name.startswith(_CLOCK)]
    if len(poll) != 1 or len(clock) != 1:
        return None
    try:  # which members the guest imports: from the prefix alone, which has no code
        types = wc.Component(engine, prefix).type.imports(engine)
    except wasmtime.WasmtimeError:
        return None
    members = []
    for found, known in ((poll[0], _POLL_MEMBERS), (clock[0], _CLOCK_MEMBERS)):
        instance = types[found.name].ty
        if not isinstance(instance, wc.ComponentInstanceType):
            return None
        functions = set(instance.exports(engine)) - {"pollable", "duration", "instant"}
        if not functions <= set(known):
            return None
        members.append(functions)
    stand_in = _stand_in(declared)
    adapter = _adapter(poll[0].name, members[0], clock[0].name, members[1])
    try:
        alone = bytes(wasmtime.wat2wasm(f"(component {stand_in})"))
        encoded = bytes(wasmtime.wat2wasm(f"(component {stand_in} {_outer(adapter, declared)})"))
    except wasmtime.WasmtimeError:
        return None
    rest = _sections(encoded)
    skipped = len(_sections(alone) or ())
    if rest is None or not encoded.startswith(alone) or rest[skipped].start != len(alone):
        return None  # the outer's first sections merged into the stand-in's
    # The stand-in for the guest is the second nested component (the adapter is the first).
    placeholder = [s for s in rest[skipped:] if s.id == _NESTED][1]
    return b"".join(
        (
            prefix,
            encoded[len(alone) : placeholder.start],
            bytes([_NESTED]),
            _uleb(len(wasm)),
            wasm,
            encoded[placeholder.end :],
        )
    )


# -- the outer component ------------------------------------------------------


class _Import(NamedTuple):
    name: str
    sort: str  # func, type or instance
    position: int  # in the index space of its sort


class _Declared(NamedTuple):
    imports: list[_Import]
    counts: dict[str, int]  # items per sort, imported or aliased or defined


def _stand_in(declared: _Declared) -> str:
    """As many types, instances and functions as the real prefix declares."""
    counts = declared.counts
    return " ".join(
        [*["(type (instance))"] * counts["type"]]
        + [f'(import "i{k}" (instance (type 0)))' for k in range(counts["instance"])]
        + [f'(import "f{k}" (func (type 0)))' for k in range(counts["func"])]
    )


def _outer(adapter: str, declared: _Declared) -> str:
    """Everything after the prefix: the adapter, the guest (a stand-in for now)
    instantiated with the adapter's interfaces in place of the real ones, and
    its handler exported."""
    instances = {i.name: i.position for i in declared.imports if i.sort == "instance"}
    poll = next(name for name in instances if name.startswith(_POLL))
    clock = next(name for name in instances if name.startswith(_CLOCK))
    arguments = " ".join(
        f'(with "{i.name}" (instance $guarded "{i.name}"))'
        if i.name in (poll, clock)
        else f'(with "{i.name}" ({i.sort} {i.position}))'
        for i in declared.imports
    )
    return f"""
  (import "{GUARD_IMPORT}" (instance $guard (export "clock" (func)) (export "wait" (func))))
  {adapter}
  (instance $guarded (instantiate $adapter
    (with "{poll}" (instance {instances[poll]}))
    (with "{clock}" (instance {instances[clock]}))
    (with "{GUARD_IMPORT}" (instance $guard))))
  (component $guest)
  (instance $instance (instantiate $guest {arguments}))
  (export "{HANDLER_EXPORT}" (instance $instance "{HANDLER_EXPORT}"))
"""


# -- reading the binary -------------------------------------------------------


class _Section(NamedTuple):
    id: int
    start: int
    body: int
    end: int


def _sections(wasm: bytes) -> list[_Section] | None:
    sections, at = [], len(_PREAMBLE)
    try:
        while at < len(wasm):
            size, body = _leb(wasm, at + 1)
            sections.append(_Section(wasm[at], at, body, body + size))
            at = body + size
    except IndexError:
        return None
    return sections if at == len(wasm) else None


def _declarations(wasm: bytes, sections: list[_Section]) -> _Declared | None:
    """The imports of the leading sections, and how many of each sort they declare."""
    imports: list[_Import] = []
    counts = {"func": 0, "type": 0, "instance": 0}
    try:
        for section in sections:
            entries, at = _leb(wasm, section.body)
            if section.id == _TYPE:
                counts["type"] += entries
                continue
            for _ in range(entries):
                if section.id == _IMPORT:
                    if wasm[at] not in (0x00, 0x01):
                        return None
                    name, at = _string(wasm, at + 1)
                    sort = _SORTS.get(wasm[at])
                    if sort is None:
                        return None
                    if sort == "type":  # a bound: eq <typeidx>, or sub resource
                        at = _leb(wasm, at + 2)[1] if wasm[at + 1] == 0x00 else at + 2
                    else:
                        at = _leb(wasm, at + 1)[1]
                    imports.append(_Import(name, sort, counts[sort]))
                else:  # an alias
                    sort = _SORTS.get(wasm[at])
                    target = wasm[at + 1]
                    if sort is None or target not in (0x00, 0x02):
                        return None  # core items: not a prefix this knows
                    at = _leb(wasm, at + 2)[1]
                    at = _string(wasm, at)[1] if target == 0x00 else _leb(wasm, at)[1]
                counts[sort] += 1
            if at != section.end:
                return None
    except (IndexError, UnicodeDecodeError):
        return None
    return _Declared(imports, counts)


def _leb(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, at


def _string(data: bytes, at: int) -> tuple[str, int]:
    size, at = _leb(data, at)
    return data[at : at + size].decode(), at + size


def _uleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)
