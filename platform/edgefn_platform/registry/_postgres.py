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
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.errors import DiskFull
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from ._artifacts import store, sweep_unused
from ._model import (
    Blob,
    CorruptArtifact,
    RegistryUnavailable,
    StorageFull,
)
from ._sql import POSTGRES, migrate
from ._sql import Connection as AnyConnection
from ._store import SQLStore

__all__ = ["CHANNEL", "CONNECT", "PostgresRegistry"]

CHANNEL = "edgefn_changes"
RECHECK_SECONDS = 10.0

Connection = psycopg.Connection[DictRow]

# Advisory lock key: one gateway migrates at a time.
_MIGRATE_LOCK = 0x6564_6766_6E01
# Advisory lock key: blob sweeps (exclusive) against deploys (shared), so a sweep
# never removes a blob a deploy is about to use.
_SWEEP_LOCK = 0x6564_6766_6E02

# Blobs are stored and fetched this many bytes at a time.
_CHUNK = 4 << 20
# PostgreSQL's binary COPY format: signature, flags, header extension length.
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)

# How every connection to the database is made (the key-value stores' too).
CONNECT: dict[str, Any] = {
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


class PostgresRegistry(SQLStore):
    """A `Registry` in PostgreSQL, shared by every gateway that points at it."""

    dialect = POSTGRES

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
            with psycopg.connect(url, **CONNECT) as conn, conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
                migrate(conn, POSTGRES)
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
            kwargs=CONNECT,
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

    # -- connections -------------------------------------------------------

    @contextmanager
    def _begin(self) -> Iterator[AnyConnection]:
        with self._pool.connection() as conn, conn.transaction():
            yield conn

    def _reading(self) -> AbstractContextManager[AnyConnection]:
        return self._transaction()  # for RegistryUnavailable

    @contextmanager
    def _changing(self, name: str) -> Iterator[AnyConnection]:
        with self._transaction() as db:
            # Serialises changes to one function across every gateway, until commit.
            db.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", ("edgefn:" + name,))
            yield db

    def _translate(self, exc: Exception) -> Exception | None:
        if _lost(exc):
            return RegistryUnavailable(self._unreachable())
        if isinstance(exc, DiskFull):
            return StorageFull()
        return super()._translate(exc)

    def _announce(self, db: AnyConnection) -> None:
        db.execute("SELECT pg_notify(%s, '')", (CHANNEL,))

    # -- blobs: in the database, with local copies of components ---------------

    def _store(
        self, db: AnyConnection, component: Path, sha256: str, blobs: Sequence[Blob]
    ) -> None:
        db.execute("SELECT pg_advisory_xact_lock_shared(%s)", (_SWEEP_LOCK,))
        for blob in (Blob(f"component/{sha256}", component), *blobs):
            _put(db, blob)

    def _cache(self, component: Path, sha256: str) -> None:
        # This gateway loads it next: spare it the download.
        store(component, self.artifacts / f"{sha256}.wasm")

    def _sweep(self, partial: bool) -> tuple[list[str], list[Path]]:
        """Remove blobs no version uses, and this gateway's local copies of
        components no version uses (and half-written ones unless `partial` is false)."""
        with self._transaction() as db:
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_SWEEP_LOCK,))
            keys = [row["key"] for row in db.execute(_SWEEP)]
            used = {r["sha256"] for r in db.execute(POSTGRES.sql.used_components)}
        components = [key.split("/", 1)[1] for key in keys if key.startswith("component/")]
        return components, sweep_unused(self.artifacts, used, partial)

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

    # -- announcements -------------------------------------------------------

    def wait_for_change(self, timeout: float) -> bool:
        if self._listener is None:
            try:
                self._listener = psycopg.connect(self.url, **CONNECT)
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

    def close(self) -> None:
        self._close_listener()
        self._pool.close()


def _put(db: AnyConnection, blob: Blob) -> None:
    if db.execute("SELECT 1 FROM blobs WHERE key = %s", (blob.key,)).fetchone():
        return
    # COPY in binary format, streamed, so the worker never holds a whole artifact
    # in memory: one row of (key, size, data, sha256), the digest computed on the way.
    key, size = blob.key.encode(), blob.path.stat().st_size
    digest = hashlib.sha256()
    cursor = _psycopg(db).cursor()
    with (
        cursor.copy("COPY blobs (key, size, data, sha256) FROM STDIN (FORMAT BINARY)") as copy,
        blob.path.open("rb") as file,
    ):
        copy.write(_COPY_HEADER + struct.pack("!hi", 4, len(key)) + key)
        copy.write(struct.pack("!iqi", 8, size, size))
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
            copy.write(chunk)
        sha256 = digest.hexdigest().encode()
        copy.write(struct.pack("!i", len(sha256)) + sha256 + struct.pack("!h", -1))


def _download(db: AnyConnection, key: str, size: int, sha256: str, target: Path) -> None:
    """Write blob `key` to `target` in chunks, so a worker never holds a whole
    artifact in memory (glibc keeps such a peak for the life of the process)."""
    conn = _psycopg(db)
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(
        dir=target.parent, prefix=target.name + ".", suffix=".partial", delete=False
    ) as file:
        try:
            for offset in range(0, size, _CHUNK):
                # Binary results: bytea as text would be hex, twice the bytes to decode.
                # Uncompressed (EXTERNAL) storage lets substring read just this chunk.
                part = conn.execute(
                    "SELECT substring(data FROM %s FOR %s) AS part FROM blobs WHERE key = %s",
                    (offset + 1, _CHUNK, key),
                    binary=True,
                ).fetchone()
                if part is None:
                    raise CorruptArtifact(f"{key} was removed from the registry while fetched")
                digest.update(part["part"])
                file.write(part["part"])
            if digest.hexdigest() != sha256:
                raise CorruptArtifact(
                    f"the registry's copy of {key} is corrupt (sha256 mismatch); "
                    "deploy the function again"
                )
        except BaseException:
            Path(file.name).unlink(missing_ok=True)
            raise
    Path(file.name).replace(target)


def _psycopg(db: AnyConnection) -> Connection:
    # The shared code sees the neutral `Connection`; COPY and binary results are
    # psycopg's own.
    assert isinstance(db, psycopg.Connection)
    return db
