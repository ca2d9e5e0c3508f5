"""The shared registry: PostgreSQL, for many gateways behind one load balancer.

Everything a gateway needs to serve a version is in the database: functions,
versions, limit overrides, logs, and blobs (components, assets archives and
compiled artifacts, by key). Each gateway keeps local copies of components in
`<data_dir>/artifacts`, fetched on first use and verified by sha256.

Every change bumps a generation counter and sends `NOTIFY edgefn_changes` in
its own transaction. Gateways LISTEN, and also compare the counter after
reconnecting and every `RECHECK_SECONDS`, so a missed announcement can delay a
change but never lose it.
"""

from __future__ import annotations

import fcntl
import hashlib
import struct
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from .._crash import crash_point
from ._artifacts import store, sweep_unused
from ._model import (
    LOG_LINES_KEPT,
    Blob,
    FunctionNotFound,
    FunctionRecord,
    LogRecord,
    RegistryError,
    RegistryUnavailable,
    RouteConflict,
    VersionNotFound,
    VersionRecord,
)
from ._postgres_schema import Connection, migrate

__all__ = ["CHANNEL", "PostgresRegistry"]

CHANNEL = "edgefn_changes"
RECHECK_SECONDS = 10.0

# Advisory lock key: blob sweeps (exclusive) against deploys (shared), so a sweep
# never removes a blob a deploy is about to use.
_SWEEP_LOCK = 0x6564_6766_6E02

# Blobs are stored and fetched this many bytes at a time.
_CHUNK = 4 << 20
# PostgreSQL's binary COPY format: signature, flags, header extension length.
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)

_CONNECT: dict[str, Any] = {
    "autocommit": True,
    "row_factory": dict_row,
    "connect_timeout": 3,
    # Notice a vanished server within seconds, not at the kernel's two hours.
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 2,
}

_SWEEP = """
DELETE FROM blobs b WHERE NOT EXISTS (
    SELECT 1 FROM versions v
    WHERE b.key IN ('component/' || v.sha256, 'assets/' || (v.manifest ->> 'assets_sha256'))
       OR b.key LIKE 'compiled/' || v.sha256 || '-%'
) RETURNING key
"""


def _lost(exc: BaseException) -> bool:
    """Whether `exc` means the database is unreachable (not a refused statement)."""
    if isinstance(exc, PoolTimeout):
        return True
    # Class 08: connection exceptions; 57: the server shutting down.
    return isinstance(exc, psycopg.OperationalError) and (
        exc.sqlstate is None or exc.sqlstate[:2] in ("08", "57")
    )


