"""The adapter component `_wait_guard.py` puts in front of a guest, as text.

It takes the guest's own imports of the WASI interfaces below and exports them
again, under the same names and types, with some members wrapped: each wrapper
calls a function of the host's `GUARD` interface first, then WASI's own.
- `monotonic-clock.subscribe-*` call `clock` (the instance may wait long now);
- `poll.poll` and `pollable.block` call `wait` (on the loop, stops a guest whose
  instance has a clock); `poll` with more than `_MANY_POLLABLES` pollables, and
  `get-(insecure-)random-bytes` of more than `_MANY_BYTES`, call `work` (on the
  loop, stops the guest): wasmtime does that work without returning to
  WebAssembly, where the epoch deadline would stop it (64 MiB of random bytes
  took 386 ms, 8 M pollables 432 ms, measured by the attacker review);
- the borrows `poll` and `block` are lent are dropped before they return, as the
  canonical ABI requires of a component that does not own the resource;
- the lists `poll` and `get-*-bytes` return pass through the adapter's own
  memory, a bump allocator reset after each call. A store's memory limit holds
  for each of its memories apart, so this one is capped at `_MAX_LIST_BYTES`
  (a longer list traps): else a guest could hold twice its limit.
Members the guest does not import are neither imported nor exported; a core
stand-in that traps takes their place in the wrapper, which never calls it.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["INTERFACES", "Imported", "Interface", "adapter"]

# Past these, the host's work in one call is long enough to matter on the loop.
_MANY_POLLABLES = 256
_MANY_BYTES = 64 * 1024
_MAX_LIST_BYTES = 16 * 1024 * 1024


class Interface(NamedTuple):
    id: str  # its name in the text
    prefix: str  # of its import name, any version
    resource: str  # how its instance type declares `pollable` ($p), or ""
    types: str  # type exports of its own, for the shim
    # Each member: its signature (`$r` for the pollable) and, if wrapped, the
    # wrapper's name in the core module and the options it is lifted with.
    members: dict[str, tuple[str, str, str]]


class Imported(NamedTuple):
    """How a guest imports one of the interfaces: under which name, which members."""

    interface: Interface
    name: str
    members: set[str]


_LIST = '(memory $mem) (realloc $realloc) (post-return (core func $wrap "reset"))'
INTERFACES = (
    Interface(
        "poll",
        "wasi:io/poll@",
        '(export "pollable" (type $p (sub resource)))',
        "",
        {
            "[method]pollable.ready": ('(param "self" (borrow $r)) (result bool)', "", ""),
            "[method]pollable.block": ('(param "self" (borrow $r))', "block", ""),
            "poll": ('(param "in" (list (borrow $r))) (result (list u32))', "poll", _LIST),
        },
    ),
    Interface(
        "clock",
        "wasi:clocks/monotonic-clock@",
        '(export "pollable" (type $p (eq $pollable)))',
        '(type $u64 u64) (export "duration" (type $u64)) (export "instant" (type $u64))',
        {
            "now": ("(result u64)", "", ""),
            "resolution": ("(result u64)", "", ""),
            "subscribe-instant": ('(param "when" u64) (result (own $r))', "subscribe-instant", ""),
            "subscribe-duration": (
                '(param "when" u64) (result (own $r))',
                "subscribe-duration",
                "",
            ),
        },
    ),
    *(
        # `wasi:random/random` and `wasi:random/insecure`: the same two members.
        Interface(
            id,
            f"wasi:random/{id}@",
            "",
            "",
            {
                f"get-{kind}bytes": ('(param "len" u64) (result (list u8))', f"{id}-bytes", _LIST),
                f"get-{kind}u64": ("(result u64)", "", ""),
            },
        )
        for id, kind in (("random", "random-"), ("insecure", "insecure-random-"))
    ),
)
# The wrapped members' core functions: name, signature, and what is lowered with them.
_CORE = {
    "block": ("(param i32)", ""),
    "poll": ("(param i32 i32 i32)", " (memory $mem) (realloc $realloc)"),
    "subscribe-instant": ("(param i64) (result i32)", ""),
    "subscribe-duration": ("(param i64) (result i32)", ""),
    "random-bytes": ("(param i64 i32)", " (memory $mem) (realloc $realloc)"),
    "insecure-bytes": ("(param i64 i32)", " (memory $mem) (realloc $realloc)"),
}
# The member each core function is WASI's for.
_MEMBER = {w: m for i in INTERFACES for m, (_, w, _) in i.members.items() if w}
_WRAPPER = f"""
    (core module $wrap
      (import "host" "memory" (memory 1))
      (import "host" "clock" (func $clock))
      (import "host" "wait" (func $wait))
      (import "host" "work" (func $work))
      (import "host" "drop" (func $drop (param i32)))
      (import "host" "reset" (func $reset))
      {" ".join(f'(import "host" "{n}" (func ${n} {s}))' for n, (s, _) in _CORE.items())}
      (func (export "subscribe-instant") (param i64) (result i32)
        (call $clock) (call $subscribe-instant (local.get 0)))
      (func (export "subscribe-duration") (param i64) (result i32)
        (call $clock) (call $subscribe-duration (local.get 0)))
      (func (export "block") (param i32)
        (call $wait) (call $block (local.get 0)) (call $drop (local.get 0)))
      (func (export "poll") (param $at i32) (param $count i32) (result i32)
        (local $end i32)
        (call $wait)
        (if (i32.gt_u (local.get $count) (i32.const {_MANY_POLLABLES})) (then (call $work)))
        (call $poll (local.get $at) (local.get $count) (i32.const 0))
        (local.set $end (i32.add (local.get $at) (i32.shl (local.get $count) (i32.const 2))))
        (block $done (loop $next
          (br_if $done (i32.ge_u (local.get $at) (local.get $end)))
          (call $drop (i32.load (local.get $at)))
          (local.set $at (i32.add (local.get $at) (i32.const 4)))
          (br $next)))
        (i32.const 0))
      {
    " ".join(
        f'''(func (export "{n}") (param i64) (result i32)
        (if (i64.gt_u (local.get 0) (i64.const {_MANY_BYTES})) (then (call $work)))
        (call ${n} (local.get 0) (i32.const 0))
        (i32.const 0))'''
        for n in ("random-bytes", "insecure-bytes")
    )
}
      (func (export "reset") (param i32) (call $reset)))
    (core module $memory
      (memory (export "memory") 1)
      (global $next (mut i32) (i32.const 8))
      (func (export "realloc") (param i32 i32 i32 i32) (result i32)
        (local $at i32) (local $end i32)
        (local.set $at (i32.and
          (i32.add (global.get $next) (i32.sub (local.get 2) (i32.const 1)))
          (i32.sub (i32.const 0) (local.get 2))))
        (local.set $end (i32.add (local.get $at) (local.get 3)))
        (if (i32.gt_u (local.get $end) (i32.const {_MAX_LIST_BYTES})) (then unreachable))
        (if (i32.gt_u (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
          (then (if (i32.eq (i32.const -1) (memory.grow (i32.sub
              (i32.shr_u (i32.add (local.get $end) (i32.const 65535)) (i32.const 16))
              (memory.size))))
            (then unreachable))))
        (global.set $next (local.get $end))
        (local.get $at))
      (func (export "reset") (global.set $next (i32.const 8)))
      (func (export "drop") (param i32) unreachable)
      {" ".join(f'(func (export "{n}") {s} unreachable)' for n, (s, _) in _CORE.items())})
"""


def adapter(guard: str, imported: list[Imported]) -> str:
    """The adapter for a guest that imports these interfaces (in `INTERFACES`'
    order: `poll` before the clock, whose pollable is poll's)."""
    source = {m: f"${i.interface.id}" for i in imported for m in i.members}
    poll = next((i.interface for i in imported if i.interface.id == "poll"), None)
    pollable = '(alias export $poll "pollable" (type $pollable))' if poll else ""
    drop = (
        "(core func $drop (canon resource.drop $pollable))"
        if poll
        else '(alias core export $memory "drop" (core func $drop))'
    )
    imports = "\n    ".join(
        f'(import "{i.name}" (instance ${i.interface.id} {i.interface.resource}'
        f" {_declared(i.interface, i.members)}))"
        + ("\n    " + pollable if i.interface is poll else "")
        for i in imported
    )
    return f"""
  (component $adapter
    {imports}
    (import "{guard}" (instance $guard
      (export "clock" (func)) (export "wait" (func)) (export "work" (func))))
    {_WRAPPER}
    (core instance $memory (instantiate $memory))
    (alias core export $memory "memory" (core memory $mem))
    (alias core export $memory "realloc" (core func $realloc))
    (core func $clock-core (canon lower (func $guard "clock")))
    (core func $wait-core (canon lower (func $guard "wait")))
    (core func $work-core (canon lower (func $guard "work")))
    {drop}
    {" ".join(_lowered(name, source) for name in _CORE)}
    (core instance $wrap (instantiate $wrap (with "host" (instance
      (export "memory" (memory $mem))
      (export "clock" (func $clock-core))
      (export "wait" (func $wait-core))
      (export "work" (func $work-core))
      (export "drop" (func $drop))
      (export "reset" (func $memory "reset"))
      {" ".join(f'(export "{n}" (func ${n}-core))' for n in _CORE)}))))
    {"".join(_exported(i.interface, i.name, i.members, source) for i in imported)})
"""


def _declared(interface: Interface, members: set[str]) -> str:
    """The members' declarations in an instance type whose pollable is `$p`."""
    return " ".join(
        f'(export "{m}" (func {signature.replace("$r", "$p")}))'
        for m, (signature, _, _) in interface.members.items()
        if m in members
    )


def _lowered(name: str, source: dict[str, str]) -> str:
    """The core function the wrapper `name` calls: WASI's, or a stand-in if the
    guest does not import that member (the wrapper is then never lifted)."""
    member = _MEMBER[name]
    if member not in source:
        return f'(alias core export $memory "{name}" (core func ${name}-core))'
    options = _CORE[name][1]
    return f'(core func ${name}-core (canon lower (func {source[member]} "{member}"){options}))'


def _exported(interface: Interface, name: str, members: set[str], source: dict[str, str]) -> str:
    """The interface as the guest imports it, wrapped members replaced: a shim
    component takes the functions and exports them under their own names, with
    the imported resource and the interface's type names."""
    present = [(m, spec) for m, spec in interface.members.items() if m in members]
    lifted, arguments = [], []
    for m, (signature, wrapper, options) in present:
        if not wrapper:
            arguments.append(f'(with "{m}" (func {source[m]} "{m}"))')
            continue
        lifted.append(
            f"(func $guarded-{wrapper} {signature.replace('$r', '$pollable')}"
            f' (canon lift (core func $wrap "{wrapper}") {options}))'
        )
        arguments.append(f'(with "{m}" (func $guarded-{wrapper}))')
    resource = '(export $p "pollable" (type $r))' if interface.resource else ""
    imports = " ".join(
        f'(import "{m}" (func $f{k} {s}))' for k, (m, (s, _, _)) in enumerate(present)
    )
    exports = " ".join(
        f'(export "{m}" (func $f{k}) (func {s.replace("$r", "$p")}))'
        for k, (m, (s, _, _)) in enumerate(present)
    )
    pollable = '(import "pollable" (type $r (sub resource)))' if interface.resource else ""
    given = '(with "pollable" (type $pollable))' if interface.resource else ""
    return f"""
    {" ".join(lifted)}
    (component ${interface.id}-shim
      {pollable} {imports} {interface.types} {resource} {exports})
    (instance ${interface.id}-guarded
      (instantiate ${interface.id}-shim {given} {" ".join(arguments)}))
    (export "{name}" (instance ${interface.id}-guarded))"""
