"""The registry's SQL, written once for both backends: its statements, its schema as
one numbered list of migrations, and the function that applies them.

Statements are written with `?` placeholders (SQLite's); `Dialect.sql` gives them
with the backend's own. What only one backend does (PostgreSQL's blobs, advisory
locks and NOTIFY) stays in that backend's module.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any, Literal, Protocol

from ._model import RegistryError

__all__ = [
    "MIGRATIONS",
    "POSTGRES",
    "SCHEMA_VERSION",
    "SQLITE",
    "Connection",
    "Dialect",
    "Migration",
    "Statements",
    "migrate",
]


class Rows(Protocol):
    """What a DB-API cursor returns that the registry reads: rows by column name."""

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Cursor(Protocol):
    def executemany(self, sql: str, rows: Iterable[Sequence[Any]], /) -> object: ...


class Connection(Protocol):
    """The part of `sqlite3.Connection` and `psycopg.Connection` the shared code uses."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Rows: ...

    def cursor(self) -> Cursor: ...


@dataclass(frozen=True)
class Statements:
    """Every statement both backends run, with SQLite's `?` placeholders."""

    # -- writes
    active_version: str = (
        "SELECT v.* FROM functions f JOIN versions v "
        "ON v.function = f.name AND v.version = f.active_version WHERE f.name = ?"
    )
    route_owner: str = "SELECT name FROM functions WHERE route = ? AND name != ?"
    next_version: str = "SELECT COALESCE(MAX(version), 0) + 1 AS v FROM versions WHERE function = ?"
    insert_version: str = "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?)"
    set_active: str = (
        "INSERT INTO functions VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
        "route = excluded.route, active_version = excluded.active_version, "
        "updated_at = excluded.updated_at"
    )
    bump_generation: str = "UPDATE generation SET value = value + 1"
    delete_function: tuple[str, ...] = (
        "DELETE FROM functions WHERE name = ?",
        "DELETE FROM versions WHERE function = ?",
        "DELETE FROM logs WHERE function = ?",
        "DELETE FROM overrides WHERE function = ?",
        "DELETE FROM purges WHERE function = ?",
        "DELETE FROM kv WHERE function = ?",
        "DELETE FROM kv_usage WHERE function = ?",
        "DELETE FROM secrets WHERE function = ?",
    )
    # A function made (again): rows a request of its predecessor wrote after the
    # delete (it was still running) are not its to read.
    clear_state: tuple[str, ...] = (
        "DELETE FROM kv WHERE function = ?",
        "DELETE FROM kv_usage WHERE function = ?",
    )
    set_overrides: str = (
        "INSERT INTO overrides VALUES (?, ?) ON CONFLICT (function) DO UPDATE SET "
        "limits = excluded.limits"
    )
    delete_overrides: str = "DELETE FROM overrides WHERE function = ?"
    used_components: str = "SELECT DISTINCT sha256 FROM versions"
    # -- purges
    insert_purge: str = (
        "INSERT INTO purges VALUES (?, ?, ?) ON CONFLICT (function, prefix) DO UPDATE SET "
        "purged_at = excluded.purged_at"
    )
    delete_purges: str = "DELETE FROM purges WHERE function = ?"
    purge_count: str = "SELECT COUNT(*) AS n FROM purges WHERE function = ?"
    latest_purge: str = "SELECT MAX(purged_at) AS at FROM purges WHERE function = ?"
    purges: str = "SELECT function, prefix, purged_at FROM purges ORDER BY function, prefix"
    # -- secrets (values are Fernet tokens)
    set_secret: str = (
        "INSERT INTO secrets VALUES (?, ?, ?, ?) ON CONFLICT (function, name) DO UPDATE SET "
        "value = excluded.value, set_at = excluded.set_at"
    )
    delete_secret: str = "DELETE FROM secrets WHERE function = ? AND name = ?"
    # Only if unchanged since it was read: a set during a rotation wins.
    update_secret: str = (
        "UPDATE secrets SET value = ? WHERE function = ? AND name = ? AND value = ?"
    )
    all_secrets: str = "SELECT * FROM secrets ORDER BY function, name"
    secrets_of: str = "SELECT * FROM secrets WHERE function = ? ORDER BY name"
    # -- reads
    function_names: str = "SELECT name FROM functions ORDER BY name"
    function: str = "SELECT * FROM functions WHERE name = ?"
    version_count: str = "SELECT COUNT(*) AS n FROM versions WHERE function = ?"
    version: str = "SELECT * FROM versions WHERE function = ? AND version = ?"
    versions: str = "SELECT * FROM versions WHERE function = ? ORDER BY version"
    overrides: str = "SELECT limits FROM overrides WHERE function = ?"
    generation: str = "SELECT value FROM generation"
    # -- logs
    insert_log: str = (
        "INSERT INTO logs (function, time, request_id, kind, line) VALUES (?, ?, ?, ?, ?)"
    )
    trim_logs: str = (
        "DELETE FROM logs WHERE function = ? AND id < (SELECT id FROM logs "
        "WHERE function = ? ORDER BY id DESC LIMIT 1 OFFSET ?)"
    )
    # No index on request_id: a function keeps LOG_LINES_KEPT lines, which the
    # (function, id) index already narrows the scan to. The CAST types the NULL for
    # PostgreSQL, which cannot infer a parameter's type from `IS NULL`.
    logs: str = (
        "SELECT * FROM (SELECT * FROM logs WHERE function = ? AND id > ? "
        "AND (CAST(? AS TEXT) IS NULL OR request_id = ?) ORDER BY id DESC LIMIT ?) newest "
        "ORDER BY id"
    )
    # -- schema
    create_schema_table: str = "CREATE TABLE IF NOT EXISTS edgefn_schema (version INTEGER NOT NULL)"
    schema_version: str = "SELECT COALESCE(MAX(version), 0) AS v FROM edgefn_schema"
    record_version: str = "INSERT INTO edgefn_schema VALUES (?)"

    def with_placeholder(self, mark: str) -> Statements:
        def convert(value: Any) -> Any:
            if isinstance(value, tuple):
                return tuple(convert(v) for v in value)
            return value.replace("?", mark)

        return Statements(**{f.name: convert(getattr(self, f.name)) for f in fields(self)})


