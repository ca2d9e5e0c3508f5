"""The key-value stores' logic, once for both backends: `SQLKeyValue` implements
`KeyValueBackend` over the registry's `kv` and `kv_usage` tables; a backend
supplies its connections (bounded by the call's deadline), its write locking and
how its driver says "locked", "timed out" or "unreachable".

Every write runs in one transaction that first locks the store's `kv_usage` row
(SQLite: the database's write lock, `BEGIN IMMEDIATE`; PostgreSQL: the row
lock of an upsert on that row), so writes to one store are serialised across processes and
gateways: `incr` is a read and a write under that lock, and the usage totals
cannot drift from the rows they count.
"""

from __future__ import annotations

import logging
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, fields
from typing import Any

from edgefn_contract.kv import INTEGER
from edgefn_runtime.capabilities.kv import KVFailure, StoreQuota

from ..registry._sql import Connection, Dialect

__all__ = [
    "SWEEP_BATCH",
    "SWEEP_SECONDS",
    "SQLKeyValue",
    "Statements",
    "database_failed",
    "prefix_bounds",
]

log = logging.getLogger("edgefn.kv")

# A write sweeps its store's expired entries if this process has not for this
# long, so that rows past their time to live do not linger until the store is
# full (they count toward its quota and `edgefn_kv_stored_bytes` until swept);
# the partial index `kv_expiry` makes a sweep with nothing to remove one probe.
SWEEP_SECONDS = 60.0
# The most expired entries one write sweeps: a store can hold `max_kv_keys`
# (up to 10 million) entries that all expire at once, and sweeping 100,000 of
# 1 KB held SQLite's write lock (the registry's: deploys, logs) for 2.3-3.0 s,
# past any deadline, with ~70 MB of their keys in memory; 1,000: 15-35 ms.
# A write that sweeps a full batch leaves the store due, so the next one goes on.
SWEEP_BATCH = 1000

_INT64 = (-(2**63), 2**63 - 1)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LIVE = "(expires_at IS NULL OR expires_at > ?)"


@dataclass(frozen=True)
class Statements:
    """Every statement both backends run, with SQLite's `?` placeholders."""

    get: str = f"SELECT value FROM kv WHERE function = ? AND store = ? AND key = ? AND {_LIVE}"
    exists: str = f"SELECT 1 AS x FROM kv WHERE function = ? AND store = ? AND key = ? AND {_LIVE}"
    # A range on the primary key, so the scan starts at the prefix and stops past it.
    keys_from: str = (
        f"SELECT key FROM kv WHERE function = ? AND store = ? AND key >= ? AND {_LIVE} "
        "ORDER BY key LIMIT ?"
    )
    keys_between: str = (
        "SELECT key FROM kv WHERE function = ? AND store = ? AND key >= ? AND key < ? "
        f"AND {_LIVE} ORDER BY key LIMIT ?"
    )
    # The row as it is, expired or not: usage counts it until it is swept.
    entry: str = "SELECT value, expires_at FROM kv WHERE function = ? AND store = ? AND key = ?"
    put: str = (
        "INSERT INTO kv VALUES (?, ?, ?, ?, ?) ON CONFLICT (function, store, key) DO UPDATE "
        "SET value = excluded.value, expires_at = excluded.expires_at"
    )
    remove: str = "DELETE FROM kv WHERE function = ? AND store = ? AND key = ?"
    # At most a batch (SQLite has no DELETE ... LIMIT unless compiled so).
    sweep: str = (
        "DELETE FROM kv WHERE (function, store, key) IN (SELECT function, store, key FROM kv "
        "WHERE function = ? AND store = ? AND expires_at <= ? LIMIT ?) "
        "RETURNING key, length(value) AS size"
    )
    # Locks the store's usage row (creating it if new) and reads it, in one
    # statement: an upsert locks the row it updates, on PostgreSQL as on SQLite.
    lock_usage: str = (
        "INSERT INTO kv_usage VALUES (?, ?, 0, 0) ON CONFLICT (function, store) "
        "DO UPDATE SET keys = kv_usage.keys RETURNING keys, bytes"
    )
    set_usage: str = "UPDATE kv_usage SET keys = ?, bytes = ? WHERE function = ? AND store = ?"
    stored_bytes: str = "SELECT function, SUM(bytes) AS bytes FROM kv_usage GROUP BY function"

    def for_dialect(self, dialect: Dialect) -> Statements:
        return Statements(
            **{
                f.name: getattr(self, f.name).replace("?", dialect.placeholder)
                for f in fields(self)
            }
        )


def prefix_bounds(prefix: str) -> tuple[str, str | None]:
    """The keys starting with `prefix` are those in [low, high) in code point order,
    which is UTF-8's byte order (SQLite's and `COLLATE "C"`'s); high None: no bound.
    A range, not LIKE: a prefix's `%` and `_` are keys' characters like any other."""
    stem = prefix.rstrip("\U0010ffff")
    if not stem:
        return prefix, None
    last = ord(stem[-1]) + 1
    if 0xD800 <= last <= 0xDFFF:  # surrogates are not characters: skip them
        last = 0xE000
    return prefix, stem[:-1] + chr(last)


