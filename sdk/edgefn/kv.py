"""Key-value stores: a little state that outlives the instance.

>>> from edgefn import kv
>>> @app.post("/hits")
... def hit(request):
...     return {"hits": kv.open("default").incr("hits")}

A function opens only the stores its manifest declares
(`key_value_stores = ["default"]` in edgefn.toml); each function's stores are
its own. The gateway keeps them (SQLite, or the PostgreSQL database gateways
share); natively (`edgefn.testing`) an in-memory `MemoryKV` does.
"""

from __future__ import annotations

import math
from typing import ClassVar, NoReturn, Protocol

# The vocabulary is the contract's, shared with the host.
from edgefn_contract.kv import MAX_KEYS_LISTED, STATUSES, check_key, check_store

from ._exceptions import HTTPError

__all__ = [
    "Backend",
    "KVError",
    "KVInvalid",
    "KVUnavailable",
    "NotAnInteger",
    "QuotaExceeded",
    "Store",
    "StoreNotDeclared",
    "ValueTooLarge",
    "open",
    "raise_failure",
    "ttl_ms",
    "use_backend",
]


class KVError(HTTPError):
    """A key-value operation the host refused or could not complete.

    Uncaught, it answers with the status and code of its `kind`
    (`edgefn_contract.kv.STATUSES`), e.g. 503 `kv_unavailable`.
    """

    kind: ClassVar[str] = "unavailable"

    def __init__(self, message: str) -> None:
        status, code = STATUSES[self.kind]
        super().__init__(status, message, code=code)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class StoreNotDeclared(KVError):
    """The manifest's `key_value_stores` does not declare the store."""

    kind = "not_declared"


class KVInvalid(KVError):
    """A key or argument the host refused."""

    kind = "invalid"


class ValueTooLarge(KVError):
    """The value is over the function's `max_kv_value`."""

    kind = "too_large"


class QuotaExceeded(KVError):
    """The store would go over `max_kv_store` or `max_kv_keys`, or the request
    over `max_kv_ops`."""

    kind = "quota_exceeded"


class NotAnInteger(KVError):
    """`incr` on a value that is not a decimal integer, or past a signed 64-bit one."""

    kind = "not_integer"


class KVUnavailable(KVError):
    """The store's database cannot be reached or did not answer in time."""

    kind = "unavailable"


_ERRORS: dict[str, type[KVError]] = {
    error.kind: error
    for error in (
        StoreNotDeclared,
        KVInvalid,
        ValueTooLarge,
        QuotaExceeded,
        NotAnInteger,
        KVUnavailable,
    )
}


def raise_failure(kind: str, message: str) -> NoReturn:
    """Raise the SDK exception for a failure `kind` reported by the host."""
    # A kind this SDK does not know yet (a newer host) is still a failure.
    raise _ERRORS.get(kind, KVUnavailable)(message)


class Backend(Protocol):
    """Keeps the stores: the host capability in wasm, `MemoryKV` natively.
    Arguments arrive checked; failures raise `KVError`s."""

    def open(self, store: str) -> None: ...

    def get(self, store: str, key: str) -> bytes | None: ...

    def set(self, store: str, key: str, value: bytes, ttl_ms: int) -> None: ...

    def delete(self, store: str, key: str) -> None: ...

    def exists(self, store: str, key: str) -> bool: ...

    def keys(self, store: str, prefix: str, limit: int) -> list[str]: ...

    def incr(self, store: str, key: str, by: int, ttl_ms: int) -> int: ...


_backend: Backend | None = None


def use_backend(backend: Backend | None) -> None:
    """Set by the guest glue or `edgefn.testing`; functions never call this."""
    global _backend
    _backend = backend


def _current() -> Backend:
    if _backend is None:
        raise RuntimeError("edgefn.kv needs the edgefn runtime or edgefn.testing")
    return _backend