@dataclass(frozen=True)
class Dialect:
    """What differs between the backends' SQL: placeholders and column types."""

    name: Literal["sqlite", "postgres"]
    placeholder: str
    # Column types of the migrations' `{integer}`, `{real}`, `{json}`, `{bytes}`,
    # the logs' `{id}` (an autoincrementing primary key) and `{bytewise}` (text
    # ordered by its UTF-8 bytes, whatever the database's locale).
    types: dict[str, str] = field(hash=False)

    @cached_property
    def sql(self) -> Statements:
        return Statements().with_placeholder(self.placeholder)


SQLITE = Dialect(
    "sqlite",
    "?",
    {
        "integer": "INTEGER",
        "real": "REAL",
        "json": "TEXT",
        "bytes": "BLOB",
        "id": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "bytewise": "TEXT",  # SQLite compares TEXT as bytes already
    },
)
POSTGRES = Dialect(
    "postgres",
    "%s",
    {
        "integer": "BIGINT",
        "real": "DOUBLE PRECISION",
        "json": "JSONB",
        "bytes": "BYTEA",
        "id": "BIGSERIAL PRIMARY KEY",
        "bytewise": 'TEXT COLLATE "C"',
    },
)


@dataclass(frozen=True)
class Migration:
    """One step of the schema, one version number on both backends: `sql` for
    both, or what each runs where they differ (`""`: nothing)."""

    sql: str = ""
    sqlite: str | None = None
    postgres: str | None = None

    def statements(self, dialect: Dialect) -> list[str]:
        own = self.sqlite if dialect.name == "sqlite" else self.postgres
        text = (self.sql if own is None else own).format(**dialect.types)
        return [s.strip() for s in text.split(";") if s.strip()]


