"""Each function's key-value stores in a directory of its own (`edgefn dev`: its
folder's `.edgefn/dev/`), so the data lives with the function, not with the
gateway's registry: the dev gateway's is temporary."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from edgefn_runtime.capabilities.kv import KVFailure, StoreQuota

from ..registry import SQLiteRegistry
from ._sqlite import SQLiteKeyValue

__all__ = ["PerFunctionKeyValue"]


class PerFunctionKeyValue:
    """A `KeyValueBackend` (and the admin API's `SQLKeyValue` calls) over one SQLite
    database per function, in the directories `directories` names by function."""

    def __init__(self, directories: Mapping[str, Path]) -> None:
        self._stores: dict[str, SQLiteKeyValue] = {}
        for function, directory in directories.items():
            directory.mkdir(parents=True, exist_ok=True)
            SQLiteRegistry(directory).close()  # creates the key-value tables
            self._stores[function] = SQLiteKeyValue(directory)

    def _of(self, function: str) -> SQLiteKeyValue:
        try:
            return self._stores[function]
        except KeyError:
            raise KVFailure("unavailable", f"no key-value directory for {function!r}") from None

    def get(self, function: str, store: str, key: str, deadline: float) -> bytes | None:
        return self._of(function).get(function, store, key, deadline)

    def exists(self, function: str, store: str, key: str, deadline: float) -> bool:
        return self._of(function).exists(function, store, key, deadline)

    def keys(
        self, function: str, store: str, prefix: str, limit: int, deadline: float
    ) -> list[str]:
        return self._of(function).keys(function, store, prefix, limit, deadline)

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
        self._of(function).set(function, store, key, value, ttl, quota, deadline)

    def delete(self, function: str, store: str, key: str, deadline: float) -> None:
        self._of(function).delete(function, store, key, deadline)

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
        return self._of(function).incr(function, store, key, by, ttl, quota, deadline)

    def stored_bytes(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for store in self._stores.values():
            totals.update(store.stored_bytes())
        return totals

    def close(self) -> None:
        for store in self._stores.values():
            store.close()
