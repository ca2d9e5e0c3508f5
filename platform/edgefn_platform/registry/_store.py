"""The registry's logic, once for both backends: `SQLStore` implements `Registry`
over `_sql`'s statements; a backend supplies its connections, its locking, where it
keeps components, how it announces changes and how its driver says "full"."""

from __future__ import annotations

import errno
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from .._crash import crash_point
from ._model import (
    LOG_LINES_KEPT,
    PURGES_KEPT,
    Blob,
    CorruptArtifact,
    FunctionNotFound,
    FunctionRecord,
    LogRecord,
    RouteConflict,
    SecretRecord,
    StorageFull,
    VersionNotFound,
    VersionRecord,
    check_prefix,
)
from ._sql import Connection, Dialect

__all__ = ["SQLStore"]


class SQLStore(ABC):
    """A `Registry` over one SQL database; subclasses supply what differs."""

    dialect: Dialect
    location: str
    artifacts: Path  # this node's component files, `<sha256>.wasm`

    # -- what a backend supplies --------------------------------------------

    @abstractmethod
    def _begin(self) -> AbstractContextManager[Connection]:
        """A write transaction, committed when the block ends without an error."""

    @abstractmethod
    def _reading(self) -> AbstractContextManager[Connection]:
        """A connection to read from (`_transaction()` where reads need translating)."""

    @abstractmethod
    def _changing(self, name: str) -> AbstractContextManager[Connection]:
        """A `_transaction()` that also serialises changes to function `name`."""

    @abstractmethod
    def _store(self, db: Connection, component: Path, sha256: str, blobs: Sequence[Blob]) -> None:
        """Store a deploy's artifacts, within its transaction."""

    @abstractmethod
    def _sweep(self, partial: bool) -> tuple[list[str], list[Path]]:
        """Remove what no version uses: the sha256 of the components removed, and
        the local files removed."""

    @abstractmethod
    def fetch(self, key: str, target: Path) -> bool: ...

    @abstractmethod
    def wait_for_change(self, timeout: float) -> bool: ...

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def _cache(self, component: Path, sha256: str) -> None:
        """After a deploy committed: keep a local copy, where the store is elsewhere."""

    @abstractmethod
    def _announce(self, db: Connection) -> None:
        """Tell the other gateways, within the change's transaction, that it happened."""

    def _translate(self, exc: Exception) -> Exception | None:
        """The registry error a driver's exception means, if any."""
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return StorageFull()
        return None

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        try:
            with self._begin() as db:
                yield db
        except Exception as exc:
            translated = self._translate(exc)
            if translated is None:
                raise
            raise translated from exc

    # -- writes ------------------------------------------------------------

    def deploy(
        self,
        name: str,
        route: str,
        manifest: dict[str, Any],
        component: Path,
        sha256: str,
        blobs: Sequence[Blob] = (),
    ) -> VersionRecord:
        sql = self.dialect.sql
        with self._changing(name) as db:
            unchanged = self._active_if_same(db, name, sha256, manifest)
            if unchanged is not None:
                return unchanged
            self._check_route(db, name, route)
            # Stored within the transaction, so that a delete's sweep (which takes
            # the same lock) never sees it unreferenced.
            self._store(db, component, sha256, blobs)
            crash_point("deploy:stored")
            number = db.execute(sql.next_version, (name,)).fetchone()["v"]
            if number == 1:
                for statement in sql.clear_state:
                    db.execute(statement, (name,))
            size = component.stat().st_size
            version = VersionRecord(name, number, route, sha256, size, manifest, time.time())
            db.execute(
                sql.insert_version,
                (name, number, route, sha256, size, json.dumps(manifest), version.created_at),
            )
            self._set_active(db, name, route, number)
        crash_point("deploy:committed")
        self._cache(component, sha256)
        return version

    def activate(self, name: str, version: int) -> FunctionRecord:
        with self._changing(name) as db:
            record = self._version(db, name, version)
            self._check_route(db, name, record.route)
            self._set_active(db, name, record.route, version)
            crash_point("activate:uncommitted")
        crash_point("activate:committed")
        return self.function(name)

    def delete(self, name: str) -> list[str]:
        with self._changing(name) as db:
            self._function_row(db, name)
            for statement in self.dialect.sql.delete_function:
                db.execute(statement, (name,))
            self._changed(db)
            crash_point("delete:uncommitted")
        crash_point("delete:committed")
        return self._sweep(partial=False)[0]

    def sweep(self, partial: bool = True) -> list[Path]:
        """Remove stored artifacts no version uses, and half-written ones unless
        `partial` is false (another process may be writing one): what a crash
        mid-deploy or mid-delete leaves behind. The local paths removed."""
        return self._sweep(partial)[1]

    def set_overrides(
        self, name: str, limits: dict[str, Any], merge: bool = False
    ) -> FunctionRecord:
        sql = self.dialect.sql
        with self._changing(name) as db:
            self._function_row(db, name)
            if merge:
                limits = {**self._overrides(db, name), **limits}
            if limits:
                db.execute(sql.set_overrides, (name, json.dumps(limits)))
            else:
                db.execute(sql.delete_overrides, (name,))
            self._changed(db)
        return self.function(name)

    def purge(self, name: str, prefix: str = "/") -> float:
        check_prefix(prefix)
        sql = self.dialect.sql
        with self._changing(name) as db:
            self._function_row(db, name)
            # Never before the function's latest purge: a gateway whose clock is
            # behind must not move a purge back in time (and bring back what it
            # removed, a purge of "/" deleting the ones before it).
            latest = db.execute(sql.latest_purge, (name,)).fetchone()["at"]
            at = max(time.time(), latest or 0.0)
            if prefix == "/":
                db.execute(sql.delete_purges, (name,))  # all of them, covered by this one
            db.execute(sql.insert_purge, (name, prefix, at))
            if db.execute(sql.purge_count, (name,)).fetchone()["n"] > PURGES_KEPT:
                # Bounded: each lookup of the function's entries checks every purge.
                # Purging everything as of now covers every purge before it.
                db.execute(sql.delete_purges, (name,))
                db.execute(sql.insert_purge, (name, "/", at))
            self._changed(db)
        return at

    def set_secret(self, function: str, name: str, value: bytes) -> float:
        with self._changing(function) as db:
            at = time.time()
            db.execute(self.dialect.sql.set_secret, (function, name, value, at))
            self._changed(db)
        return at

    def delete_secret(self, function: str, name: str) -> bool:
        sql = self.dialect.sql
        with self._changing(function) as db:
            found = any(r["name"] == name for r in db.execute(sql.secrets_of, (function,)))
            if found:
                db.execute(sql.delete_secret, (function, name))
                self._changed(db)
        return found

    def reencrypt_secrets(self, transform: Callable[[bytes], bytes]) -> int:
        sql = self.dialect.sql
        with self._transaction() as db:
            rows = [_secret_record(r) for r in db.execute(sql.all_secrets).fetchall()]
            for row in rows:
                db.execute(
                    sql.update_secret, (transform(row.value), row.function, row.name, row.value)
                )
            self._changed(db)
        return len(rows)

    def secrets(self, function: str | None = None) -> list[SecretRecord]:
        sql = self.dialect.sql
        with self._reading() as db:
            if function is None:
                rows = db.execute(sql.all_secrets).fetchall()
            else:
                rows = db.execute(sql.secrets_of, (function,)).fetchall()
        return [_secret_record(r) for r in rows]

    def _changed(self, db: Connection) -> None:
        db.execute(self.dialect.sql.bump_generation)
        self._announce(db)

    def _active_if_same(
        self, db: Connection, name: str, sha256: str, manifest: dict[str, Any]
    ) -> VersionRecord | None:
        row = db.execute(self.dialect.sql.active_version, (name,)).fetchone()
        active = _version_record(row) if row else None
        return active if active and (active.sha256, active.manifest) == (sha256, manifest) else None

    def _check_route(self, db: Connection, name: str, route: str) -> None:
        owner = db.execute(self.dialect.sql.route_owner, (route, name)).fetchone()
        if owner is not None:
            raise RouteConflict(route, owner["name"])

    def _set_active(self, db: Connection, name: str, route: str, version: int) -> None:
        self._changed(db)
        db.execute(self.dialect.sql.set_active, (name, route, version, time.time()))

    # -- reads -------------------------------------------------------------

    def functions(self) -> list[FunctionRecord]:
        with self._reading() as db:
            names = [r["name"] for r in db.execute(self.dialect.sql.function_names)]
            return [self._function(db, name) for name in names]

    def function(self, name: str) -> FunctionRecord:
        with self._reading() as db:
            return self._function(db, name)

    def versions(self, name: str) -> list[VersionRecord]:
        with self._reading() as db:
            self._function_row(db, name)
            rows = db.execute(self.dialect.sql.versions, (name,)).fetchall()
        return [_version_record(row) for row in rows]

    def artifact_path(self, sha256: str) -> Path:
        path = self.artifacts / f"{sha256}.wasm"
        if not path.exists() and not self.fetch(f"component/{sha256}", path):
            raise CorruptArtifact(f"the registry has no component with sha256 {sha256}")
        return path

    def change_token(self) -> int:
        with self._reading() as db:
            return int(db.execute(self.dialect.sql.generation).fetchone()["value"])

    def purges(self) -> dict[str, list[tuple[str, float]]]:
        found: dict[str, list[tuple[str, float]]] = {}
        with self._reading() as db:
            for row in db.execute(self.dialect.sql.purges):
                found.setdefault(row["function"], []).append((row["prefix"], row["purged_at"]))
        return found

    def _function(self, db: Connection, name: str) -> FunctionRecord:
        row = self._function_row(db, name)
        count = db.execute(self.dialect.sql.version_count, (name,)).fetchone()
        return FunctionRecord(
            name=name,
            route=row["route"],
            active=self._version(db, name, row["active_version"]),
            versions=count["n"],
            updated_at=row["updated_at"],
            overrides=self._overrides(db, name),
        )

    def _overrides(self, db: Connection, name: str) -> dict[str, Any]:
        found = db.execute(self.dialect.sql.overrides, (name,)).fetchone()
        return _json(found["limits"]) if found else {}

    def _function_row(self, db: Connection, name: str) -> Any:
        row = db.execute(self.dialect.sql.function, (name,)).fetchone()
        if row is None:
            raise FunctionNotFound(name)
        return row

    def _version(self, db: Connection, name: str, version: int) -> VersionRecord:
        row = db.execute(self.dialect.sql.version, (name, version)).fetchone()
        if row is None:
            self._function_row(db, name)
            raise VersionNotFound(name, version)
        return _version_record(row)

    # -- logs --------------------------------------------------------------

    def append_logs(self, records: Iterable[tuple[str, float, str, str, str]]) -> None:
        records = list(records)
        if not records:
            return
        sql = self.dialect.sql
        with self._transaction() as db:
            db.cursor().executemany(sql.insert_log, records)
            for name in {r[0] for r in records}:
                db.execute(sql.trim_logs, (name, name, LOG_LINES_KEPT - 1))

    def logs(
        self, name: str, after: int = 0, limit: int = 200, request_id: str | None = None
    ) -> list[LogRecord]:
        with self._reading() as db:
            rows = db.execute(
                self.dialect.sql.logs, (name, after, request_id, request_id, limit)
            ).fetchall()
        return [LogRecord(**dict(row)) for row in rows]


def _json(value: Any) -> Any:
    # SQLite keeps JSON as text; PostgreSQL's JSONB arrives decoded.
    return json.loads(value) if isinstance(value, str) else value


def _secret_record(row: Any) -> SecretRecord:
    # PostgreSQL's BYTEA may arrive as a memoryview.
    return SecretRecord(row["function"], row["name"], bytes(row["value"]), row["set_at"])


def _version_record(row: Any) -> VersionRecord:
    return VersionRecord(**{**dict(row), "manifest": _json(row["manifest"])})
