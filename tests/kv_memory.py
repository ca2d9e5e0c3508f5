"""A `KeyValueBackend` in memory, for tests and benchmarks of the kv capability
without a database (the gateway's are in `edgefn_platform.kv`)."""

from __future__ import annotations

import threading
import time
from typing import Any

from edgefn_runtime.capabilities.kv import KVFailure, StoreQuota

__all__ = ["MemoryBackend"]

_S64_MIN, _S64_MAX = -(2**63), 2**63 - 1


class MemoryBackend:
    """Stores of every function, by (function, store): key -> (value, expires)."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], _Entries] = {}
        self.calls: list[tuple[str, ...]] = []
        self.delay = 0.0  # seconds each call takes (a slow database)
        self.lock = threading.Lock()

    def _store(self, function: str, store: str, key: str | None = None) -> _Entries:
        """The store's entries with `key` (or, without one, every key) gone if expired:
        one key's check keeps an operation O(1), as the database's index does."""
        entries = self.data.setdefault((function, store), _Entries())
        now = time.monotonic()
        for k in [key] if key is not None else list(entries):
            found = entries.get(k)
            if found is not None and found[1] is not None and found[1] <= now:
                del entries[k]
        return entries

    def _wait(self, op: str, function: str, store: str, deadline: float) -> None:
        self.calls.append((op, function, store))
        if self.delay:
            time.sleep(min(self.delay, max(0.0, deadline - time.monotonic())))
            if time.monotonic() >= deadline:
                raise KVFailure("unavailable", "the store did not answer in time")

    def get(self, function: str, store: str, key: str, deadline: float) -> bytes | None:
        self._wait("get", function, store, deadline)
        found = self._store(function, store, key).get(key)
        return None if found is None else found[0]

    def set(
        self,
        function: str,
        store: str,
        key: str,
        value: bytes,
        ttl: float | None,
        quota: StoreQuota,
        deadline: float,
    ) -> None:
        self._wait("set", function, store, deadline)
        entries = self._store(function, store, key)
        _check_quota(entries, key, value, quota)
        entries[key] = (value, time.monotonic() + ttl if ttl else None)

    def delete(self, function: str, store: str, key: str, deadline: float) -> None:
        self._wait("delete", function, store, deadline)
        self._store(function, store, key).pop(key, None)

    def exists(self, function: str, store: str, key: str, deadline: float) -> bool:
        self._wait("exists", function, store, deadline)
        return key in self._store(function, store)

    def keys(
        self, function: str, store: str, prefix: str, limit: int, deadline: float
    ) -> list[str]:
        self._wait("keys", function, store, deadline)
        found = sorted(
            (k for k in self._store(function, store) if k.startswith(prefix)),
            key=lambda k: k.encode(),
        )
        return found[:limit]

    def incr(
        self,
        function: str,
        store: str,
        key: str,
        by: int,
        ttl: float | None,
        quota: StoreQuota,
        deadline: float,
    ) -> int:
        self._wait("incr", function, store, deadline)
        with self.lock:
            entries = self._store(function, store, key)
            value, expires = entries.get(key, (b"0", time.monotonic() + ttl if ttl else None))
            try:
                total = int(value.decode("ascii")) + by
            except ValueError:
                raise KVFailure("not_integer", f"the value of {key!r} is not an integer") from None
            if not _S64_MIN <= total <= _S64_MAX:
                raise KVFailure("not_integer", f"{key!r} would go past a signed 64-bit integer")
            encoded = str(total).encode()
            _check_quota(entries, key, encoded, quota)
            entries[key] = (encoded, expires)
            return total

    def stored_bytes(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for (function, _), entries in self.data.items():
            size = sum(len(k.encode()) + len(v) for k, (v, _) in entries.items())
            totals[function] = totals.get(function, 0) + size
        return totals

    def close(self) -> None:
        pass


class _Entries(dict[str, tuple[bytes, float | None]]):
    """A store's entries, keeping their bytes (keys' UTF-8 and values) as they change."""

    size = 0

    def __setitem__(self, key: str, entry: tuple[bytes, float | None]) -> None:
        old = self.get(key)
        self.size += len(entry[0]) - (len(old[0]) if old else -len(key.encode()))
        super().__setitem__(key, entry)

    def __delitem__(self, key: str) -> None:
        self.size -= len(key.encode()) + len(self[key][0])
        super().__delitem__(key)

    def pop(self, key: str, default: Any = None) -> Any:
        if key in self:
            entry = self[key]
            del self[key]
            return entry
        return default


def _check_quota(entries: _Entries, key: str, value: bytes, quota: StoreQuota) -> None:
    old = entries.get(key)
    keys = len(entries) + (old is None)
    size = entries.size + len(key.encode()) + len(value)
    size -= len(key.encode()) + len(old[0]) if old else 0
    if keys > quota.max_keys:
        raise KVFailure("quota_exceeded", f"the store holds its limit of {quota.max_keys:,} keys")
    if size > quota.max_bytes:
        raise KVFailure(
            "quota_exceeded", f"the store would hold over its {quota.max_bytes:,} bytes"
        )
