"""The disk tier: the entries a node's worker processes share, least recently
used first out, bounded in bytes, kept across worker restarts.

Built on diskcache (SQLite index in WAL mode + one file per large value): it
already is process-safe, bounds its volume (`size_limit`) and evicts by last
access. Measured on the 2-core dev VM, page cache warm, median of 20 operations
(10 for 3 MB), 4 runs; put = encode + `set` + `cull`, get = `get` + decode:

    entry     put (writer thread)   get (caller)
    200 B     0.20-0.27 ms          0.13-0.18 ms
    100 KB    0.7-1.5 ms            0.23-0.32 ms
    3 MB      10-15 ms              4.3-6.4 ms

so writes go through one background thread (a `put` costs the caller a dict
insert) and reads happen in the caller: a disk hit is promoted into the memory
tier, so a key costs one disk read per worker until it is evicted there.

Everything diskcache or the file system can raise is turned into a miss (and a
dropped write) here, in this one layer: a busy, full, removed or broken disk
makes the cache smaller, never a request fail. SQLite's lock timeout is short
(`_LOCK_TIMEOUT`) because reads run on the gateway's event loop.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import diskcache

from ._entry import Entry
from ._envelope import decode, encode

__all__ = ["DiskTier"]

_log = logging.getLogger(__name__)

# A read waits at most this long for another process's write transaction (which
# holds the lock for well under a millisecond: the values are written to their
# files before the transaction); past it, a miss.
_LOCK_TIMEOUT = 0.05
# The writer thread can wait longer for another worker's write or cull: nobody
# waits for it (a write it gives up on is dropped).
_WRITER_LOCK_TIMEOUT = 1.0
# Values from this size on go to their own file, smaller ones into SQLite's pages.
# 64 KiB rather than diskcache's 32: a file wastes up to one 4 KiB block of the
# bound (diskcache counts a file's length, not its blocks), at most 1/16 here.
_MIN_FILE_SIZE = 64 * 2**10
_PAGE_SIZE = 4096
# Entries waiting for the writer thread, at most; a `put` beyond it is dropped
# (counted in `dropped`): the memory tier holds the entry meanwhile, and a cache
# that falls behind its disk had better skip writes than grow without bound.
_PENDING_BYTES = 64 * 2**20

# (event, amount): "store", "evict" with a count, "bytes" with the size now.
Tell = Callable[[str, int], None]


class DiskTier:
    """The disk tier in a directory. `open` sets `capacity`, the bytes its entries
    may take, below the operator's bound so that the directory, SQLite's WAL
    included, stays within that bound. `close` when done."""

    def __init__(
        self, cache: diskcache.Cache, writer: diskcache.Cache, capacity: int, tell: Tell
    ) -> None:
        self.capacity = capacity
        # The same directory opened twice, for the lock timeouts: `_cache` for the
        # callers (reads, deletes), `_writes` for the writer thread only.
        self._cache = cache
        self._writes = writer
        self._tell = tell
        self._failing = False
        self.dropped = 0
        # Writes wait here, newest entry per key (None: a delete); the queue carries
        # the keys in order.
        self._pending: dict[str, Entry | None] = {}
        self._pending_bytes = 0
        self._pending_lock = threading.Lock()
        # Held while one key's write or delete runs, so that a `delete` never
        # races with the writer storing that key again after it.
        self._write_lock = threading.Lock()
        # Keys to write, callbacks to call once the keys before them are written
        # (`after_writes`), None to stop.
        self._queue: queue.SimpleQueue[str | Callable[[], None] | None] = queue.SimpleQueue()
        # Keys queued and not yet written (or skipped): `flush` waits for 0.
        self._queued = 0
        self._idle = threading.Condition(self._pending_lock)
        self._closed = False
        self._writer = threading.Thread(
            target=self._write_loop, name="edgefn-cache-disk", daemon=True
        )
        self._writer.start()

    @classmethod
    def open(cls, directory: Path, capacity: int, tell: Tell) -> DiskTier | None:
        """The disk tier, or None (no disk tier) when `directory` cannot hold one."""
        # The WAL between checkpoints and SQLite's shared memory file live next
        # to the index, outside diskcache's `volume()`: keep room for them.
        wal = max(16 * _PAGE_SIZE, min(capacity // 8, 4 * 2**20))
        # And a file's last block: up to 1/16 more than its length (`_MIN_FILE_SIZE`).
        limit = (capacity - 2 * wal - 64 * 2**10) * 15 // 16
        if limit <= 0:
            _log.warning(
                "cache: disk bound %d B too small for a disk tier, not using one", capacity
            )
            return None
        settings = {
            "disk": _BytesOnly,
            "size_limit": limit,
            "eviction_policy": "least-recently-used",
            # No culling inside `set`: `_cull` runs after each write.
            "cull_limit": 0,
            "disk_min_file_size": _MIN_FILE_SIZE,
            "sqlite_wal_autocheckpoint": wal // _PAGE_SIZE,
            "sqlite_journal_size_limit": wal,
        }
        try:
            # Only the cache's own processes may read or write it: a record is
            # trusted to be what this code wrote (its checksum catches accidents).
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            cache = diskcache.Cache(str(directory), timeout=_LOCK_TIMEOUT, **settings)
            writer = diskcache.Cache(str(directory), timeout=_WRITER_LOCK_TIMEOUT, **settings)
        except (OSError, sqlite3.Error, diskcache.Timeout) as error:
            _log.warning("cache: no disk tier in %s: %s", directory, error)
            return None
        return cls(cache, writer, limit, tell)

    def get(self, key: str) -> Entry | None:
        try:
            record = self._cache.get(key)
        except _Refused:
            record = None
            self._remove(key)
        except (OSError, sqlite3.Error, diskcache.Timeout) as error:
            self._failed("read", error)
            return None
        if record is None:
            return None
        entry = decode(record) if isinstance(record, bytes) else None
        if entry is None:
            # Torn, truncated or foreign: never served, and gone so that it
            # stops costing a read and its bytes.
            _log.warning("cache: discarding a corrupt disk entry")
            self._remove(key)
        return entry

    def put_later(self, key: str, entry: Entry) -> bool:
        """Queue `entry` for the writer thread; False when the queue is full."""
        size = entry.size
        with self._pending_lock:
            if self._closed or (
                self._pending_bytes and self._pending_bytes + size > _PENDING_BYTES
            ):
                self.dropped += 1
                return False
            self._enqueue(key, entry)
        return True

    def after_writes(self, callback: Callable[[], None]) -> None:
        """Call `callback` once every write queued so far is on disk (or failed),
        from the writer thread; now if the tier is closed. Nobody waits."""
        with self._pending_lock:
            if not self._closed:
                self._queue.put(callback)
                return
        callback()

    def delete(self, key: str) -> None:
        """Remove `key` now (the caller waits for the disk)."""
        with self._write_lock:
            with self._pending_lock:
                old = self._pending.pop(key, None)
                if old is not None:
                    self._pending_bytes -= old.size
            self._remove(key)

    def delete_later(self, key: str) -> None:
        """Remove `key` in the writer thread, after what is queued before it: for
        the event loop, which must not wait for the disk's locks."""
        with self._pending_lock:
            if not self._closed:
                self._enqueue(key, None)

    def _enqueue(self, key: str, entry: Entry | None) -> None:
        """Under `_pending_lock`."""
        queued = key in self._pending
        old = self._pending.get(key)
        self._pending[key] = entry
        self._pending_bytes += (entry.size if entry else 0) - (old.size if old else 0)
        if not queued:
            self._queued += 1
            self._queue.put(key)

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until every queued write is on disk (or failed); whether it came to that."""
        with self._idle:
            return self._idle.wait_for(lambda: self._queued == 0, timeout)

    def close(self) -> None:
        """Write what is queued, stop the writer thread, close the index."""
        with self._pending_lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(None)
        self._writer.join(timeout=10)
        self._cache.close()
        self._writes.close()

    def stats(self) -> tuple[int, int]:
        """(entries, bytes on disk as diskcache counts them) now."""
        try:
            return len(self._cache), int(self._cache.volume())
        except (OSError, sqlite3.Error, diskcache.Timeout):
            return 0, 0

    def _write_loop(self) -> None:
        while True:
            key = self._queue.get()
            if key is None:
                return
            if callable(key):
                try:
                    key()
                except Exception:
                    _log.exception("cache: a disk tier callback failed")
                continue
            try:
                with self._write_lock:
                    with self._pending_lock:
                        queued = key in self._pending
                        entry = self._pending.pop(key, None)
                        if entry is not None:
                            self._pending_bytes -= entry.size
                    if entry is not None:
                        self._write(key, entry)
                    elif queued:
                        self._remove(key)
            except Exception:
                # `_write` turns the disk's failures into dropped writes; anything
                # else is a bug, but must not stop the writer (nor hang `flush`).
                _log.exception("cache: disk tier write failed")
            finally:
                with self._idle:
                    self._queued -= 1
                    if not self._queued:
                        self._idle.notify_all()

    def _write(self, key: str, entry: Entry) -> None:
        try:
            self._writes.set(key, encode(entry))
            evicted = self._cull()
            volume = int(self._writes.volume())
        except (OSError, sqlite3.Error, diskcache.Timeout) as error:
            self._failed("write", error)
            return
        self._failing = False
        self._tell("store", 1)
        if evicted:
            self._tell("evict", evicted)
        self._tell("bytes", volume)

    def _cull(self) -> int:
        """Evict least recently used entries, one at a time, until the volume is
        within the bound; how many.

        Not diskcache's `cull`, which evicts ten entries per round however few
        would do (ten 3 MB originals to make room for one thumbnail), and not its
        `cull_limit`, which evicts at most that many per `set` however many a
        large entry needs. diskcache has no public "least recently used key", so
        this reads its index table, in this one place (hence the exact pin)."""
        evicted = 0
        while self._writes.volume() > self.capacity:
            row = self._writes._sql("SELECT key FROM Cache ORDER BY access_time LIMIT 1").fetchone()
            if row is None:
                break
            if not self._writes.delete(row[0]):
                # Another worker evicted it meanwhile, and culls too.
                break
            evicted += 1
        return evicted

    def _remove(self, key: str) -> None:
        try:
            self._cache.delete(key)
        except (OSError, sqlite3.Error, diskcache.Timeout) as error:
            self._failed("delete", error)

    def _failed(self, what: str, error: BaseException) -> None:
        # Logged once per run of failures, not once per request.
        if not self._failing:
            self._failing = True
            _log.warning("cache: disk tier %s failed, treated as a miss: %r", what, error)


class _Refused(Exception):
    """A record that is not plain bytes."""


class _BytesOnly(diskcache.Disk):  # type: ignore[misc]
    """diskcache's storage, reading back plain bytes only: it unpickles any other
    value, and whoever could write a record into the directory would then run
    code in every worker; this cache writes nothing but bytes."""

    def fetch(self, mode: int, filename: str, value: object, read: bool) -> object:
        if mode not in (diskcache.core.MODE_RAW, diskcache.core.MODE_BINARY):
            raise _Refused
        return super().fetch(mode, filename, value, read)
