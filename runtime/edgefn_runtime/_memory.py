"""Giving memory back after a burst: emptied pool slots, idle instances, malloc's free heap.

After 200 requests in flight (`bench/burst_memory.py`), a gateway worker stayed
about 1 GB above its idle RSS for good (measured with `/proc/PID/smaps`):
- ~90 % in pool slots: wasmtime keeps the first `linear_memory_keep_resident`
  bytes of every slot it has used resident (the function's ~13 MiB CPython heap
  image, restored by a copy, which is what makes the next fresh instance cheap),
  and never decommits a slot that waits unused. The C API has no call for it;
  what does it is instantiating a module *without* a memory image in that
  slot: wasmtime then maps fresh zero pages over the old image, returning it.
  `empty_unused_slots` does that, with a one-page module, to every unused slot;
- the rest in glibc's malloc arenas (one per sandbox thread, up to 8 per core),
  freed but kept: `malloc_trim(0)` hands it back (~0.04 s for ~250 MB).

`MemoryReleaser` runs both once the process has been quiet for a while and its
RSS has grown since the last release, on a thread of its own, never on a
request's path; a slot emptied this way costs its next fresh instance a
remapped image (as on a worker's first requests), once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
import time
from collections.abc import Callable

import wasmtime

__all__ = ["MemoryReleaser", "empty_unused_slots", "resident_bytes", "trim_heap"]

log = logging.getLogger("edgefn.runtime")

# One page of memory and no data: instantiating it in a slot that holds another
# module's image unmaps that image (`MemoryImageSlot::remove_image`).
_EMPTY_MEMORY = '(module (memory (export "memory") 0))'
# Slots held at once while emptying: each batch is taken from the least
# recently used end of wasmtime's list of unused slots, so requests in flight
# keep every other slot of the pool.
_BATCH = 8


def empty_unused_slots(engine: wasmtime.Engine) -> int:
    """Empty the pool's unused linear-memory slots; returns how many it walked.

    With `max_unused_warm_slots = 0` (`_engine.py`), a module that has no slot
    of its own is given the least recently used unused slot. Batches of
    instances of a new empty module (its own, so no batch reuses the slots of
    the one before) walk that list until a slot comes round again. wasmtime
    splits the pool into shards (one per CPU, up to 16), and a thread takes
    slots from its own shard, assigned in turn as threads first use the pool:
    so the walk runs on two new threads per shard, one after the other.
    """
    serialized = wasmtime.Module(engine, _EMPTY_MEMORY).serialize()
    emptied: list[int] = []
    for _ in range(2 * _shards()):
        walker = threading.Thread(
            target=lambda: emptied.append(_walk(engine, serialized)), name="edgefn-release-walk"
        )
        walker.start()
        walker.join()
    return sum(emptied)


def _shards() -> int:
    # As wasmtime's `default_shard_count`: available parallelism, at most 16.
    return min(len(os.sched_getaffinity(0)), 16)


def _walk(engine: wasmtime.Engine, serialized: bytearray) -> int:
    seen: set[int] = set()
    while True:
        batch = wasmtime.Module.deserialize(engine, serialized)
        stores: list[wasmtime.Store] = []
        try:
            bases = [_instantiate(engine, batch, stores) for _ in range(_BATCH)]
        except wasmtime.WasmtimeError:
            # The pool is full of requests in flight: nothing more to empty now.
            return len(seen)
        finally:
            stores.clear()  # the slots go back, emptied, before the module goes
        if seen.intersection(bases):
            return len(seen)
        seen.update(bases)


def _instantiate(
    engine: wasmtime.Engine, module: wasmtime.Module, stores: list[wasmtime.Store]
) -> int:
    """Instantiate `module` in a new store kept in `stores`; the address of its memory."""
    store = wasmtime.Store(engine)
    stores.append(store)
    memory = wasmtime.Instance(store, module, []).exports(store)["memory"]
    assert isinstance(memory, wasmtime.Memory)
    return ctypes.addressof(memory.data_ptr(store).contents)


def trim_heap() -> bool:
    """Return malloc's free memory to the system (glibc's `malloc_trim`);
    False where the C library has none (musl)."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return False
    trim(0)
    return True


def resident_bytes() -> int:
    """This process's resident set size."""
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * _PAGE


_PAGE = os.sysconf("SC_PAGE_SIZE")


def _libc() -> ctypes.CDLL:
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(ctypes.util.find_library("c"))
    return _LIBC


_LIBC: ctypes.CDLL | None = None


class MemoryReleaser:
    """Calls `release` once the process has been quiet for `after` seconds
    and has grown by more than `slack` bytes since the last release.

    Quiet: under `busy` of a core of CPU (the process's own) in each `tick`;
    a worker under any real load never releases, so the steady state pays only
    the tick (one `/proc/self/statm` read and a clock read). An idle worker
    (epoch ticker, registry polls) used under 2 % of a core on the reference
    machine.
    """

    def __init__(
        self,
        release: Callable[[], object],
        *,
        after: float,
        slack: int = 64 * 1024 * 1024,
        tick: float = 0.5,
        busy: float = 0.1,
        clock: Callable[[], float] = time.process_time,
        rss: Callable[[], int] = resident_bytes,
    ) -> None:
        if after <= 0:
            raise ValueError(f"after must be positive, not {after}")
        self.release = release
        self.after = after
        self.slack = slack
        self.tick = tick
        self.busy = busy
        self.releases = 0  # for tests and curiosity
        self._clock = clock
        self._rss = rss
        self._floor = rss()
        self._cpu = clock()
        self._quiet_ticks = 0
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> MemoryReleaser:
        self._thread = threading.Thread(target=self._run, name="edgefn-release", daemon=True)
        self._thread.start()
        return self

    def step(self) -> bool:
        """One tick's decision; True when it released. (The thread calls it.)"""
        cpu = self._clock()
        quiet = cpu - self._cpu <= self.busy * self.tick
        self._cpu = cpu
        self._quiet_ticks = self._quiet_ticks + 1 if quiet else 0
        rss = self._rss()
        # The lowest RSS since the last release is what the process needs idle.
        self._floor = min(self._floor, rss)
        if self._quiet_ticks * self.tick < self.after or rss <= self._floor + self.slack:
            return False
        self.release()
        self.releases += 1
        self._floor = self._rss()
        self._cpu = self._clock()  # the release's own CPU is not activity
        self._quiet_ticks = 0
        return True

    def rebase(self) -> None:
        """Take the process's size now as its idle size (startup's growth is no burst)."""
        self._floor = self._rss()

    def _run(self) -> None:
        while not self._stopped.wait(self.tick):
            try:
                self.step()
            except Exception:  # a failed release must not end the releases
                log.exception("giving memory back failed")

    def close(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()
