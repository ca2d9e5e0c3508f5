"""Multi-valued mappings for HTTP headers and query strings."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl

__all__ = ["Headers", "MutableHeaders", "QueryParams"]

_MISSING: Any = object()


class _MultiDict(Mapping[str, str]):
    """An ordered list of (key, value) pairs; `[key]` returns the first value.

    Kept as a plain list: requests carry a handful of headers, and building
    nothing up front is what keeps a request cheap inside a fresh instance.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items = list(items)

    @staticmethod
    def _key(key: str) -> str:
        return key

    def __getitem__(self, key: str) -> str:
        value: str = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    # Mapping's own get() and `in` go through __getitem__ and KeyError; raising is
    # costly in guest CPython, so look up directly.
    def get(self, key: str, default: Any = None) -> Any:
        wanted = self._key(key)
        for k, v in self._items:
            if self._key(k) == wanted:
                return v
        return default

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key, _MISSING) is not _MISSING

    def __iter__(self) -> Iterator[str]:
        seen: set[str] = set()
        for k, _ in self._items:
            if self._key(k) not in seen:
                seen.add(self._key(k))
                yield k

    def __len__(self) -> int:
        return len({self._key(k) for k, _ in self._items})

    def getlist(self, key: str) -> list[str]:
        """Every value given for `key`, in order (an empty list if there is none)."""
        wanted = self._key(key)
        return [v for k, v in self._items if self._key(k) == wanted]

    def multi_items(self) -> list[tuple[str, str]]:
        """All (key, value) pairs, repeated keys included, in their original order."""
        return list(self._items)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._items!r})"


class QueryParams(_MultiDict):
    """Query string parameters; `getlist()` returns every value of a repeated key."""

    __slots__ = ()

    @classmethod
    def parse(cls, query_string: str) -> QueryParams:
        return cls(parse_qsl(query_string, keep_blank_values=True))


class Headers(_MultiDict):
    """HTTP headers: case-insensitive names, repeated names kept in order."""

    __slots__ = ()

    @staticmethod
    def _key(key: str) -> str:
        return key.lower()


class MutableHeaders(Headers):
    """Response headers: setting a name replaces every value it had."""

    __slots__ = ()

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(items)
        for key, value in self._items:
            _check(key, value)

    def __setitem__(self, key: str, value: str) -> None:
        del self[key]
        self.append(key, value)

    def __delitem__(self, key: str) -> None:
        wanted = key.lower()
        self._items = [item for item in self._items if item[0].lower() != wanted]

    def append(self, key: str, value: str) -> None:
        """Add a value for `key` without replacing the ones it has (e.g. `Set-Cookie`)."""
        _check(key, value)
        self._items.append((key, value))

    def setdefault(self, key: str, value: str) -> str:
        if key not in self:
            self.append(key, value)
        return self[key]


def _check(key: object, value: object) -> None:
    if type(key) is not str or type(value) is not str:
        raise TypeError(f"header {key!r}: names and values must be str, got {value!r}")