# Applied in order, each once; the schema's version is their count. Never edit one
# that has shipped: add the next. `IF NOT EXISTS` in the first lets it adopt the
# SQLite registries made before versioning (they had these tables but no
# `edgefn_schema`); PostgreSQL's were at version 2 already.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        """
        CREATE TABLE IF NOT EXISTS functions (
            name TEXT PRIMARY KEY,
            route TEXT NOT NULL UNIQUE,
            active_version {integer} NOT NULL,
            updated_at {real} NOT NULL
        );
        CREATE TABLE IF NOT EXISTS versions (
            function TEXT NOT NULL,
            version {integer} NOT NULL,
            route TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            size {integer} NOT NULL,
            manifest {json} NOT NULL,
            created_at {real} NOT NULL,
            PRIMARY KEY (function, version)
        );
        CREATE TABLE IF NOT EXISTS overrides (function TEXT PRIMARY KEY, limits {json} NOT NULL);
        CREATE TABLE IF NOT EXISTS logs (
            id {id},
            function TEXT NOT NULL,
            time {real} NOT NULL,
            request_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            line TEXT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS logs_by_function ON logs (function, id);
        CREATE TABLE IF NOT EXISTS blobs (
            key TEXT PRIMARY KEY,
            sha256 TEXT NOT NULL,
            size {integer} NOT NULL,
            data {bytes} NOT NULL
        );
        CREATE TABLE IF NOT EXISTS generation (value {integer} NOT NULL);
        INSERT INTO generation SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM generation)
        """
    ),
    Migration(
        # Components are compressed already; pglz would cost seconds per deploy for nothing.
        postgres="ALTER TABLE blobs ALTER COLUMN data SET STORAGE EXTERNAL",
        # SQLite registries made before versioning counted changes in `meta`: carry
        # the count over (a reader may hold a token from before), then drop it.
        sqlite="""
        CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
        UPDATE generation SET value = value
            + COALESCE((SELECT value FROM meta WHERE key = 'generation'), 0);
        DROP TABLE meta
        """,
    ),
    Migration(
        # `edgefn purge`: the cache entries of `function` under `prefix` stored at or
        # before `purged_at` are gone. One row per prefix, so repeating a purge adds none.
        """
        CREATE TABLE purges (
            function TEXT NOT NULL,
            prefix TEXT NOT NULL,
            purged_at {real} NOT NULL,
            PRIMARY KEY (function, prefix)
        )
        """
    ),
    Migration(
        # Key-value stores (`edgefn_platform.kv`): in the registry's database, so
        # that one backup holds a node's state and every gateway sharing
        # PostgreSQL sees the same. `expires_at` is a Unix time (NULL: never);
        # `kv_usage` keeps each store's totals, updated in the writes' transactions,
        # so quotas cost one row, not a scan; `kv_expiry` lets a full store's sweep
        # read only its expired entries (partial: entries without a TTL do not pay
        # for it on writes). Secrets: `value` is a Fernet token
        # (`edgefn_platform.secrets`), never the plaintext.
        """
        CREATE TABLE kv (
            function TEXT NOT NULL,
            store TEXT NOT NULL,
            key {bytewise} NOT NULL,
            value {bytes} NOT NULL,
            expires_at {real},
            PRIMARY KEY (function, store, key)
        );
        CREATE INDEX kv_expiry ON kv (function, store, expires_at)
            WHERE expires_at IS NOT NULL;
        CREATE TABLE kv_usage (
            function TEXT NOT NULL,
            store TEXT NOT NULL,
            keys {integer} NOT NULL,
            bytes {integer} NOT NULL,
            PRIMARY KEY (function, store)
        );
        CREATE TABLE secrets (
            function TEXT NOT NULL,
            name TEXT NOT NULL,
            value {bytes} NOT NULL,
            set_at {real} NOT NULL,
            PRIMARY KEY (function, name)
        )
        """
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(db: Connection, dialect: Dialect, upto: int = SCHEMA_VERSION) -> int:
    """Bring the schema to version `upto`; the version it is at. Run it in one
    transaction under a lock that keeps two processes from migrating at once (the
    backend's), so gateways starting together migrate once."""
    db.execute(dialect.sql.create_schema_table)
    current = int(db.execute(dialect.sql.schema_version).fetchone()["v"])
    if current > SCHEMA_VERSION:
        raise RegistryError(
            f"the database's registry schema is version {current}, newer than this "
            f"gateway knows ({SCHEMA_VERSION}): upgrade the gateway"
        )
    for number in range(current + 1, upto + 1):
        for statement in MIGRATIONS[number - 1].statements(dialect):
            db.execute(statement)
        db.execute(dialect.sql.record_version, (number,))
    return max(current, upto)
