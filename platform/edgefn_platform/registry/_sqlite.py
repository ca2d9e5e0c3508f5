"""The embedded registry: SQLite metadata and content-addressed component files.

Layout of the data directory:
    registry.sqlite3          functions, versions, logs (WAL mode)
    artifacts/<sha256>.wasm   components, written once (temp file, fsync, rename)
    locks/<name>.lock         serialises deploys of one function across processes
"""

from __future__ import annotations

import fcntl
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ._artifacts import store, sweep_unused
from ._model import Blob, StorageFull
from ._sql import SCHEMA_VERSION, SQLITE, Connection, migrate
from ._store import SQLStore

__all__ = ["SQLiteRegistry"]


class SQLiteRegistry(SQLStore):
    """A `Registry` in a local data directory, shared by the worker processes."""

    dialect = SQLITE

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.location = str(data_dir / "registry.sqlite3")
        self.artifacts = data_dir / "artifacts"
        self._locks = data_dir / "locks"
        for directory in (self.artifacts, self._locks):
            directory.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        # Every worker opens the registry: read the version first, and take the
        # write lock only when there is something to migrate (or to refuse).
        if self._schema_version() != SCHEMA_VERSION:
            with self._transaction() as db:  # BEGIN IMMEDIATE: one process migrates
                migrate(db, SQLITE)

    def _schema_version(self) -> int:
        try:
            row = self._db().execute(SQLITE.sql.schema_version).fetchone()
        except sqlite3.OperationalError:  # no such table: a new or unversioned registry
            return 0
        return int(row["v"])

    # -- connections -------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        # One connection per thread: the admin API and the refresher run in threads.
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(
                self.data_dir / "registry.sqlite3", timeout=30, isolation_level=None
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.row_factory = sqlite3.Row
            self._local.db = db
        return db

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        yield self._db()  # autocommit: each statement reads the latest commit

    @contextmanager
    def _changing(self, name: str) -> Iterator[Connection]:
        with open(self._locks / f"{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            with self._transaction() as db:
                yield db

    def _translate(self, exc: Exception) -> Exception | None:
        if isinstance(exc, sqlite3.Error) and (
            getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_FULL
            or "disk is full" in str(exc)
        ):
            return StorageFull()
        return super()._translate(exc)

    # -- artifacts: files in the data directory, shared by its workers ---------

    def _store(self, db: Connection, component: Path, sha256: str, blobs: Sequence[Blob]) -> None:
        # `blobs`: this node's workers share its own assets and AOT cache.
        store(component, self.artifacts / f"{sha256}.wasm")

    def _cache(self, component: Path, sha256: str) -> None:
        pass  # `_store` put it where this node's workers read it

    def _sweep(self, partial: bool) -> tuple[list[str], list[Path]]:
        # Under the write lock: a deploy stores its artifact and commits under it.
        with self._transaction() as db:
            used = {r["sha256"] for r in db.execute(SQLITE.sql.used_components)}
            removed = sweep_unused(self.artifacts, used, partial)
        return [path.stem for path in removed if path.suffix == ".wasm"], removed

    def fetch(self, key: str, target: Path) -> bool:
        return False

    def _announce(self, db: Connection) -> None:
        pass  # nothing listens: workers poll the generation, a local read

    def wait_for_change(self, timeout: float) -> bool:
        time.sleep(timeout)  # no announcements: a poll, and the token is a local read
        return True

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
