"""The functions' key-value stores, in the registry's database: `open_key_value()`
picks the backend as `open_registry()` does (open the registry first: it
migrates the schema, which holds the `kv` and `kv_usage` tables)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ._per_function import PerFunctionKeyValue
from ._sqlite import SQLiteKeyValue
from ._store import SQLKeyValue

__all__ = [
    "KeyValueStores",
    "PerFunctionKeyValue",
    "PostgresKeyValue",
    "SQLKeyValue",
    "SQLiteKeyValue",
    "open_key_value",
]

KeyValueStores = SQLKeyValue | PerFunctionKeyValue
"""What keeps a gateway's key-value stores: its functions and its admin API use it."""


def open_key_value(
    database_url: str | None, data_dir: Path, per_function: Mapping[str, Path] | None = None
) -> KeyValueStores:
    """PostgreSQL at `database_url` if given, else SQLite in `data_dir`; or, with
    `per_function` (`edgefn dev`), SQLite in each function's own directory."""
    if per_function is not None:
        return PerFunctionKeyValue(per_function)
    if database_url:
        from ._postgres import PostgresKeyValue

        return PostgresKeyValue(database_url)
    return SQLiteKeyValue(data_dir)


def __getattr__(name: str) -> object:
    # psycopg takes ~0.3 s to import: only for the gateways that use PostgreSQL.
    if name == "PostgresKeyValue":
        from ._postgres import PostgresKeyValue

        return PostgresKeyValue
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