def open(name: str) -> Store:  # noqa: A001 - the SDK's verb, as in `kv.open("default")`
    """The store `name`, which the manifest's `key_value_stores` must declare
    (`StoreNotDeclared` at once otherwise)."""
    problem = check_store(name)
    if problem is not None:
        raise _argument_error(name, problem)
    _current().open(name)
    return Store(name)


class Store:
    """One of the function's key-value stores (`kv.open(name)`).

    Keys are `str`, 1 to 512 bytes of UTF-8 without control characters; values
    are bytes (a `str` is stored as UTF-8). Times to live are seconds.
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def get(self, key: str) -> bytes | None:
        """The value of `key`, or None if it is absent or expired."""
        return _current().get(self.name, _key(key))

    def set(self, key: str, value: bytes | str, ttl: float | None = None) -> None:
        """Keep `value` under `key`, replacing any; `ttl` seconds from now it
        expires (None: kept until deleted)."""
        checked_key = _key(key)
        if isinstance(value, str):
            data = value.encode()
        elif isinstance(value, (bytes, bytearray, memoryview)):
            data = bytes(value)
        else:
            raise TypeError(f"kv values are bytes or str, got {type(value).__name__}")
        _current().set(self.name, checked_key, data, ttl_ms(ttl))

    def delete(self, key: str) -> None:
        """Remove `key` (nothing happens if it is absent)."""
        _current().delete(self.name, _key(key))

    def exists(self, key: str) -> bool:
        """Whether `key` holds a value that has not expired."""
        return _current().exists(self.name, _key(key))

    def keys(self, prefix: str = "", limit: int = MAX_KEYS_LISTED) -> list[str]:
        """At most `limit` (1 to 1000) live keys starting with `prefix`, in byte order."""
        if not isinstance(prefix, str):
            raise TypeError(f"kv keys() prefix must be a str, got {type(prefix).__name__}")
        if prefix and (problem := check_key(prefix)):
            raise ValueError(f"kv keys() prefix: {problem}")
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise TypeError(f"kv keys() limit must be an int, got {limit!r}")
        if not 1 <= limit <= MAX_KEYS_LISTED:
            raise ValueError(f"kv keys() limit must be 1 to {MAX_KEYS_LISTED}, got {limit}")
        return _current().keys(self.name, prefix, limit)

    def incr(self, key: str, by: int = 1, ttl: float | None = None) -> int:
        """Add `by` to the integer under `key` (absent: 0) atomically, across
        requests and gateways, and return the new value. `ttl` applies when the
        key is created, so a counter with one is a rate-limit window."""
        checked_key = _key(key)
        if isinstance(by, bool) or not isinstance(by, int):
            raise TypeError(f"kv incr() by must be an int, got {by!r}")
        if not _S64_MIN <= by <= _S64_MAX:
            raise ValueError(f"kv incr() by must fit a signed 64-bit integer, got {by}")
        return _current().incr(self.name, checked_key, by, ttl_ms(ttl))

    def __repr__(self) -> str:
        return f"Store({self.name!r})"


_S64_MIN, _S64_MAX = -(2**63), 2**63 - 1
_U64_MAX = 2**64 - 1


def ttl_ms(ttl: float | None) -> int:
    """The WIT `ttl-ms` of a time to live in seconds: 0 for none, else at least 1
    (rounded up: a key never expires early)."""
    if ttl is None:
        return 0
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise TypeError(f"kv ttl must be a number of seconds, got {ttl!r}")
    if not (ttl > 0 and math.isfinite(ttl)):
        raise ValueError(f"kv ttl must be a positive, finite number of seconds, got {ttl!r}")
    return min(max(1, math.ceil(ttl * 1000)), _U64_MAX)


def _key(key: str) -> str:
    problem = check_key(key)
    if problem is not None:
        raise _argument_error(key, problem)
    return key


def _argument_error(value: object, problem: str) -> Exception:
    prefix = "kv: "
    if not isinstance(value, str):
        return TypeError(prefix + problem)
    return ValueError(prefix + problem)
