"""The PostgreSQL registry's schema, and the migrations that bring a database to it."""

from __future__ import annotations

import psycopg
from psycopg.rows import DictRow

from ._model import RegistryError

__all__ = ["SCHEMA_VERSION", "Connection", "migrate"]

Connection = psycopg.Connection[DictRow]

# Migrations, applied in order, each once; the schema's version is their count.
_MIGRATIONS = [
    """
    CREATE TABLE functions (
        name TEXT PRIMARY KEY,
        route TEXT NOT NULL UNIQUE,
        active_version BIGINT NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE versions (
        function TEXT NOT NULL,
        version BIGINT NOT NULL,
        route TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size BIGINT NOT NULL,
        manifest JSONB NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (function, version)
    );
    CREATE TABLE overrides (function TEXT PRIMARY KEY, limits JSONB NOT NULL);
    CREATE TABLE logs (
        id BIGSERIAL PRIMARY KEY,
        function TEXT NOT NULL,
        time DOUBLE PRECISION NOT NULL,
        request_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        line TEXT NOT NULL
    );
    CREATE INDEX logs_by_function ON logs (function, id);
    CREATE TABLE blobs (
        key TEXT PRIMARY KEY,
        sha256 TEXT NOT NULL,
        size BIGINT NOT NULL,
        data BYTEA NOT NULL
    );
    CREATE TABLE generation (value BIGINT NOT NULL);
    INSERT INTO generation VALUES (0);
    """,
    # Components are compressed already; pglz would cost seconds per deploy for nothing.
    "ALTER TABLE blobs ALTER COLUMN data SET STORAGE EXTERNAL;",
]
SCHEMA_VERSION = len(_MIGRATIONS)

# Advisory lock key: one gateway migrates at a time.
_MIGRATE_LOCK = 0x6564_6766_6E01


def migrate(conn: Connection, upto: int = SCHEMA_VERSION) -> int:
    """Bring the schema to version `upto`; idempotent, and safe for gateways
    starting together (one migrates, the others wait and find nothing to do)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS edgefn_schema (version INTEGER NOT NULL)")
        row = conn.execute("SELECT COALESCE(MAX(version), 0) AS v FROM edgefn_schema").fetchone()
        current = int(row["v"]) if row else 0
        if current > SCHEMA_VERSION:
            raise RegistryError(
                f"the database's registry schema is version {current}, newer than this "
                f"gateway knows ({SCHEMA_VERSION}): upgrade the gateway"
            )
        for number in range(current + 1, upto + 1):
            conn.execute(_MIGRATIONS[number - 1].encode())
            conn.execute("INSERT INTO edgefn_schema VALUES (%s)", (number,))
        return max(current, upto)
