"""The memory tier: one worker's entries, least recently used first out, bounded
in bytes (`Entry.size`)."""

from __future__ import annotations

import threading
from collections import OrderedDict

from ._entry import Entry

__all__ = ["MemoryTier"]


class MemoryTier:
    """Thread-safe: the gateway's event loop and the sandbox threads share it.

    One lock around an `OrderedDict`: a hit is a dict lookup and a `move_to_end`
    under an uncontended lock, well under a microsecond (see `HttpCache.get`)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> Entry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: str, entry: Entry) -> tuple[int, int] | None:
        """Store `entry`, evicting the least recently used entries to stay within
        `capacity`; (entries evicted, bytes now), or None when it cannot fit."""
        size = entry.size
        if size > self.capacity:
            return None
        evicted = 0
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.size
            self._entries[key] = entry
            self._bytes += size
            while self._bytes > self.capacity:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= dropped.size
                evicted += 1
            return evicted, self._bytes

    def delete(self, key: str) -> bool:
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.size
            return old is not None

    def stats(self) -> tuple[int, int]:
        """(entries, bytes) now."""
        with self._lock:
            return len(self._entries), self._bytes
