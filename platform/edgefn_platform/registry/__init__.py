"""The registry: every deployed function version, which one is active, and its artifacts.

`Registry` is the interface the gateway and admin API use; `open_registry()`
picks the backend. The embedded default is SQLite plus content-addressed files
in a data directory (`SQLiteRegistry`).
"""

from ._model import (
    FunctionNotFound,
    FunctionRecord,
    LogRecord,
    Registry,
    RegistryError,
    RouteConflict,
    VersionNotFound,
    VersionRecord,
)
from ._sqlite import SQLiteRegistry

__all__ = [
    "FunctionNotFound",
    "FunctionRecord",
    "LogRecord",
    "Registry",
    "RegistryError",
    "RouteConflict",
    "SQLiteRegistry",
    "VersionNotFound",
    "VersionRecord",
]