@dataclass
class _Usage:
    keys: int
    bytes: int


class SQLKeyValue(ABC):
    """A `KeyValueBackend` over one SQL database; subclasses supply what differs."""

    dialect: Dialect
    sql: Statements
    location: str
    # Unix time now: expiry is wall-clock, as TTLs are; tests set their own.
    clock = staticmethod(time.time)
    sweep_batch = SWEEP_BATCH

    def __init__(self) -> None:
        # When this process last swept each store: (function, store) -> Unix time.
        self._swept: dict[tuple[str, str], float] = {}

    # -- what a backend supplies --------------------------------------------

    @abstractmethod
    def _reading(self, deadline: float) -> AbstractContextManager[Connection]:
        """A connection that reads the latest commit, bounded by `deadline`."""

    @abstractmethod
    def _writing(self, deadline: float) -> AbstractContextManager[Connection]:
        """A write transaction, committed when the block ends without an error;
        waiting for locks bounded by `deadline`."""

    @abstractmethod
    def close(self) -> None: ...

    # -- KeyValueBackend -----------------------------------------------------

    def get(self, function: str, store: str, key: str, deadline: float) -> bytes | None:
        with self._reading(deadline) as db:
            row = db.execute(self.sql.get, (function, store, key, self.clock())).fetchone()
        return None if row is None else bytes(row["value"])

    def exists(self, function: str, store: str, key: str, deadline: float) -> bool:
        with self._reading(deadline) as db:
            row = db.execute(self.sql.exists, (function, store, key, self.clock())).fetchone()
        return row is not None

    def keys(
        self, function: str, store: str, prefix: str, limit: int, deadline: float
    ) -> list[str]:
        if limit <= 0 or _CONTROL.search(prefix):
            return []  # no key holds a control character
        low, high = prefix_bounds(prefix)
        with self._reading(deadline) as db:
            if high is None:
                rows = db.execute(self.sql.keys_from, (function, store, low, self.clock(), limit))
            else:
                rows = db.execute(
                    self.sql.keys_between, (function, store, low, high, self.clock(), limit)
                )
            return [str(row["key"]) for row in rows]

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
        expires_at = None if ttl is None else self.clock() + ttl
        with self._store_lock(function, store, deadline) as (db, usage):
            old = db.execute(self.sql.entry, (function, store, key)).fetchone()
            self._admit(db, function, store, usage, key, old, len(value), quota)
            db.execute(self.sql.put, (function, store, key, value, expires_at))

    def delete(self, function: str, store: str, key: str, deadline: float) -> None:
        with self._store_lock(function, store, deadline) as (db, usage):
            old = db.execute(self.sql.entry, (function, store, key)).fetchone()
            if old is None:
                return
            db.execute(self.sql.remove, (function, store, key))
            usage.keys -= 1
            usage.bytes -= _size(key, old)

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
        now = self.clock()
        with self._store_lock(function, store, deadline) as (db, usage):
            old = db.execute(self.sql.entry, (function, store, key)).fetchone()
            live = old is not None and (old["expires_at"] is None or old["expires_at"] > now)
            current, expires_at = 0, None if ttl is None else now + ttl
            if live:
                current, expires_at = _integer(bytes(old["value"]), key), old["expires_at"]
            total = current + by
            if not _INT64[0] <= total <= _INT64[1]:
                raise KVFailure(
                    "not_integer",
                    f"incr({key!r}, {by}) would make {total}, past a signed 64-bit integer "
                    f"({_INT64[0]} to {_INT64[1]})",
                )
            value = str(total).encode()
            self._admit(db, function, store, usage, key, old, len(value), quota)
            db.execute(self.sql.put, (function, store, key, value, expires_at))
        return total

    def stored_bytes(self) -> dict[str, int]:
        with self._reading(time.monotonic() + 5.0) as db:
            return {
                str(row["function"]): int(row["bytes"] or 0)
                for row in db.execute(self.sql.stored_bytes)
            }

    # -- shared -------------------------------------------------------------

    @contextmanager
    def _store_lock(
        self, function: str, store: str, deadline: float
    ) -> Iterator[tuple[Connection, _Usage]]:
        """A write transaction holding the store's lock, with its usage; the usage
        as the block leaves it is written back in the same transaction."""
        failure: KVFailure | None = None
        with self._writing(deadline) as db:
            row = db.execute(self.sql.lock_usage, (function, store)).fetchone()
            usage = _Usage(int(row["keys"]), int(row["bytes"]))
            before = _Usage(usage.keys, usage.bytes)
            if self.clock() - self._swept.get((function, store), 0.0) >= SWEEP_SECONDS:
                self._sweep(db, function, store, usage)
            try:
                yield db, usage
            except _Refused as refused:
                # Committed all the same: the sweep that preceded the refusal.
                failure = refused.failure
            if usage != before:
                db.execute(self.sql.set_usage, (usage.keys, usage.bytes, function, store))
        if failure is not None:
            raise failure

    def _admit(
        self,
        db: Connection,
        function: str,
        store: str,
        usage: _Usage,
        key: str,
        old: Any,
        value_size: int,
        quota: StoreQuota,
    ) -> None:
        """Count a write of `value_size` bytes at `key` (replacing `old`, a row or
        None) in `usage`, or raise `_Refused` if it would go over `quota`: only
        after sweeping the store's expired entries, which may make the room."""
        new_size = len(key.encode()) + value_size
        add_keys = 0 if old is not None else 1
        add_bytes = new_size - (0 if old is None else _size(key, old))
        over = self._over(usage, add_keys, add_bytes, quota)
        if over is not None:
            swept = self._sweep(db, function, store, usage)
            if key in swept:
                add_keys, add_bytes = 1, new_size  # the replaced entry was expired: gone now
            over = self._over(usage, add_keys, add_bytes, quota)
            if over is not None:
                batch = self.sweep_batch if len(swept) >= self.sweep_batch else 0
                message = _quota_message(function, store, usage, *over, sweeping=batch)
                raise _Refused(KVFailure("quota_exceeded", message))
        usage.keys += add_keys
        usage.bytes += add_bytes

    def _sweep(self, db: Connection, function: str, store: str, usage: _Usage) -> list[str]:
        """Remove up to `sweep_batch` of the store's expired entries, counted out of
        `usage`; their keys. The store is swept once none are left."""
        now = self.clock()
        removed = []
        rows = db.execute(self.sql.sweep, (function, store, now, self.sweep_batch)).fetchall()
        for row in rows:
            usage.keys -= 1
            usage.bytes -= len(str(row["key"]).encode()) + int(row["size"])
            removed.append(str(row["key"]))
        if len(removed) < self.sweep_batch:
            self._swept[function, store] = now
        else:
            self._swept.pop((function, store), None)  # more to sweep: the next write goes on
        return removed

    @staticmethod
    def _over(
        usage: _Usage, add_keys: int, add_bytes: int, quota: StoreQuota
    ) -> tuple[str, int, int, int] | None:
        """The limit the write would pass: (its name, its value, usage, added)."""
        if add_bytes > 0 and usage.bytes + add_bytes > quota.max_bytes:
            return "max_kv_store", quota.max_bytes, usage.bytes, add_bytes
        if add_keys > 0 and usage.keys + add_keys > quota.max_keys:
            return "max_kv_keys", quota.max_keys, usage.keys, add_keys
        return None


