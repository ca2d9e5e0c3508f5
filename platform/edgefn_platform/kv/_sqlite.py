"""The key-value stores of an embedded gateway: in `<data_dir>/registry.sqlite3`,
next to the registry (which creates the tables), so one backup holds both.

Each thread has its own connection (not the registry's: each call sets its own
busy timeout from its deadline). WAL, with `synchronous=NORMAL`: a commit is in
the WAL file before it is acknowledged, so killing the process (SIGKILL, OOM)
loses no acknowledged write; only a power loss or a kernel crash may lose the
last commits (never corrupt the database). FULL would fsync every commit: see
the figures in README "Key-value stores".
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edgefn_runtime.capabilities.kv import KVFailure

from ..registry._sql import SQLITE, Connection
from ._store import SQLKeyValue, Statements, database_failed

__all__ = ["SQLiteKeyValue"]


class SQLiteKeyValue(SQLKeyValue):
    """A `KeyValueBackend` in a local data directory, shared by its worker processes."""

    dialect = SQLITE
    sql = Statements().for_dialect(SQLITE)

    def __init__(self, data_dir: Path, synchronous: str = "NORMAL") -> None:
        super().__init__()
        self.path = data_dir / "registry.sqlite3"
        self.location = str(self.path)
        self.synchronous = synchronous
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []

    def _db(self, deadline: float) -> sqlite3.Connection:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _late()
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            # check_same_thread off only so that close() can close every thread's.
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self.synchronous}")
            db.row_factory = sqlite3.Row
            self._local.db = db
            with self._lock:
                self._connections.append(db)
        # How long a statement waits for another process's write lock.
        db.execute(f"PRAGMA busy_timeout={max(1, int(remaining * 1000))}")
        return db

    @contextmanager
    def _reading(self, deadline: float) -> Iterator[Connection]:
        try:
            yield self._db(deadline)  # autocommit: each statement reads the latest commit
        except sqlite3.Error as exc:
            raise self._failure(exc) from None

    @contextmanager
    def _writing(self, deadline: float) -> Iterator[Connection]:
        try:
            db = self._db(deadline)
            db.execute("BEGIN IMMEDIATE")  # the write lock now: no upgrade deadlocks
        except sqlite3.Error as exc:
            raise self._failure(exc) from None
        try:
            yield db
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise self._failure(exc) from None
            raise

    def _failure(self, exc: sqlite3.Error) -> KVFailure:
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            return _late()
        if code == sqlite3.SQLITE_FULL:
            return KVFailure(
                "unavailable", "the key-value store's disk is full; the operator must make room"
            )
        return database_failed(exc)

    def close(self) -> None:
        with self._lock:
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()


def _late() -> KVFailure:
    return KVFailure(
        "unavailable",
        "the key-value store was busy with other writes past the request's deadline; retry",
    )
