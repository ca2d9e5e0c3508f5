"""`edgefn.testing.MemoryKV`: the key-value stores in memory, for unit tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection

from edgefn_contract.kv import INTEGER, check_key

from . import kv

__all__ = ["MemoryKV"]

_S64_MIN, _S64_MAX = -(2**63), 2**63 - 1


class MemoryKV:
    """Stores in memory with the host's semantics: times to live, `incr` on
    decimal integers within signed 64 bits, keys in byte order, values up to
    `max_value` bytes (the default `max_kv_value`, 1 MiB).

    A test may fill it before the request and inspect it after:

    >>> memory = MemoryKV()
    >>> memory.set("default", "greeting", b"hi")
    >>> client = TestClient(app, kv=memory)
    >>> memory.get("default", "hits")

    `declared`, when given, is the stores `open` accepts (`TestClient` passes
    the manifest's `key_value_stores` when it finds the function's edgefn.toml);
    `clock` is read for expiry (seconds, `time.monotonic` by default), so a
    test can move time forward instead of sleeping.
    """

    def __init__(
        self,
        *,
        declared: Collection[str] | None = None,
        max_value: int = 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.declared = frozenset(declared) if declared is not None else None
        self.max_value = max_value
        self.clock = clock
        self._stores: dict[str, dict[str, tuple[bytes, float | None]]] = {}
        self._lock = threading.Lock()

    def items(self, store: str) -> dict[str, bytes]:
        """The live entries of `store`, a copy: key -> value."""
        return {key: value for key, (value, _) in self._live(store).items()}

    # The `edgefn.kv.Backend` protocol --------------------------------------

    def open(self, store: str) -> None:
        if self.declared is not None and store not in self.declared:
            which = ", ".join(repr(s) for s in sorted(self.declared)) or "none"
            raise kv.StoreNotDeclared(
                f"the key-value store {store!r} is not declared in this function's manifest "
                f'(it declares {which}); declare it with key_value_stores = ["{store}"] '
                "in edgefn.toml"
            )

    def get(self, store: str, key: str) -> bytes | None:
        self.open(store)
        found = self._live(store).get(_checked(key))
        return None if found is None else found[0]

    def set(self, store: str, key: str, value: bytes | str, ttl_ms: int = 0) -> None:
        self.open(store)
        data = value.encode() if isinstance(value, str) else bytes(value)
        if len(data) > self.max_value:
            raise kv.ValueTooLarge(
                f"the value of {len(data):,} bytes is over this function's limit of "
                f"{self.max_value:,} bytes (max_kv_value); raise it with [limits] "
                "max_kv_value in edgefn.toml or `edgefn limits NAME --max-kv-value SIZE`, "
                "up to the operator's maximum"
            )
        with self._lock:
            self._live(store)[_checked(key)] = (data, self._expiry(ttl_ms))

    def delete(self, store: str, key: str) -> None:
        self.open(store)
        with self._lock:
            self._live(store).pop(_checked(key), None)

    def exists(self, store: str, key: str) -> bool:
        self.open(store)
        return _checked(key) in self._live(store)

    def keys(self, store: str, prefix: str = "", limit: int = 1000) -> list[str]:
        self.open(store)
        found = sorted((k for k in self._live(store) if k.startswith(prefix)), key=str.encode)
        return found[:limit]

    def incr(self, store: str, key: str, by: int = 1, ttl_ms: int = 0) -> int:
        self.open(store)
        with self._lock:
            entries = self._live(store)
            value, expires = entries.get(_checked(key), (b"0", self._expiry(ttl_ms)))
            if not INTEGER.fullmatch(value):
                raise kv.NotAnInteger(
                    f"the value of {key!r} is not a decimal integer, incr cannot add to it"
                )
            total = int(value) + by
            if not _S64_MIN <= total <= _S64_MAX:
                raise kv.NotAnInteger(f"incr would take {key!r} past a signed 64-bit integer")
            entries[key] = (str(total).encode(), expires)
            return total

    def _expiry(self, ttl_ms: int) -> float | None:
        return self.clock() + ttl_ms / 1000 if ttl_ms else None

    def _live(self, store: str) -> dict[str, tuple[bytes, float | None]]:
        entries = self._stores.setdefault(store, {})
        now = self.clock()
        for key in [k for k, (_, expires) in entries.items() if expires and expires <= now]:
            del entries[key]
        return entries

    def __repr__(self) -> str:
        return f"MemoryKV({sum(len(s) for s in self._stores.values())} keys)"


def _checked(key: str) -> str:
    problem = check_key(key)
    if problem is not None:
        raise ValueError(f"kv: {problem}")
    return key
