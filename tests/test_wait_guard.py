"""The adapter in front of a component's WASI clock, `poll` and random (`_wait_guard.py`),
on small components written here in the text format, so that each case is exact."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import wasmtime
from wasmtime import component as wc

from edgefn_platform import BuildResult
from edgefn_runtime import Engine, InvalidComponent, Limits
from edgefn_runtime import _wait_guard as wait_guard
from edgefn_runtime import _wasmtime as raw
from edgefn_runtime._component_binary import PREAMBLE
from edgefn_runtime._contract import HANDLER_EXPORT
from edgefn_runtime._inline import HostCallOnLoop
from edgefn_runtime._instance import Instance
from edgefn_runtime.capabilities import RequestContext

MiB = 1024 * 1024
POLL = "wasi:io/poll@0.2.9"
CLOCK = "wasi:clocks/monotonic-clock@0.2.9"


def memory(pages: int, heap: int) -> str:
    """A guest's memory of `pages` and a bump allocator from `heap` on, as `$mem`
    and `$realloc`, for the lists the canonical ABI passes it."""
    return f"""  (core module $memory
    (memory (export "memory") {pages})
    (global $heap (mut i32) (i32.const {heap}))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (global.get $heap)
      (global.set $heap (i32.add (global.get $heap) (local.get 3)))))
  (core instance $memory (instantiate $memory))
  (alias core export $memory "memory" (core memory $mem))
  (alias core export $memory "realloc" (core func $realloc))"""


# Subscribes to `count` clocks of 1 ms, polls them all at once, drops them, and
# answers how many `poll` found ready: every step of the adapter, with a list
# larger than its first page of memory (4 bytes a pollable, each way).
WAITER = f"""
(component
  (import "{POLL}" (instance $poll
    (export "pollable" (type $p (sub resource)))
    (export "poll" (func (param "in" (list (borrow $p))) (result (list u32))))))
  (alias export $poll "pollable" (type $pollable))
  (import "{CLOCK}" (instance $clock
    (export "pollable" (type $p (eq $pollable)))
    (export "subscribe-duration" (func (param "when" u64) (result (own $p))))))
{memory(8, heap=262144)}
  (core func $subscribe (canon lower (func $clock "subscribe-duration")))
  (core func $poll (canon lower (func $poll "poll") (memory $mem) (realloc $realloc)))
  (core func $drop (canon resource.drop $pollable))
  (core module $main
    (import "host" "memory" (memory 8))
    (import "host" "subscribe" (func $subscribe (param i64) (result i32)))
    (import "host" "poll" (func $poll (param i32 i32 i32)))
    (import "host" "drop" (func $drop (param i32)))
    (func (export "run") (param $count i32) (result i32)
      (local $i i32)
      (loop $make
        (i32.store (i32.add (i32.const 1024) (i32.shl (local.get $i) (i32.const 2)))
          (call $subscribe (i64.const 1000000)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $make (i32.lt_u (local.get $i) (local.get $count))))
      (call $poll (i32.const 1024) (local.get $count) (i32.const 0))
      (local.set $i (i32.const 0))
      (loop $free
        (call $drop (i32.load (i32.add (i32.const 1024) (i32.shl (local.get $i) (i32.const 2)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $free (i32.lt_u (local.get $i) (local.get $count))))
      (i32.load (i32.const 4))))
  (core instance $main (instantiate $main (with "host" (instance
    (export "memory" (memory $mem))
    (export "subscribe" (func $subscribe))
    (export "poll" (func $poll))
    (export "drop" (func $drop))))))
  (func $run (param "count" u32) (result u32) (canon lift (core func $main "run")))
  (instance $handler (export "run" (func $run)))
  (export "{HANDLER_EXPORT}" (instance $handler)))
"""


@pytest.fixture(scope="module")
def engine() -> Engine:
    with Engine(ahead=0) as engine:
        yield engine


def encoded(text: str) -> bytes:
    return bytes(wasmtime.wat2wasm(text))


def run(engine: Engine, component: wc.Component, count: int, on_loop: bool = False) -> object:
    """`run(count)` of a WAITER-shaped component in a store of its own."""
    context = RequestContext(None)
    context.on_loop = on_loop
    store = wasmtime.Store(engine.wasmtime, data=context)
    raw.set_fuel(store, 10**9)
    store.set_epoch_deadline(2**32)
    store.set_wasi(wasmtime.WasiConfig())
    instance = engine.linker.instantiate(store, component)
    handler = instance.get_export_index(store, HANDLER_EXPORT)
    function = instance.get_func(store, instance.get_export_index(store, "run", handler))
    assert function is not None
    try:
        return function(store, count)
    except wasmtime.WasmtimeError:
        return context.breach


def test_a_guarded_component_waits_on_a_thread_and_is_stopped_on_the_loop(engine: Engine) -> None:
    guarded = wait_guard.guard(engine.wasmtime, encoded(WAITER))
    assert guarded is not None
    component = wc.Component(engine.wasmtime, guarded)
    assert wait_guard.waits_bounded(engine.wasmtime, component)
    # 20,000 pollables: 80 KB lists through the adapter's 64 KiB of memory, and
    # every borrow dropped (else wasmtime traps the call); twice, as its list
    # memory is reset after each call.
    for _ in range(2):
        ready = run(engine, component, 20_000)
        assert isinstance(ready, int) and 1 <= ready <= 20_000
    assert isinstance(run(engine, component, 3, on_loop=True), HostCallOnLoop)


def test_without_the_adapter_a_wait_is_not_bounded(engine: Engine) -> None:
    component = wc.Component(engine.wasmtime, encoded(WAITER))
    assert not wait_guard.waits_bounded(engine.wasmtime, component)
    ready = run(engine, component, 3, on_loop=True)
    assert isinstance(ready, int) and 1 <= ready <= 3  # waited, on the loop


def test_a_component_without_those_interfaces_needs_no_adapter(engine: Engine) -> None:
    plain = encoded('(component (import "wasi:cli/environment@0.2.9" (instance)))')
    assert wait_guard.guard(engine.wasmtime, plain) is None
    assert wait_guard.waits_bounded(engine.wasmtime, wc.Component(engine.wasmtime, plain))


@pytest.mark.parametrize(
    "text",
    [
        # Imports after the code.
        f'(component (core module) (import "{CLOCK}" (instance)))',
        # `wasi:io/poll` without its resource.
        f'(component (import "{POLL}" (instance)))',
        # A name the outer component's text would have to escape.
        '(component (import "wasi:random/random@0.2.9\\22)) (x" (instance)))',
    ],
)
def test_a_component_it_cannot_front_is_left_as_it_is(engine: Engine, text: str) -> None:
    wasm = encoded(text)
    assert wait_guard.guard(engine.wasmtime, wasm) is None
    if "\\22" not in text:  # (wasmtime refuses that name itself)
        component = wc.Component(engine.wasmtime, wasm)
        assert not wait_guard.waits_bounded(engine.wasmtime, component)


# Asks for `size` random bytes; answers how many came.
RANDOM = f"""
(component
  (import "wasi:random/random@0.2.9" (instance $random
    (export "get-random-bytes" (func (param "len" u64) (result (list u8))))))
{memory(320, heap=1024)}
  (core func $bytes
    (canon lower (func $random "get-random-bytes") (memory $mem) (realloc $realloc)))
  (core module $main
    (import "host" "bytes" (func $bytes (param i64 i32)))
    (import "host" "memory" (memory 320))
    (func (export "run") (param $size i32) (result i32)
      (call $bytes (i64.extend_i32_u (local.get $size)) (i32.const 0))
      (i32.load (i32.const 4))))
  (core instance $main (instantiate $main (with "host" (instance
    (export "memory" (memory $mem)) (export "bytes" (func $bytes))))))
  (func $run (param "count" u32) (result u32) (canon lift (core func $main "run")))
  (instance $handler (export "run" (func $run)))
  (export "{HANDLER_EXPORT}" (instance $handler)))
"""


def test_long_host_work_is_stopped_on_the_loop(engine: Engine) -> None:
    guarded = wait_guard.guard(engine.wasmtime, encoded(RANDOM))
    assert guarded is not None
    component = wc.Component(engine.wasmtime, guarded)
    # Through the adapter's memory, which grows for it, on a thread; up to its cap,
    # as a store's memory limit holds for each memory apart.
    assert run(engine, component, 1024 * 1024) == 1024 * 1024
    assert run(engine, component, 16 * MiB - 8) == 16 * MiB - 8
    assert run(engine, component, 16 * MiB) is None  # trapped: 8 bytes go to the answer
    assert run(engine, component, 64 * 1024, on_loop=True) == 64 * 1024
    # 64 MiB took 0.4 s inside wasmtime, where the epoch deadline does not fire.
    assert isinstance(run(engine, component, 64 * 1024 + 1, on_loop=True), HostCallOnLoop)


def test_a_poll_of_many_pollables_is_stopped_on_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As for pollables that are no clock's (a stream's): its clocks left unmarked.
    monkeypatch.setattr(wait_guard, "_clock", lambda store: None)
    with Engine(ahead=0) as unmarked:
        guarded = wait_guard.guard(unmarked.wasmtime, encoded(WAITER))
        assert guarded is not None
        component = wc.Component(unmarked.wasmtime, guarded)
        ready = run(unmarked, component, 256, on_loop=True)
        assert isinstance(ready, int) and 1 <= ready <= 256  # polled, on the loop
        assert isinstance(run(unmarked, component, 257, on_loop=True), HostCallOnLoop)


def test_as_many_guarded_instances_as_the_pool_has_fit(hostile_build: BuildResult) -> None:
    with Engine(max_instances=4, ahead=0) as small:
        sandbox = small.load(hostile_build.path, env=hostile_build.manifest.env, reuse=10)
        instances = [Instance(sandbox, Limits(), None) for _ in range(4)]
        for instance in instances:
            instance.instantiate(Limits())
        for instance in instances:
            instance.close()


@pytest.mark.parametrize(
    ("wasm", "message"),
    [
        (PREAMBLE + bytes([10, 4, 1, 0, 3, 0x61]), "not a valid"),
        (PREAMBLE + bytes([10]) + b"\xff" * 300_000, "longer than 5 bytes"),
        (encoded('(component (import "m" (core module)))'), "imports a core module"),
    ],
)
def test_unreadable_imports_are_refused_at_once(engine: Engine, wasm: bytes, message: str) -> None:
    started = time.monotonic()
    with pytest.raises(InvalidComponent, match=message):
        wait_guard.guard(engine.wasmtime, wasm)
    assert time.monotonic() - started < 0.1


@pytest.mark.parametrize("late", [False, True])
def test_a_component_may_not_import_the_guard_itself(
    engine: Engine, tmp_path: Path, late: bool
) -> None:
    # Else it could pass for one the adapter guards; wherever it declares it.
    before = "(core module)" if late else ""
    forged = encoded(
        f'(component {before} (import "{wait_guard.GUARD_IMPORT}" (instance '
        '(export "clock" (func)) (export "wait" (func)))))'
    )
    with pytest.raises(InvalidComponent, match="which edgefn reserves"):
        wait_guard.guard(engine.wasmtime, forged)
    path = tmp_path / "forged.wasm"
    path.write_bytes(forged)
    with pytest.raises(InvalidComponent, match="which edgefn reserves"):
        engine.load(path)


def test_a_component_without_the_handler_is_compiled_as_it_is_then_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The adapter's outer component exports the handler it nests: without one it
    # does not compile, and the component itself says what is wrong with it.
    path = tmp_path / "no-handler.wasm"
    path.write_bytes(encoded(WAITER.replace(HANDLER_EXPORT, "other:thing/run@1.0.0")))
    with Engine(tmp_path / "cache", ahead=0) as engine:  # compiled here, not from a cache
        with pytest.raises(InvalidComponent, match="does not export edgefn:http/incoming-handler"):
            engine.load(path)
    assert "does not compile as prepared" in caplog.text
