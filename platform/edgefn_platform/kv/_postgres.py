"""The key-value stores of gateways sharing PostgreSQL: in the registry's database
(which creates the tables), so every gateway sees the same data.

Its own connection pool (the registry's is small and serves deploys); each call
waits for a connection, a lock or a statement no longer than its deadline
(`statement_timeout`, `lock_timeout`). A write is acknowledged once PostgreSQL
committed it, durable as the server's `synchronous_commit` makes it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow
from psycopg_pool import ConnectionPool, PoolTimeout

from edgefn_runtime.capabilities.kv import KVFailure

from ..registry._postgres import CONNECT
from ..registry._sql import POSTGRES, Connection
from ._store import SQLKeyValue, Statements, database_failed

__all__ = ["PostgresKeyValue"]


_Conn = psycopg.Connection[DictRow]

# Each call's timeouts, one round trip: set_config(..., true) lasts the transaction.
_READ_TIMEOUT = "SELECT set_config('statement_timeout', %s, false)"
_TIMEOUTS = "SELECT set_config('statement_timeout', %s, true), set_config('lock_timeout', %s, true)"


class PostgresKeyValue(SQLKeyValue):
    """A `KeyValueBackend` in PostgreSQL, shared by every gateway that points at it."""

    dialect = POSTGRES
    sql = Statements().for_dialect(POSTGRES)

    def __init__(self, url: str, pool_size: int = 16) -> None:
        super().__init__()
        info = conninfo_to_dict(url)
        where = f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"
        self.location = f"PostgreSQL at {where}"
        # No `check` on each checkout (a round trip per call): a connection the
        # server dropped fails its call as `unavailable`, and the pool replaces it.
        self._pool: ConnectionPool[_Conn] = ConnectionPool(
            url,
            connection_class=_Conn,
            min_size=1,
            max_size=pool_size,
            kwargs=CONNECT,
            timeout=5.0,
            reconnect_timeout=2.0,
            open=False,
            name="edgefn-kv",
        )
        self._pool.open(wait=False)

    @contextmanager
    def _transaction(self, deadline: float, write: bool = True) -> Iterator[Connection]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise self._late()
        try:
            with self._pool.connection(timeout=remaining) as conn:
                ms = str(max(1, int((deadline - time.monotonic()) * 1000)))
                if not write:
                    # One statement in autocommit, with the connection's timeout set
                    # for it: half the round trips of a transaction (measured: get
                    # p50 330 -> 225 µs on loopback). Every call sets its own.
                    conn.execute(_READ_TIMEOUT, (ms,))
                    yield conn
                    return
                with conn.transaction():
                    conn.execute(_TIMEOUTS, (ms, ms))
                    yield conn
        except PoolTimeout:
            raise self._unreachable() from None
        except (errors.QueryCanceled, errors.LockNotAvailable):
            raise self._late() from None
        except psycopg.OperationalError as exc:
            if exc.sqlstate is None or exc.sqlstate[:2] in ("08", "57"):
                raise self._unreachable() from None
            raise self._failed(exc) from None
        except psycopg.Error as exc:
            raise self._failed(exc) from None

    def _reading(self, deadline: float) -> Any:
        return self._transaction(deadline, write=False)

    def _writing(self, deadline: float) -> Any:
        return self._transaction(deadline)

    def _late(self) -> KVFailure:
        return KVFailure(
            "unavailable",
            "the key-value store did not answer within the request's deadline "
            "(busy with other writes to this store, or slow); retry",
        )

    def _unreachable(self) -> KVFailure:
        return KVFailure(
            "unavailable",
            f"the key-value store's database ({self.location}) cannot be reached; "
            "retry when it is back",
        )

    def _failed(self, exc: psycopg.Error) -> KVFailure:
        if isinstance(exc, errors.DiskFull):
            return KVFailure(
                "unavailable", "the key-value store's database is full; the operator must make room"
            )
        return database_failed(exc)

    def close(self) -> None:
        self._pool.close()