class PostgresRegistry:
    """A `Registry` in PostgreSQL, shared by every gateway that points at it."""

    def __init__(self, url: str, data_dir: Path, pool_size: int = 8) -> None:
        self.url = url
        self.data_dir = data_dir
        self.artifacts = data_dir / "artifacts"
        self.artifacts.mkdir(parents=True, exist_ok=True)
        self._locks = data_dir / "locks"
        info = conninfo_to_dict(url)
        where = f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"
        self.location = f"PostgreSQL at {where}"
        # Connect once directly, so that a wrong URL, user or password is reported
        # as such at start instead of as a pool timeout.
        try:
            with psycopg.connect(url, **_CONNECT) as conn:
                migrate(conn)
        except psycopg.OperationalError as exc:
            reason = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            raise RegistryUnavailable(
                f"cannot connect to the registry ({self.location}): {reason}"
            ) from None
        self._pool: ConnectionPool[Connection] = ConnectionPool(
            url,
            connection_class=Connection,
            min_size=1,
            max_size=pool_size,
            kwargs=_CONNECT,
            check=ConnectionPool.check_connection,
            timeout=5.0,
            # Give up a reconnection after 2 s, so the next request retries at once:
            # the pool's own retries back off exponentially (1, 2, 4 ... s), which
            # would keep deploys failing long after the database is back.
            reconnect_timeout=2.0,
            open=False,
            name="edgefn-registry",
        )
        self._pool.open(wait=False)
        self._listener: Connection | None = None
        self._checked = 0.0

    def _unreachable(self) -> str:
        return (
            f"the registry ({self.location}) cannot be reached; functions already loaded "
            "keep serving; retry when it is back"
        )

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        try:
            with self._pool.connection() as conn, conn.transaction():
                yield conn
        except Exception as exc:
            if _lost(exc):
                raise RegistryUnavailable(self._unreachable()) from exc
            raise

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
        with self._transaction() as db:
            _lock_function(db, name)
            unchanged = _active_if_same(db, name, sha256, manifest)
            if unchanged is not None:
                return unchanged
            db.execute("SELECT pg_advisory_xact_lock_shared(%s)", (_SWEEP_LOCK,))
            _check_route(db, name, route)
            self._put(db, Blob(f"component/{sha256}", component))
            for blob in blobs:
                self._put(db, blob)
            crash_point("deploy:stored")
            row = db.execute(
                "SELECT COALESCE(MAX(version), 0) + 1 AS v FROM versions WHERE function = %s",
                (name,),
            ).fetchone()
            assert row is not None
            size = component.stat().st_size
            version = VersionRecord(name, row["v"], route, sha256, size, manifest, time.time())
            db.execute(
                "INSERT INTO versions VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (name, version.version, route, sha256, size, Jsonb(manifest), version.created_at),
            )
            _set_active(db, name, route, version.version)
        crash_point("deploy:committed")
        # This gateway loads it next: spare it the download.
        store(component, self.artifacts / f"{sha256}.wasm")
        return version

    def activate(self, name: str, version: int) -> FunctionRecord:
        with self._transaction() as db:
            _lock_function(db, name)
            record = _version(db, name, version)
            _check_route(db, name, record.route)
            _set_active(db, name, record.route, version)
            crash_point("activate:uncommitted")
        crash_point("activate:committed")
        return self.function(name)

    def delete(self, name: str) -> list[str]:
        with self._transaction() as db:
            _lock_function(db, name)
            _function_row(db, name)
            for table, column in [
                ("functions", "name"),
                ("versions", "function"),
                ("logs", "function"),
                ("overrides", "function"),
            ]:
                db.execute(f"DELETE FROM {table} WHERE {column} = %s", (name,))
            _announce(db)
            crash_point("delete:uncommitted")
        crash_point("delete:committed")
        keys, _ = self._sweep(partial=False)
        return [key.split("/", 1)[1] for key in keys if key.startswith("component/")]

    def sweep(self, partial: bool = True) -> list[Path]:
        """Remove blobs no version uses, and this gateway's local copies of
        components no version uses (and half-written ones unless `partial` is false)."""
        return self._sweep(partial)[1]

    def _sweep(self, partial: bool) -> tuple[list[str], list[Path]]:
        with self._transaction() as db:
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_SWEEP_LOCK,))
            keys = [row["key"] for row in db.execute(_SWEEP)]
            used = {r["sha256"] for r in db.execute("SELECT DISTINCT sha256 FROM versions")}
        return keys, sweep_unused(self.artifacts, used, partial)

    def set_overrides(
        self, name: str, limits: dict[str, Any], merge: bool = False
    ) -> FunctionRecord:
        with self._transaction() as db:
            _lock_function(db, name)
            _function_row(db, name)
            if merge:
                limits = {**_overrides(db, name), **limits}
            db.execute("DELETE FROM overrides WHERE function = %s", (name,))
            if limits:
                db.execute("INSERT INTO overrides VALUES (%s, %s)", (name, Jsonb(limits)))
            _announce(db)
        return self.function(name)

    def _put(self, db: Connection, blob: Blob) -> None:
        if db.execute("SELECT 1 FROM blobs WHERE key = %s", (blob.key,)).fetchone():
            return
        # COPY in binary format, streamed, so the worker never holds a whole artifact
        # in memory: one row of (key, size, data, sha256), the digest computed on the way.
        key, size = blob.key.encode(), blob.path.stat().st_size
        digest = hashlib.sha256()
        with (
            db.cursor().copy(
                "COPY blobs (key, size, data, sha256) FROM STDIN (FORMAT BINARY)"
            ) as copy,
            blob.path.open("rb") as file,
        ):
            copy.write(_COPY_HEADER + struct.pack("!hi", 4, len(key)) + key)
            copy.write(struct.pack("!iqi", 8, size, size))
            while chunk := file.read(_CHUNK):
                digest.update(chunk)
                copy.write(chunk)
            sha256 = digest.hexdigest().encode()
            copy.write(struct.pack("!i", len(sha256)) + sha256 + struct.pack("!h", -1))

    # -- reads -------------------------------------------------------------

    def functions(self) -> list[FunctionRecord]:
        with self._transaction() as db:
            names = [r["name"] for r in db.execute("SELECT name FROM functions ORDER BY name")]
            return [_function(db, name) for name in names]

    def function(self, name: str) -> FunctionRecord:
        with self._transaction() as db:
            return _function(db, name)

    def versions(self, name: str) -> list[VersionRecord]:
        with self._transaction() as db:
            _function_row(db, name)
            rows = db.execute(
                "SELECT * FROM versions WHERE function = %s ORDER BY version", (name,)
            ).fetchall()
        return [_version_record(row) for row in rows]

    def artifact_path(self, sha256: str) -> Path:
        path = self.artifacts / f"{sha256}.wasm"
        if not path.exists() and not self.fetch(f"component/{sha256}", path):
            raise RegistryError(f"the registry has no component with sha256 {sha256}")
        return path

    def fetch(self, key: str, target: Path) -> bool:
        # One download per gateway: its other workers wait, then find the file.
        self._locks.mkdir(exist_ok=True)
        lock_name = hashlib.sha256(str(target).encode()).hexdigest()[:32]
        with open(self._locks / lock_name, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if target.exists():
                return True
            with self._transaction() as db:
                row = db.execute("SELECT sha256, size FROM blobs WHERE key = %s", (key,)).fetchone()
                if row is None:
                    return False
                _download(db, key, row["size"], row["sha256"], target)
            return True

    def change_token(self) -> int:
        with self._transaction() as db:
            row = db.execute("SELECT value FROM generation").fetchone()
        assert row is not None
        return int(row["value"])

    def wait_for_change(self, timeout: float) -> bool:
        if self._listener is None:
            try:
                self._listener = psycopg.connect(self.url, **_CONNECT)
                self._listener.execute(f"LISTEN {CHANNEL}")
            except psycopg.OperationalError as exc:
                self._close_listener()
                raise RegistryUnavailable(self._unreachable()) from exc
            # Announcements may have been missed while not listening: re-read.
            self._checked = time.monotonic()
            return True
        try:
            announced = any(True for _ in self._listener.notifies(timeout=timeout, stop_after=1))
        except psycopg.OperationalError as exc:
            self._close_listener()
            raise RegistryUnavailable(self._unreachable()) from exc
        if announced or time.monotonic() - self._checked >= RECHECK_SECONDS:
            self._checked = time.monotonic()
            return True
        return False

    def _close_listener(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    # -- logs --------------------------------------------------------------

    def append_logs(self, records: Iterable[tuple[str, float, str, str, str]]) -> None:
        records = list(records)
        if not records:
            return
        with self._transaction() as db:
            with db.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO logs (function, time, request_id, kind, line) "
                    "VALUES (%s, %s, %s, %s, %s)",
                    records,
                )
            for name in {r[0] for r in records}:
                db.execute(
                    "DELETE FROM logs WHERE function = %s AND id < (SELECT id FROM logs "
                    "WHERE function = %s ORDER BY id DESC LIMIT 1 OFFSET %s)",
                    (name, name, LOG_LINES_KEPT - 1),
                )

    def logs(
        self, name: str, after: int = 0, limit: int = 200, request_id: str | None = None
    ) -> list[LogRecord]:
        # No index on request_id: a function keeps LOG_LINES_KEPT lines, which the
        # (function, id) index already narrows the scan to.
        with self._transaction() as db:
            rows = db.execute(
                "SELECT * FROM (SELECT * FROM logs WHERE function = %s AND id > %s "
                "AND (%s::text IS NULL OR request_id = %s) ORDER BY id DESC LIMIT %s) newest "
                "ORDER BY id",
                (name, after, request_id, request_id, limit),
            ).fetchall()
        return [LogRecord(**r) for r in rows]

    def close(self) -> None:
        self._close_listener()
        self._pool.close()


def _lock_function(db: Connection, name: str) -> None:
    # Serialises changes to one function across every gateway, until commit.
    db.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", ("edgefn:" + name,))


def _announce(db: Connection) -> None:
    db.execute("UPDATE generation SET value = value + 1")
    db.execute("SELECT pg_notify(%s, '')", (CHANNEL,))


def _active_if_same(
    db: Connection, name: str, sha256: str, manifest: dict[str, Any]
) -> VersionRecord | None:
    row = db.execute(
        "SELECT v.* FROM functions f JOIN versions v "
        "ON v.function = f.name AND v.version = f.active_version WHERE f.name = %s",
        (name,),
    ).fetchone()
    active = _version_record(row) if row else None
    return active if active and (active.sha256, active.manifest) == (sha256, manifest) else None


def _check_route(db: Connection, name: str, route: str) -> None:
    owner = db.execute(
        "SELECT name FROM functions WHERE route = %s AND name != %s", (route, name)
    ).fetchone()
    if owner is not None:
        raise RouteConflict(route, owner["name"])


def _set_active(db: Connection, name: str, route: str, version: int) -> None:
    _announce(db)
    db.execute(
        "INSERT INTO functions VALUES (%s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET "
        "route = excluded.route, active_version = excluded.active_version, "
        "updated_at = excluded.updated_at",
        (name, route, version, time.time()),
    )


def _function(db: Connection, name: str) -> FunctionRecord:
    row = _function_row(db, name)
    count = db.execute("SELECT COUNT(*) AS n FROM versions WHERE function = %s", (name,))
    return FunctionRecord(
        name=name,
        route=row["route"],
        active=_version(db, name, row["active_version"]),
        versions=count.fetchone()["n"],  # type: ignore[index]
        updated_at=row["updated_at"],
        overrides=_overrides(db, name),
    )


def _overrides(db: Connection, name: str) -> dict[str, Any]:
    found = db.execute("SELECT limits FROM overrides WHERE function = %s", (name,)).fetchone()
    return found["limits"] if found else {}


def _function_row(db: Connection, name: str) -> DictRow:
    row = db.execute("SELECT * FROM functions WHERE name = %s", (name,)).fetchone()
    if row is None:
        raise FunctionNotFound(name)
    return row


def _version(db: Connection, name: str, version: int) -> VersionRecord:
    row = db.execute(
        "SELECT * FROM versions WHERE function = %s AND version = %s", (name, version)
    ).fetchone()
    if row is None:
        _function_row(db, name)
        raise VersionNotFound(name, version)
    return _version_record(row)


def _version_record(row: DictRow) -> VersionRecord:
    return VersionRecord(**row)


def _download(db: Connection, key: str, size: int, sha256: str, target: Path) -> None:
    """Write blob `key` to `target` in chunks, so a worker never holds a whole
    artifact in memory (glibc keeps such a peak for the life of the process)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(
        dir=target.parent, prefix=target.name + ".", suffix=".partial", delete=False
    ) as file:
        try:
            for offset in range(0, size, _CHUNK):
                # Binary results: bytea as text would be hex, twice the bytes to decode.
                # Uncompressed (EXTERNAL) storage lets substring read just this chunk.
                part = db.execute(
                    "SELECT substring(data FROM %s FOR %s) AS part FROM blobs WHERE key = %s",
                    (offset + 1, _CHUNK, key),
                    binary=True,
                ).fetchone()
                if part is None:
                    raise RegistryError(f"{key} was removed from the registry while fetched")
                digest.update(part["part"])
                file.write(part["part"])
            if digest.hexdigest() != sha256:
                raise RegistryError(f"the registry's copy of {key} is corrupt (sha256 mismatch)")
        except BaseException:
            Path(file.name).unlink(missing_ok=True)
            raise
    Path(file.name).replace(target)
