"""The embedded registry: SQLite metadata and content-addressed component files.

Layout of the data directory:
    registry.sqlite3          functions, versions, logs (WAL mode)
    artifacts/<sha256>.wasm   components, written once (temp file, fsync, rename)
    locks/<name>.lock         serialises deploys of one function across processes
"""

from __future__ import annotations

import fcntl
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .._crash import crash_point
from ._artifacts import store, sweep_unused
from ._model import (
    LOG_LINES_KEPT,
    Blob,
    FunctionNotFound,
    FunctionRecord,
    LogRecord,
    RouteConflict,
    VersionNotFound,
    VersionRecord,
)

__all__ = ["SQLiteRegistry"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS functions (
    name TEXT PRIMARY KEY,
    route TEXT NOT NULL UNIQUE,
    active_version INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    function TEXT NOT NULL,
    version INTEGER NOT NULL,
    route TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    manifest TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (function, version)
);
CREATE TABLE IF NOT EXISTS logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    function TEXT NOT NULL,
    time REAL NOT NULL,
    request_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    line TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_by_function ON logs (function, id);
CREATE TABLE IF NOT EXISTS overrides (
    function TEXT PRIMARY KEY,
    limits TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('generation', 0);
"""


class SQLiteRegistry:
    """A `Registry` in a local data directory, shared by the worker processes."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.location = str(data_dir / "registry.sqlite3")
        self.artifacts = data_dir / "artifacts"
        self._locks = data_dir / "locks"
        for directory in (self.artifacts, self._locks):
            directory.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._db().executescript(_SCHEMA)  # idempotent; runs its own transaction

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
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @contextmanager
    def _function_lock(self, name: str) -> Iterator[None]:
        with open(self._locks / f"{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    # -- writes ------------------------------------------------------------

    def deploy(
        self,
        name: str,
        route: str,
        manifest: dict[str, Any],
        component: Path,
        sha256: str,
        blobs: Sequence[Blob] = (),  # this node's workers share its own assets and cache
    ) -> VersionRecord:
        with self._function_lock(name):
            # Stored while this transaction holds the write lock, so that a delete's
            # sweep (which takes the lock too) never sees it unreferenced.
            with self._transaction() as db:
                unchanged = self._active_if_same(db, name, sha256, manifest)
                if unchanged is not None:
                    return unchanged
                self._check_route(db, name, route)
                store(component, self.artifact_path(sha256))
                crash_point("deploy:stored")
                row = db.execute(
                    "SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE function = ?",
                    (name,),
                ).fetchone()
                version = VersionRecord(
                    name,
                    row[0],
                    route,
                    sha256,
                    self.artifact_path(sha256).stat().st_size,
                    manifest,
                    time.time(),
                )
                db.execute(
                    "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        name,
                        version.version,
                        route,
                        sha256,
                        version.size,
                        json.dumps(manifest),
                        version.created_at,
                    ),
                )
                self._set_active(db, name, route, version.version)
            crash_point("deploy:committed")
            return version

    def activate(self, name: str, version: int) -> FunctionRecord:
        with self._function_lock(name), self._transaction() as db:
            record = self._version(db, name, version)
            self._check_route(db, name, record.route)
            self._set_active(db, name, record.route, version)
            crash_point("activate:uncommitted")
        crash_point("activate:committed")
        return self.function(name)

    def delete(self, name: str) -> list[str]:
        with self._function_lock(name):
            with self._transaction() as db:
                self._function_row(db, name)
                _bump_generation(db)
                db.execute("DELETE FROM functions WHERE name = ?", (name,))
                db.execute("DELETE FROM versions WHERE function = ?", (name,))
                db.execute("DELETE FROM logs WHERE function = ?", (name,))
                db.execute("DELETE FROM overrides WHERE function = ?", (name,))
                crash_point("delete:uncommitted")
            crash_point("delete:committed")
            return [path.stem for path in self.sweep(partial=False)]

    def sweep(self, partial: bool = True) -> list[Path]:
        """Remove the artifacts no version references, and half-written ones unless
        `partial` is false (another process may be writing one): what a crash
        mid-deploy or mid-delete leaves behind. The paths removed."""
        # Under the write lock: a deploy stores its artifact and commits under it.
        with self._transaction() as db:
            used = {r[0] for r in db.execute("SELECT DISTINCT sha256 FROM versions")}
            return sweep_unused(self.artifacts, used, partial)

    def set_overrides(
        self, name: str, limits: dict[str, Any], merge: bool = False
    ) -> FunctionRecord:
        with self._transaction() as db:
            self._function_row(db, name)
            _bump_generation(db)
            if merge:
                limits = {**self._overrides(db, name), **limits}
            if limits:
                db.execute(
                    "INSERT INTO overrides VALUES (?, ?) ON CONFLICT (function) DO UPDATE SET "
                    "limits = excluded.limits",
                    (name, json.dumps(limits)),
                )
            else:
                db.execute("DELETE FROM overrides WHERE function = ?", (name,))
        return self.function(name)

    def _active_if_same(
        self, db: sqlite3.Connection, name: str, sha256: str, manifest: dict[str, Any]
    ) -> VersionRecord | None:
        row = db.execute(
            "SELECT v.* FROM functions f JOIN versions v "
            "ON v.function = f.name AND v.version = f.active_version WHERE f.name = ?",
            (name,),
        ).fetchone()
        active = _version_record(row) if row else None
        return active if active and (active.sha256, active.manifest) == (sha256, manifest) else None

    def _check_route(self, db: sqlite3.Connection, name: str, route: str) -> None:
        owner = db.execute(
            "SELECT name FROM functions WHERE route = ? AND name != ?", (route, name)
        ).fetchone()
        if owner is not None:
            raise RouteConflict(route, owner[0])

    def _set_active(self, db: sqlite3.Connection, name: str, route: str, version: int) -> None:
        _bump_generation(db)
        db.execute(
            "INSERT INTO functions VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
            "route = excluded.route, active_version = excluded.active_version, "
            "updated_at = excluded.updated_at",
            (name, route, version, time.time()),
        )

    # -- reads -------------------------------------------------------------

    def functions(self) -> list[FunctionRecord]:
        db = self._db()
        names = [r[0] for r in db.execute("SELECT name FROM functions ORDER BY name")]
        return [self._function(db, n) for n in names]

    def function(self, name: str) -> FunctionRecord:
        return self._function(self._db(), name)

    def versions(self, name: str) -> list[VersionRecord]:
        db = self._db()
        self._function_row(db, name)
        rows = db.execute(
            "SELECT * FROM versions WHERE function = ? ORDER BY version", (name,)
        ).fetchall()
        return [_version_record(r) for r in rows]

    def artifact_path(self, sha256: str) -> Path:
        return self.artifacts / f"{sha256}.wasm"

    def fetch(self, key: str, target: Path) -> bool:
        return False

    def change_token(self) -> int:
        row = self._db().execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(row[0])

    def wait_for_change(self, timeout: float) -> bool:
        time.sleep(timeout)  # no announcements: a poll, and the token is a local read
        return True

    def _function(self, db: sqlite3.Connection, name: str) -> FunctionRecord:
        row = self._function_row(db, name)
        count = db.execute("SELECT COUNT(*) FROM versions WHERE function = ?", (name,))
        return FunctionRecord(
            name=name,
            route=row["route"],
            active=self._version(db, name, row["active_version"]),
            versions=count.fetchone()[0],
            updated_at=row["updated_at"],
            overrides=self._overrides(db, name),
        )

    def _overrides(self, db: sqlite3.Connection, name: str) -> dict[str, Any]:
        found = db.execute("SELECT limits FROM overrides WHERE function = ?", (name,)).fetchone()
        return json.loads(found[0]) if found else {}

    def _function_row(self, db: sqlite3.Connection, name: str) -> sqlite3.Row:
        row = db.execute("SELECT * FROM functions WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise FunctionNotFound(name)
        return row  # type: ignore[no-any-return]

    def _version(self, db: sqlite3.Connection, name: str, version: int) -> VersionRecord:
        row = db.execute(
            "SELECT * FROM versions WHERE function = ? AND version = ?", (name, version)
        ).fetchone()
        if row is None:
            self._function_row(db, name)
            raise VersionNotFound(name, version)
        return _version_record(row)

    # -- logs --------------------------------------------------------------

    def append_logs(self, records: Iterable[tuple[str, float, str, str, str]]) -> None:
        records = list(records)
        if not records:
            return
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO logs (function, time, request_id, kind, line) VALUES (?, ?, ?, ?, ?)",
                records,
            )
            for name in {r[0] for r in records}:
                db.execute(
                    "DELETE FROM logs WHERE function = ? AND id < (SELECT id FROM logs "
                    "WHERE function = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                    (name, name, LOG_LINES_KEPT - 1),
                )

    def logs(
        self, name: str, after: int = 0, limit: int = 200, request_id: str | None = None
    ) -> list[LogRecord]:
        # No index on request_id: a function keeps LOG_LINES_KEPT lines, which the
        # (function, id) index already narrows the scan to.
        rows = (
            self._db()
            .execute(
                "SELECT * FROM (SELECT * FROM logs WHERE function = ? AND id > ? "
                "AND (? IS NULL OR request_id = ?) ORDER BY id DESC LIMIT ?) ORDER BY id",
                (name, after, request_id, request_id, limit),
            )
            .fetchall()
        )
        return [LogRecord(**dict(r)) for r in rows]

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


def _bump_generation(db: sqlite3.Connection) -> None:
    db.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'")


def _version_record(row: sqlite3.Row) -> VersionRecord:
    return VersionRecord(**{**dict(row), "manifest": json.loads(row["manifest"])})
