"""The functions' key-value stores, in the registry's database: `open_key_value()`
picks the backend as `open_registry()` does (open the registry first: it
migrates the schema, which holds the `kv` and `kv_usage` tables)."""

from __future__ import annotations

from pathlib import Path

from ._postgres import PostgresKeyValue
from ._sqlite import SQLiteKeyValue
from ._store import SQLKeyValue

__all__ = ["PostgresKeyValue", "SQLKeyValue", "SQLiteKeyValue", "open_key_value"]


def open_key_value(database_url: str | None, data_dir: Path) -> SQLKeyValue:
    """PostgreSQL at `database_url` if given, else SQLite in `data_dir`."""
    if database_url:
        return PostgresKeyValue(database_url)
    return SQLiteKeyValue(data_dir)
