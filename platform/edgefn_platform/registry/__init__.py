"""The registry: every deployed function version, which one is active, and its artifacts.

`Registry` is the interface the gateway and admin API use; `open_registry()`
picks the backend. The embedded default is SQLite plus content-addressed files
in a data directory (`SQLiteRegistry`); gateways that share one registry use
PostgreSQL (`PostgresRegistry`).
"""

from __future__ import annotations

from pathlib import Path

from ._model import (
    Blob,
    CorruptArtifact,
    FunctionNotFound,
    FunctionRecord,
    InvalidPrefix,
    LogRecord,
    Registry,
    RegistryError,
    RegistryUnavailable,
    RouteConflict,
    SecretRecord,
    StorageFull,
    VersionNotFound,
    VersionRecord,
    logs_since,
)
from ._sqlite import SQLiteRegistry

__all__ = [
    "Blob",
    "CorruptArtifact",
    "FunctionNotFound",
    "FunctionRecord",
    "InvalidPrefix",
    "LogRecord",
    "PostgresRegistry",
    "Registry",
    "RegistryError",
    "RegistryUnavailable",
    "RouteConflict",
    "SecretRecord",
    "SQLiteRegistry",
    "StorageFull",
    "VersionNotFound",
    "VersionRecord",
    "open_registry",
    "logs_since",
]


def open_registry(database_url: str | None, data_dir: Path) -> Registry:
    """PostgreSQL at `database_url` if given (with `data_dir` as this gateway's
    local cache), else the embedded registry in `data_dir`."""
    if database_url:
        if not database_url.startswith(("postgresql://", "postgres://")):
            raise RegistryError(
                "the database URL must start with postgresql:// "
                "(e.g. postgresql://edgefn:secret@db:5432/edgefn)"
            )
        from ._postgres import PostgresRegistry

        return PostgresRegistry(database_url, data_dir)
    return SQLiteRegistry(data_dir)


def __getattr__(name: str) -> object:
    # psycopg takes ~0.3 s to import: only for the gateways that use PostgreSQL.
    if name == "PostgresRegistry":
        from ._postgres import PostgresRegistry

        return PostgresRegistry
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
