"""The process-wide wasmtime engine: configuration, epoch ticker, AOT cache."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import threading
import weakref
from collections.abc import Iterable, Mapping
from importlib.metadata import version
from pathlib import Path
from typing import Any

import wasmtime
from wasmtime import component as wc

from . import _memory, _wait_guard, _wasmtime
from ._ahead import Ahead
from ._aot import AotCache, sha256_file
from ._contract import check_component
from ._errors import InvalidComponent, from_load_failure
from ._inline import inline_cpu_setting
from ._sandbox import Sandbox
from .capabilities import Capability, RequestContext, installed

__all__ = ["Engine", "default_cache_dir"]

# How often the ticker advances the epoch; timeouts are rounded up to this.
EPOCH_TICK_SECONDS = 0.01

MiB = 1024 * 1024

# Fresh instances made ahead of demand per sandbox (`_ahead.py`): opt-in,
# EDGEFN_AHEAD_INSTANCES=N (2 is the count measured: a request takes one and the
# ahead thread makes the next in about one instantiation, so at a steady rate
# one is nearly always ready; the second is for a request arriving while the
# first is taken). Off by default: with them on, 100 concurrent 25 MiB uploads
# (tests/test_public_gateway.py) peaked 100-300 MiB higher (+735 to +946 MiB
# over 9 runs, against +628 and +650 without), a cost not yet explained.
AHEAD_PER_SANDBOX = 0
# Stocks no request has asked for in this long are freed.
AHEAD_IDLE_SECONDS = 30.0

# Pooling allocator sizing for componentize-py components, which hold 14 core
# instances, 2 tables (the larger between 5,000 and 10,000 elements) and one
# memory, with the wait guard's adapter in front (`_wait_guard.py`): 17 or 18
# core instances and 2 memories in all, for which the totals below budget 20
# and 3 per instance. Slots are reserved once; instances reuse them instead of
# mmap/munmap per request.
_POOL = {
    "max_core_instances_per_component": 32,
    "max_tables_per_component": 8,
    "max_memories_per_component": 4,
    "table_elements": 20_000,
    "max_core_instance_size": 1 * MiB,
    "max_component_instance_size": 4 * MiB,
    "max_memory_size": 4096 * MiB,
    # CPython's initial heap is about 12.3 MB, in an initial memory of 13 MiB.
    # Keeping that much resident and resetting it with memset, instead of
    # dropping it and faulting it back in, cut the cost of a trivial request by
    # about a fifth on the reference machine. Not more: what a request grows
    # beyond it is decommitted when its store goes; at 16 MiB, 3 MiB of zeros
    # per slot used stayed resident (~300 MB per worker after 100 requests in
    # flight, which emptying the slot's image, `_memory.py`, does not return).
    "linear_memory_keep_resident": 13 * MiB,
    "table_keep_resident": 1 * MiB,
    # Unused slots are handed out least recently used first, never a new slot
    # while one is unused (wasmtime's default, 100, prefers new ones): the slots
    # a worker touches are no more than its peak concurrency, and
    # `_memory.empty_unused_slots` can reach every unused one.
    "max_unused_warm_slots": 0,
}


def default_cache_dir() -> Path:
    """`$EDGEFN_CACHE_DIR`, else `~/.cache/edgefn`."""
    configured = os.environ.get("EDGEFN_CACHE_DIR")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgefn"


class Engine:
    """One wasmtime engine per process, configured for fuel and epoch deadlines.

    `load()` turns a component file into a `Sandbox`, compiling it ahead of
    time once and caching the result under `cache_dir/aot`. `capabilities` are
    the host capabilities linked for guests (`capabilities.installed()` unless
    given); a component may import those and WASI, nothing else. `ahead`
    fresh instances per function are made ahead of demand on a thread of the
    engine (`$EDGEFN_AHEAD_INSTANCES`, else none), at most
    `max(ahead, max_instances // 16)` in all, never over `max_instances // 4`, and
    freed after `ahead_idle_seconds` without
    a request. `release_after` seconds of quiet after a burst give its memory
    back (`release_memory()`); None: only when called. A reusable function whose
    requests average at most `inline_cpu` seconds of CPU may run them on the
    caller's thread (`Sandbox.invoke_now`, `$EDGEFN_INLINE_CPU_MS`, 1 ms unless
    set; 0: never).
    """

    def __init__(
        self,
        cache_dir: Path | None = None,
        *,
        max_instances: int = 256,
        capabilities: Iterable[Capability] | None = None,
        ahead: int | None = None,
        ahead_idle_seconds: float = AHEAD_IDLE_SECONDS,
        release_after: float | None = None,
        inline_cpu: float | None = None,
    ) -> None:
        config = wasmtime.Config()
        config.consume_fuel = True
        config.epoch_interruption = True
        config.cranelift_opt_level = "speed"
        _use_pooling_allocator(config, max_instances)
        # Components are compiled with `_wait_guard`'s adapter in front of them.
        self._settings = f"fuel,epoch,opt=speed,pooling,wait-guard={_wait_guard.IDENTITY}"
        self.wasmtime = wasmtime.Engine(config)
        self.linker = wc.Linker(self.wasmtime)
        self.linker.add_wasip2()
        _wait_guard.link(self.linker)
        self.capabilities = tuple(installed() if capabilities is None else capabilities)
        names = [capability.name for capability in self.capabilities]
        if len(set(names)) != len(names):
            raise ValueError(f"capability names must be unique, got {names}")
        for capability in self.capabilities:
            capability.link(self.linker)
        self.imports = frozenset().union(*(c.imports for c in self.capabilities))
        # Bytes of stdout a guest may use to hand data to capabilities.
        self.stdout_reserve = sum(c.stdout_reserve for c in self.capabilities)
        self.aot = AotCache((cache_dir or default_cache_dir()) / "aot", self._engine_key())
        # Idle reusable instances hold pool slots: keep three quarters of the
        # pool for requests in flight, whatever number of functions reuse.
        self.max_idle = max_instances // 4
        per_sandbox = _ahead_setting() if ahead is None else ahead
        self.ahead = Ahead(
            per_sandbox=per_sandbox,
            # At most a quarter of the pool, whatever is asked: the rest is for
            # requests in flight and idle reused instances.
            max_total=min(max(per_sandbox, max_instances // 16), max_instances // 4)
            if per_sandbox
            else 0,
            idle_seconds=ahead_idle_seconds,
        )
        self.inline_cpu = inline_cpu_setting() if inline_cpu is None else inline_cpu
        # Weakly, as a list replaced whole (under the lock) when a sandbox is
        # loaded: every request's check-in counts the idle instances through it,
        # and a WeakSet's guarded iteration was 2.4 % of a worker's time for a
        # `reuse` hello (4.2 µs against 1.1 for three sandboxes).
        self._sandboxes: list[weakref.ref[Sandbox]] = []
        self._ticker: threading.Thread | None = None
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        # Memory a burst left behind goes back once the process has been quiet
        # this long (`_memory.py`); None: only when `release_memory()` is called.
        self.release_after = release_after or None
        self._releaser = (
            _memory.MemoryReleaser(self.release_memory, after=release_after).start()
            if release_after
            else None
        )

    def _engine_key(self) -> str:
        identity = f"wasmtime={version('wasmtime')};{platform.machine()};{self._settings}"
        return hashlib.sha256(identity.encode()).hexdigest()[:16]

    def load(
        self,
        wasm: Path | str,
        *,
        env: Mapping[str, str] | None = None,
        assets: Path | str | None = None,
        reuse: int = 0,
        sha256: str | None = None,
        grants: Mapping[str, Any] | None = None,
    ) -> Sandbox:
        """A sandbox for the component at `wasm`.

        `env` is the only environment the guest sees; `assets`, if given, is
        mounted read-only at `/assets`; `reuse` lets one instance serve that
        many requests in sequence (see `Sandbox`); `sha256`, the file's digest when
        the caller already knows it (the gateway hashes an upload as it stores it),
        saves hashing 18 MB again; `grants`, what the function may use of each
        capability, by capability name. Raises `InvalidComponent` when the file is not a
        component implementing edgefn's handler world.
        """
        wasm = Path(wasm)
        sha256 = sha256 or sha256_file(wasm)
        component = self.aot.load(
            self.wasmtime, wasm, sha256, functools.partial(_wait_guard.guard, self.wasmtime)
        )
        check_component(self.wasmtime, component, self.imports | {_wait_guard.GUARD_IMPORT})
        imports = frozenset(component.type.imports(self.wasmtime))
        grants = grants or {}
        for capability in self.capabilities:
            if capability.name in grants:
                refusal = capability.refusal(grants[capability.name], imports)
                if refusal is not None:
                    raise InvalidComponent(refusal)
        self._check_instantiates(component)
        if assets is not None and not Path(assets).is_dir():
            raise FileNotFoundError(f"assets directory {assets} does not exist")
        sandbox = Sandbox(
            self,
            component,
            sha256=sha256,
            env=dict(env or {}),
            assets=assets,
            reuse=reuse,
            grants=grants,
            waits_bounded=_wait_guard.waits_bounded(self.wasmtime, component),
        )
        with self._lock:
            live = [ref for ref in self._sandboxes if ref() is not None]
            self._sandboxes = [*live, weakref.ref(sandbox)]
        return sandbox

    def _loaded(self) -> list[Sandbox]:
        return [sandbox for ref in self._sandboxes if (sandbox := ref()) is not None]

    def idle_instances(self) -> int:
        """Reusable instances idle across every loaded sandbox."""
        return sum(sandbox.idle for sandbox in self._loaded())

    def release_memory(self) -> int:
        """Give back what a burst left: idle reusable instances, the images kept
        in unused pool slots, malloc's free heap. Safe while requests run (they
        keep their slots); returns the number of slots emptied.

        Each function keeps its most recently used idle instance and the ones
        made ahead (a few per function, bounded): with them dropped, a release
        soon after a restart or a deploy (whose loading grows the process) left
        the next request to instantiate for itself, 4.6x the warm median once
        in 10 restarts (`bench/gateway.py`)."""
        for sandbox in self._loaded():
            sandbox.trim(keep=1)
        emptied = _memory.empty_unused_slots(self.wasmtime)
        _memory.trim_heap()
        return emptied

    def settled(self) -> None:
        """Take the process's memory now as its idle size, once its functions are
        loaded and warm: growth since is what a release gives back. Without it,
        loading counted as a burst and a release could meet the first requests
        after a restart (2.9-4x the warm median, 3 times in 20)."""
        if self._releaser is not None:
            self._releaser.rebase()

    def _check_instantiates(self, component: wc.Component) -> None:
        # Link and instantiate once, without calling the guest: a component
        # that does not fit the pool or links to something missing fails here,
        # at load, instead of on its first request.
        store = wasmtime.Store(self.wasmtime, data=RequestContext(None))
        _wasmtime.set_fuel(store, 10**9)
        store.set_epoch_deadline(2**32)
        store.set_wasi(wasmtime.WasiConfig())
        try:
            self.linker.instantiate(store, component)
        except wasmtime.WasmtimeError as exc:
            raise from_load_failure(exc, "the component cannot be instantiated") from None

    def epoch_deadline(self, timeout: float) -> int:
        """Epoch ticks for `timeout` seconds, starting the ticker if needed."""
        self._start_ticker()
        return max(1, int(-(-timeout // EPOCH_TICK_SECONDS)))

    def _start_ticker(self) -> None:
        if self._ticker is not None:
            return
        with self._lock:
            if self._ticker is None:
                self._ticker = threading.Thread(target=self._tick, name="edgefn-epoch", daemon=True)
                self._ticker.start()

    def _tick(self) -> None:
        while not self._stopped.wait(EPOCH_TICK_SECONDS):
            self.wasmtime.increment_epoch()

    def close(self) -> None:
        """Stop the memory releaser and the ahead thread (freeing the instances
        it made), then the epoch ticker."""
        if self._releaser is not None:
            self._releaser.close()
        self.ahead.close()
        self._stopped.set()
        if self._ticker is not None:
            self._ticker.join()

    @staticmethod
    def check_environment() -> None:
        """Raise ValueError, saying what is allowed, if a variable an engine reads
        (`EDGEFN_AHEAD_INSTANCES`, `EDGEFN_INLINE_CPU_MS`) is malformed."""
        _ahead_setting()
        inline_cpu_setting()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ahead_setting() -> int:
    configured = os.environ.get("EDGEFN_AHEAD_INSTANCES", "").strip()
    if not configured:
        return AHEAD_PER_SANDBOX
    try:
        value = int(configured)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"EDGEFN_AHEAD_INSTANCES must be a whole number >= 0, got {configured!r}")
    return value


def _use_pooling_allocator(config: wasmtime.Config, max_instances: int) -> None:
    # wasmtime-py's Config does not expose the pooling allocator; the C API does.
    _wasmtime.use_pooling_allocator(
        config,
        {
            **_POOL,
            "total_component_instances": max_instances,
            "total_core_instances": max_instances * 20,
            "total_memories": max_instances * 3,
            "total_tables": max_instances * 4,
            "total_stacks": max_instances,
        },
    )
