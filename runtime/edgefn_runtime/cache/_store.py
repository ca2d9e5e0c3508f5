"""The cache's two tiers and its purges, behind `get` and `put`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

from ._config import CacheConfig
from ._disk import DiskTier
from ._entry import Entry
from ._memory import MemoryTier

__all__ = ["HttpCache", "Purges", "TierStats"]

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


class TierStats(NamedTuple):
    entries: int
    bytes: int


class HttpCache:
    """A bounded store of `Entry`s by key: a memory tier in front of a disk tier
    (`config.dir`, `config.disk` bytes; none when `disk` is 0 or `dir` unset).

    Thread-safe (the gateway's event loop and the sandbox threads that fetch
    originals share it); process-safe on disk (a node's workers share the disk
    tier). A `put` reaches memory at once and disk through a background writer
    thread (see `_disk.py`); `close` flushes it."""

    def __init__(self, config: CacheConfig, listener: Listener | None = None) -> None:
        self.config = config
        self.purges = Purges()
        self._listener = listener
        self._memory = MemoryTier(config.memory)
        self._disk: DiskTier | None = None
        if config.disk > 0 and config.dir is not None:
            self._disk = DiskTier.open(config.dir, config.disk, self._tell_disk)

    def get(self, key: str, *, disk: bool = True) -> Entry | None:
        """The entry stored under `key` in either tier (`disk` False: in memory
        only), unless a purge removed it. A disk hit is kept in memory from then on."""
        entry = self._memory.get(key)
        if entry is not None:
            if not self.purges.covers(entry):
                if self._listener is not None:
                    self._listener("hit", "memory", 1)
                return entry
            # Purged. The disk's copy goes in the writer thread: this may be the
            # event loop, which must not wait for the disk's locks.
            self._memory.delete(key)
            if self._disk is not None:
                self._disk.delete_later(key)
        tier = self._disk  # once: `close` may drop it from another thread
        if not disk and tier is not None:
            return None  # the caller asks the disk next: the miss is counted then
        self._tell("miss", "memory", 1)
        if tier is None:
            return None
        entry = tier.get(key)
        if entry is not None and self.purges.covers(entry):
            tier.delete(key)
            entry = None
        if entry is None:
            self._tell("miss", "disk", 1)
            return None
        self._tell("hit", "disk", 1)
        self._to_memory(key, entry)
        return entry

    def put(self, key: str, entry: Entry) -> bool:
        """Store `entry` unless it is larger than `max_object`; whether it was.
        An entry too large for the memory tier goes to disk only."""
        if entry.size > self.config.max_object:
            return False
        stored = self._to_memory(key, entry)
        disk = self._disk
        if disk is not None and entry.size <= disk.capacity:
            if not stored:
                # An older, smaller version of it must not answer from memory.
                self._memory.delete(key)
            stored = disk.put_later(key, entry) or stored
        return stored

    def after_writes(self, callback: Callable[[], None]) -> None:
        """Call `callback` once every `put` so far has reached the disk tier (from
        its writer thread then), or now when there is no disk tier."""
        disk = self._disk
        if disk is None:
            callback()
        else:
            disk.after_writes(callback)

    def delete(self, key: str) -> None:
        """Remove `key` from both tiers (and from the disk writer's queue)."""
        self._memory.delete(key)
        disk = self._disk
        if disk is not None:
            disk.delete(key)

    @property
    def has_disk(self) -> bool:
        return self._disk is not None

    def stats(self) -> dict[str, TierStats]:
        """(entries, bytes) per tier now: "memory", and "disk" when there is one."""
        stats = {"memory": TierStats(*self._memory.stats())}
        disk = self._disk
        if disk is not None:
            stats["disk"] = TierStats(*disk.stats())
        return stats

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until every `put` so far has reached the disk tier (or was dropped);
        whether it came to that within `timeout` seconds."""
        disk = self._disk
        return disk is None or disk.flush(timeout)

    def close(self) -> None:
        """Flush the disk tier and stop its writer; `get` and `put` then use memory only."""
        disk, self._disk = self._disk, None
        if disk is not None:
            disk.close()

    def __enter__(self) -> HttpCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _to_memory(self, key: str, entry: Entry) -> bool:
        result = self._memory.put(key, entry)
        if result is None:
            return False
        evicted, size = result
        self._tell("store", "memory", 1)
        if evicted:
            self._tell("evict", "memory", evicted)
        self._tell("bytes", "memory", size)
        return True

    def _tell_disk(self, event: str, amount: int) -> None:
        self._tell(event, "disk", amount)

    def _tell(self, event: str, tier: str, amount: int) -> None:
        if self._listener is not None:
            self._listener(event, tier, amount)
