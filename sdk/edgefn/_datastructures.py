"""Multi-valued mappings for HTTP headers and query strings."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from urllib.parse import parse_qsl

__all__ = ["Headers", "MutableHeaders", "QueryParams"]


class _MultiDict(Mapping[str, str]):
    """An ordered list of (key, value) pairs; `[key]` returns the first value."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items = [(self._key(k), k, v) for k, v in items]

    @staticmethod
    def _key(key: str) -> str:
        return key

    def __getitem__(self, key: str) -> str:
        wanted = self._key(key)
        for k, _, v in self._items:
            if k == wanted:
                return v
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        seen: set[str] = set()
        for k, original, _ in self._items:
            if k not in seen:
                seen.add(k)
                yield original

    def __len__(self) -> int:
        return len({k for k, _, _ in self._items})

    def getlist(self, key: str) -> list[str]:
        """Every value given for `key`, in order (an empty list if there is none)."""
        wanted = self._key(key)
        return [v for k, _, v in self._items if k == wanted]

    def multi_items(self) -> list[tuple[str, str]]:
        """All (key, value) pairs, repeated keys included, in their original order."""
        return [(original, v) for _, original, v in self._items]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.multi_items()!r})"


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

    def __setitem__(self, key: str, value: str) -> None:
        del self[key]
        self.append(key, value)

    def __delitem__(self, key: str) -> None:
        wanted = key.lower()
        self._items = [item for item in self._items if item[0] != wanted]

    def append(self, key: str, value: str) -> None:
        """Add a value for `key` without replacing the ones it has (e.g. `Set-Cookie`)."""
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"header {key!r}: names and values must be str, got {value!r}")
        self._items.append((key.lower(), key, value))

    def setdefault(self, key: str, value: str) -> str:  # type: ignore[override]
        if key not in self:
            self[key] = value
        return self[key]
