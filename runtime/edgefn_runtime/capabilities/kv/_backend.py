"""What keeps the key-value stores: the interface the capability calls, which the
gateway implements over its database (SQLite or PostgreSQL, `edgefn_platform.kv`)
and tests implement in memory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["KVFailure", "KeyValueBackend", "StoreQuota"]


class KVFailure(Exception):
    """An operation refused or failed; `kind` is one of
    `edgefn_contract.kv.FAILURE_KINDS`, `message` says the limit and how to raise it."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class StoreQuota:
    """What one store of a function may hold (its `max_kv_store` and `max_kv_keys`):
    bytes are keys' UTF-8 plus values, expired entries included until swept."""

    max_bytes: int
    max_keys: int


class KeyValueBackend(Protocol):
    """The stores of every function, namespaced by (function, store).

    Every call is bounded by `deadline` (on `time.monotonic()`'s clock): waiting
    for a lock or a connection past it raises `KVFailure("unavailable", ...)`.
    Times to live are seconds from now; None: kept until deleted. Expired
    entries are absent to every call. Keys arrive checked (`check_key`).
    """

    def get(self, function: str, store: str, key: str, deadline: float) -> bytes | None: ...

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
        """Raises `KVFailure("quota_exceeded", ...)` when the store would go over
        `quota` (after sweeping its expired entries)."""

    def delete(self, function: str, store: str, key: str, deadline: float) -> None: ...

    def exists(self, function: str, store: str, key: str, deadline: float) -> bool: ...

    def keys(
        self, function: str, store: str, prefix: str, limit: int, deadline: float
    ) -> list[str]:
        """At most `limit` live keys starting with `prefix`, in byte order."""

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
        """Atomically, across processes and gateways: the value after adding `by`
        (an absent key counts as 0 and is created with `ttl`; an existing one
        keeps its expiry). `KVFailure("not_integer", ...)` unless the stored value
        is a decimal integer and the sum fits a signed 64-bit one."""

    def stored_bytes(self) -> dict[str, int]:
        """Bytes stored per function, all its stores together (for metrics)."""

    def close(self) -> None: ...