def database_failed(exc: Exception) -> KVFailure:
    """What a function is told of a database error no other case covers: never the
    driver's text (it may hold SQL, names, addresses), which goes to the log."""
    log.warning("the key-value store's database failed", exc_info=exc)
    return KVFailure(
        "unavailable",
        f"the key-value store's database failed ({type(exc).__name__}); "
        "the gateway's log has the details",
    )


class _Refused(Exception):
    """Carries a refusal out of the write's block, so that its sweep still commits."""

    def __init__(self, failure: KVFailure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def _size(key: str, row: Any) -> int:
    """What an entry counts toward `max_kv_store`: its key's UTF-8 and its value."""
    return len(key.encode()) + len(row["value"])


def _integer(value: bytes, key: str) -> int:
    if not INTEGER.fullmatch(value):
        shown = value[:40].decode("utf-8", "replace")
        raise KVFailure(
            "not_integer",
            f"incr({key!r}): the stored value is not a decimal integer "
            f"({shown!r}{'...' if len(value) > 40 else ''}); incr stores integers as "
            'decimal ASCII, such as b"42"',
        )
    number = int(value)
    if not _INT64[0] <= number <= _INT64[1]:
        raise KVFailure(
            "not_integer", f"incr({key!r}): the stored value {number} is past a signed 64-bit one"
        )
    return number


def _quota_message(
    function: str,
    store: str,
    usage: _Usage,
    limit: str,
    value: int,
    used: int,
    add: int,
    *,
    sweeping: int = 0,
) -> str:
    option = limit.replace("_", "-")
    if limit == "max_kv_store":
        what = (
            f"holds {used:,} bytes (keys and values) and this write adds {add:,}: "
            f"over its {limit} of {value:,} bytes"
        )
        example = "SIZE (e.g. 200MiB)"
    else:
        what = f"holds {used:,} keys and this write adds one: over its {limit} of {value:,}"
        example = "N"
    swept = (
        f"expired entries are swept {sweeping:,} a write: retry"
        if sweeping
        else "expired entries already swept"
    )
    return (
        f"the store {store!r} {what} ({swept}); delete keys, or raise "
        f"{limit} under [limits] in edgefn.toml or with `edgefn limits {function} --{option} "
        f"{example}`, up to the operator's maximum"
    )
