"""The cache's two tiers and its purges, behind `get` and `put`."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

from ._config import CacheConfig
from ._entry import Entry

__all__ = ["HttpCache", "Purges"]

# (event, tier, amount): "hit", "miss", "store", "evict" with a count, "bytes" with
# the tier's size now. The gateway turns them into metrics.
Listener = Callable[[str, str, int], None]


class Purges:
    """Which entries purges have removed: for each function, its purges as (path
    prefix, when). An entry stored before a purge of a prefix of its path is gone.

    Purges are checked on lookup rather than applied by walking the tiers: a
    purge then costs nothing however many entries it covers, and reaches the
    disk tier every worker shares as soon as any worker knows of it."""

    def __init__(self) -> None:
        self._by_function: dict[str, tuple[tuple[str, float], ...]] = {}

    def replace(self, purges: Mapping[str, Sequence[tuple[str, float]]]) -> None:
        self._by_function = {name: tuple(items) for name, items in purges.items()}

    def covers(self, entry: Entry) -> bool:
        for prefix, at in self._by_function.get(entry.function, ()):
            if entry.stored_at <= at and entry.path.startswith(prefix):
                return True
        return False


class HttpCache:
    """A bounded store of `Entry`s by key, thread-safe (the gateway's event loop
    and the sandbox threads that fetch originals share it)."""

    def __init__(self, config: CacheConfig, listener: Listener | None = None) -> None:
        self.config = config
        self.purges = Purges()
        self._listener = listener
        self._memory: OrderedDict[str, Entry] = OrderedDict()
        self._memory_bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> Entry | None:
        """The entry stored under `key`, unless a purge removed it."""
        with self._lock:
            entry = self._memory.get(key)
            if entry is not None:
                self._memory.move_to_end(key)
        if entry is not None and self.purges.covers(entry):
            self.delete(key)
            entry = None
        self._tell("hit" if entry is not None else "miss", "memory", 1)
        return entry

    def put(self, key: str, entry: Entry) -> bool:
        """Store `entry` unless it is larger than `max_object`; whether it was."""
        size = entry.size
        if size > self.config.max_object or size > self.config.memory:
            return False
        evicted = 0
        with self._lock:
            old = self._memory.pop(key, None)
            if old is not None:
                self._memory_bytes -= old.size
            self._memory[key] = entry
            self._memory_bytes += size
            while self._memory_bytes > self.config.memory:
                _, dropped = self._memory.popitem(last=False)
                self._memory_bytes -= dropped.size
                evicted += 1
            stored = self._memory_bytes
        self._tell("store", "memory", 1)
        if evicted:
            self._tell("evict", "memory", evicted)
        self._tell("bytes", "memory", stored)
        return True

    def delete(self, key: str) -> None:
        with self._lock:
            old = self._memory.pop(key, None)
            if old is not None:
                self._memory_bytes -= old.size

    def _tell(self, event: str, tier: str, amount: int) -> None:
        if self._listener is not None:
            self._listener(event, tier, amount)
